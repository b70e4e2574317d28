"""Hostile and huge-but-real DICOM files for the ingest limit tests, built from pydicom, zlib and struct.

Pixel data is written by hand so a test never holds a decoded image: an RLE segment of a
constant image is replicate runs (PS3.5 G.3.1: the two bytes 0x81, value repeat value 128
times), and a deflate bomb is one history-free compressed block of zeros repeated (each
ends with a full flush, so it is valid anywhere in the stream), so a 1 GiB bomb costs a
few milliseconds to build.
"""

from __future__ import annotations

import io
import struct
import zlib

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

MIB = 1024 * 1024
PIXEL_DATA_UNDEFINED = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
ITEM = b"\xfe\xff\x00\xe0"
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
REPLICATE_128 = 0x81  # -127 as a signed byte: repeat the next byte 128 times


def image_header(*, rows: int, columns: int, bits: int = 8, samples: int = 1, frames: int = 1) -> Dataset:
    """A Secondary Capture header with fresh UIDs and no pixel data."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20261206"
    ds.Modality = "OT"
    ds.PatientName = "Hostile^Test"
    ds.PatientID = "HOSTILE-1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def file_start(ds: Dataset, transfer_syntax: str) -> tuple[bytes, bytes]:
    """(preamble, DICM and file meta; the data set without pixel data, explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    head = io.BytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return head.getvalue(), body.getvalue()


def encapsulated(ds: Dataset, transfer_syntax: str, fragments: list[bytes], offset_table: bytes = b"") -> bytes:
    """A file whose encapsulated pixel data is an offset table item and these fragments."""
    head, body = file_start(ds, transfer_syntax)
    items = b"".join(ITEM + struct.pack("<I", len(fragment)) + fragment for fragment in fragments)
    return (
        head
        + body
        + PIXEL_DATA_UNDEFINED
        + ITEM
        + struct.pack("<I", len(offset_table))
        + offset_table
        + items
        + SEQUENCE_END
    )


def rle_fragment(segments: list[bytes]) -> bytes:
    """One RLE frame: the 64-byte header (segment count and offsets), then the segments."""
    offsets, position = [], 64
    for segment in segments:
        offsets.append(position)
        position += len(segment)
    header = struct.pack("<16I", len(segments), *offsets, *([0] * (15 - len(offsets))))
    return header + b"".join(segments)


def rle_constant(*, side: int, value: int = 1000, bits: int = 16) -> bytes:
    """A valid `side` x `side` constant image, RLE Lossless, each row its own runs (G.3.1).

    16384 x 16384 16-bit: 8 MiB on disk, 512 MiB decoded.
    """
    if side % 128:
        raise ValueError("side must be a multiple of 128")
    row_runs = side // 128
    planes = [(value >> 8) & 0xFF, value & 0xFF] if bits == 16 else [value & 0xFF]
    segments = [bytes([REPLICATE_128, byte]) * row_runs * side for byte in planes]
    return encapsulated(image_header(rows=side, columns=side, bits=bits), RLELossless, [rle_fragment(segments)])


def rle_bomb(*, side: int = 65535, run_pairs: int = 3200) -> bytes:
    """~6.5 KB declaring `side` x `side` 8-bit pixels (4 GiB for 65535): its one segment holds run_pairs x 128 bytes."""
    segment = bytes([REPLICATE_128, 0]) * run_pairs
    return encapsulated(image_header(rows=side, columns=side), RLELossless, [rle_fragment([segment])])


def deflate_bomb(*, inflated_bytes: int = 256 * MIB) -> bytes:
    """Deflated Explicit VR Little Endian whose data set inflates to ~`inflated_bytes`, mostly zeros.

    The file meta is plain (Part 10 requires it); the rest is one raw deflate stream: the
    data set up to a huge OB pixel data element, then a history-free block of 1 MiB of zeros
    (compressed once) repeated, then an empty final block. About inflated_bytes / 1000 on disk.
    """
    steps = max(1, inflated_bytes // MIB)
    ds = image_header(rows=512, columns=1024, bits=16, frames=steps)  # 1 MiB a frame
    head, body = file_start(ds, DeflatedExplicitVRLittleEndian)
    start = zlib.compressobj(9, zlib.DEFLATED, -15)
    header = body + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", steps * MIB)
    out = [head, start.compress(header) + start.flush(zlib.Z_FULL_FLUSH)]
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = zeros.compress(bytes(MIB)) + zeros.flush(zlib.Z_FULL_FLUSH)
    out.append(block * steps)
    out.append(zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))  # the final, empty block
    return b"".join(out)
