"""The hostile DICOM files of bench/hostile_inputs.py, built here from nothing but pydicom and zlib.

Each builder writes a Part 10 file (preamble, file meta, dataset) whose pixel data is written
by hand, streaming, so the client never holds the decoded image: the point is that the
*server* must not either. RLE segments of a constant image are trivial (PS3.5 Annex G: a
replicate run of 128 bytes is the two bytes 0x81, value), so they are written directly
rather than through pydicom's RLE encoder, which would need the whole decoded frame.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

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
# Encapsulated pixel data: (7FE0,0010) OB, undefined length; items (FFFE,E000); end (FFFE,E0DD).
_PIXEL_DATA_UNDEFINED = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_REPLICATE_128 = 0x81  # -127 as a signed byte: repeat the next byte 128 times


def _dataset(*, rows: int, columns: int, bits: int, description: str) -> Dataset:
    """A Secondary Capture instance header with fresh UIDs, monochrome, one frame, no pixel data."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.StudyDate = "20261206"
    ds.Modality = "OT"
    ds.SeriesDescription = description
    ds.PatientName = "Hostile^Bench"
    ds.PatientID = "HOSTILE-1"
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = 1
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def _file_start(ds: Dataset, transfer_syntax: str) -> tuple[bytes, bytes]:
    """(preamble + DICM + file meta, dataset without pixel data in explicit VR little endian)."""
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


def _rle_fragment_start(segment_lengths: list[int]) -> bytes:
    """Item header of the one fragment plus the 64-byte RLE header (segment count, offsets)."""
    offsets, position = [], 64
    for length in segment_lengths:
        offsets.append(position)
        position += length
    header = struct.pack("<16I", len(segment_lengths), *offsets, *([0] * (15 - len(offsets))))
    return _ITEM + struct.pack("<I", position) + header


def _write_rle(path: Path, ds: Dataset, segments: list[tuple[bytes, int]]) -> int:
    """Write an RLE Lossless file: each segment is `chunk` repeated `count` times. Returns its size."""
    head, body = _file_start(ds, RLELossless)
    lengths = [len(chunk) * count for chunk, count in segments]
    with path.open("wb") as out:
        out.write(head + body + _PIXEL_DATA_UNDEFINED)
        out.write(_ITEM + b"\x00\x00\x00\x00")  # empty Basic Offset Table
        out.write(_rle_fragment_start(lengths))
        for chunk, count in segments:
            for _ in range(count):
                out.write(chunk)
        out.write(_SEQUENCE_END)
    return path.stat().st_size


def rle_bomb(path: Path, *, side: int = 65535, run_pairs: int = 2900) -> int:
    """~6.5 KB declaring `side` x `side` 8-bit pixels: its one segment holds `run_pairs` x 128 bytes only.

    A decoder that trusts Rows x Columns allocates side**2 bytes (4 GiB for 65535) before it
    finds out the data ends far too soon.
    """
    ds = _dataset(rows=side, columns=side, bits=8, description="RLE bomb")
    return _write_rle(path, ds, [(bytes([_REPLICATE_128, 0]) * run_pairs, 1)])


def rle_constant_16bit(path: Path, *, side: int = 16384, value: int = 1000) -> int:
    """A valid `side` x `side` 16-bit constant image, RLE Lossless (~8 MiB for 16384: 512 MiB decoded).

    Two segments (most significant bytes first, PS3.5 G.2); each row is its own runs, as
    G.3.1 asks: `side`/128 replicate runs of two bytes.
    """
    if side % 128:
        raise ValueError("side must be a multiple of 128")
    ds = _dataset(rows=side, columns=side, bits=16, description="16-bit 16k constant")
    runs = side // 128
    high, low = (bytes([_REPLICATE_128, byte]) * runs for byte in (value >> 8, value & 0xFF))
    return _write_rle(path, ds, [(high, side), (low, side)])


def deflate_bomb(path: Path, *, inflated_bytes: int = 1024 * MIB) -> int:
    """Deflated Explicit VR Little Endian whose dataset inflates to ~`inflated_bytes` (zeros), ~1 MB on disk.

    The file meta is plain (as Part 10 requires); everything after it is one raw deflate
    stream (zlib wbits=-15), compressed from zeros in 1 MiB steps so the client never holds
    more than that.
    """
    side = 16384
    rows = max(1, inflated_bytes // (side * 2))
    ds = _dataset(rows=rows, columns=side, bits=16, description="deflate bomb")
    head, body = _file_start(ds, DeflatedExplicitVRLittleEndian)
    pixel_bytes = rows * side * 2
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MIB)
    with path.open("wb") as out:
        out.write(head)
        out.write(compressor.compress(body + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", pixel_bytes)))
        left = pixel_bytes
        while left:
            step = min(left, MIB)
            out.write(compressor.compress(zeros if step == MIB else bytes(step)))
            left -= step
        out.write(compressor.flush())
    return path.stat().st_size


def check_builders(workdir: Path) -> None:
    """Small versions of each builder read back through pydicom (the real ones are too big to decode here)."""
    small = workdir / "small-rle.dcm"
    rle_constant_16bit(small, side=256, value=0x1234)
    pixels = pydicom.dcmread(small).pixel_array
    if pixels.shape != (256, 256) or int(pixels.min()) != 0x1234 or int(pixels.max()) != 0x1234:
        raise RuntimeError("the RLE writer is wrong")
    deflated = workdir / "small-deflate.dcm"
    deflate_bomb(deflated, inflated_bytes=256 * 1024)
    ds = pydicom.dcmread(deflated)
    if ds.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian or len(ds.PixelData) != 256 * 1024:
        raise RuntimeError("the deflate writer is wrong")
    for path in (small, deflated):
        path.unlink()
