"""Large multi-frame DICOM files written to disk without ever being whole in memory.

The memory benchmarks and the tests that send or upload an instance of hundreds of MiB need a
valid file that size: pydicom writes everything but the pixel data (a few hundred bytes), then
the Pixel Data element is appended frame by frame, its SHA-256 computed on the way, so the
writer's own memory stays at one frame.

A module of its own beside demo.py, importing only pydicom and the standard library, because the
bench scripts write their big files before Django is set up (bench_upload_memory.py never sets it
up; compare_orthanc.py sets it up later, with its own environment), and demo.py imports models.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any, Literal

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) OW, explicit VR: then its 4-byte length


def write_large_multiframe(
    path: Path,
    *,
    frames: int,
    rows: int,
    columns: int,
    digest_of: Literal["file", "dataset"] = "file",
    **attributes: Any,
) -> str:
    """Write a multi-frame 16-bit (12 stored) MONOCHROME2 instance, explicit VR little endian, to
    `path`, header first, then `frames` frames of `rows` x `columns` that all differ; return its
    SHA-256 hex digest.

    `attributes` are DICOM keywords and their values (identity, UIDs, modality...):
    SOPInstanceUID is required, SOPClassUID defaults to Multi-frame Grayscale Word Secondary
    Capture. The digest is of the whole file, or with digest_of="dataset" of its dataset part
    (after the File Meta group): what storescu sends and a DICOM listener stores after a File
    Meta group of its own.
    """
    dataset = Dataset()
    dataset.SOPClassUID = MULTIFRAME_GRAYSCALE_WORD_SC
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    dataset.preamble = b"\x00" * 128
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.NumberOfFrames = frames
    dataset.Rows = rows
    dataset.Columns = columns
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.HighBit = 11
    dataset.PixelRepresentation = 0
    dataset.save_as(path, enforce_file_format=True)  # everything but the pixel data

    header = path.read_bytes()
    if digest_of == "dataset":
        (group_length,) = struct.unpack("<I", header[140:144])  # (0002,0000) File Meta Information Group Length
        header = header[144 + group_length :]
    digest = hashlib.sha256(header)
    row = struct.pack(f"<{columns}H", *[(column * 4) & 0x0FFF for column in range(columns)])
    frame = bytearray(row * rows)
    with path.open("ab") as handle:
        element_header = PIXEL_DATA_OW + struct.pack("<I", len(frame) * frames)
        handle.write(element_header)
        digest.update(element_header)
        for number in range(frames):
            frame[0:2] = struct.pack("<H", number & 0x0FFF)  # every frame differs
            handle.write(frame)
            digest.update(frame)
    return digest.hexdigest()
