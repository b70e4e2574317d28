"""Hostile and huge-but-real DICOM files, built from pydicom, zlib and struct: one source for the
ingest limit tests, the render budget tests and bench/hostile_inputs.py.

Pixel data is written by hand so neither a test nor the bench ever holds a decoded image: an
RLE segment of a constant image is replicate runs (PS3.5 G.3.1: the two bytes 0x81, value
repeat value 128 times), and a deflate bomb is one history-free compressed block of zeros
repeated (each ends with a full flush, so it is valid anywhere in the stream), so a 1 GiB bomb
costs a few milliseconds to build. Each `write_*` builder streams to a binary file, holding at
most one repeated chunk (a row of runs, a compressed 1 MiB block) at a time; the builders of
the same name without `write_` return the file's bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

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


def item_header(length: int) -> bytes:
    """The tag and length of an item of encapsulated pixel data."""
    return ITEM + struct.pack("<I", length)


def encapsulated_start(ds: Dataset, transfer_syntax: str, offset_table: bytes = b"") -> bytes:
    """A file up to its first fragment: file meta, data set, pixel data of undefined length, offset table item."""
    head, body = file_start(ds, transfer_syntax)
    return head + body + PIXEL_DATA_UNDEFINED + item_header(len(offset_table)) + offset_table


def encapsulated(ds: Dataset, transfer_syntax: str, fragments: list[bytes], offset_table: bytes = b"") -> bytes:
    """A file whose encapsulated pixel data is an offset table item and these fragments."""
    items = b"".join(item_header(len(fragment)) + fragment for fragment in fragments)
    return encapsulated_start(ds, transfer_syntax, offset_table) + items + SEQUENCE_END


def rle_header(segment_lengths: Sequence[int]) -> bytes:
    """The 64-byte header of an RLE frame: the segment count and each segment's offset."""
    offsets, position = [], 64
    for length in segment_lengths:
        offsets.append(position)
        position += length
    return struct.pack("<16I", len(segment_lengths), *offsets, *([0] * (15 - len(offsets))))


def rle_fragment(segments: list[bytes]) -> bytes:
    """One RLE frame: the 64-byte header (segment count and offsets), then the segments."""
    return rle_header([len(segment) for segment in segments]) + b"".join(segments)


def rle_constant_segments(*, side: int, value: int = 1000, bits: int = 16) -> list[tuple[bytes, int]]:
    """The segments of a `side` x `side` constant RLE frame as (one row's runs, `side` rows) (G.3.1:
    each row is its own runs): the most significant byte plane first (G.2)."""
    if side % 128:
        raise ValueError("side must be a multiple of 128")
    planes = [(value >> 8) & 0xFF, value & 0xFF] if bits == 16 else [value & 0xFF]
    return [(bytes([REPLICATE_128, byte]) * (side // 128), side) for byte in planes]


def write_rle(out: BinaryIO, ds: Dataset, segments: Sequence[tuple[bytes, int]]) -> int:
    """Stream a one-frame RLE Lossless file with an empty offset table: segment i is its chunk
    repeated its count of times. Returns the offset of the frame's RLE header in the file."""
    lengths = [len(chunk) * count for chunk, count in segments]
    start = encapsulated_start(ds, RLELossless) + item_header(64 + sum(lengths))
    out.write(start)
    out.write(rle_header(lengths))
    for chunk, count in segments:
        for _ in range(count):
            out.write(chunk)
    out.write(SEQUENCE_END)
    return len(start)


def write_rle_constant(out: BinaryIO, *, side: int, value: int = 1000, bits: int = 16) -> None:
    """A valid `side` x `side` constant image, RLE Lossless, each row its own runs (G.3.1).

    16384 x 16384 16-bit: 8 MiB on disk, 512 MiB decoded.
    """
    segments = rle_constant_segments(side=side, value=value, bits=bits)
    write_rle(out, image_header(rows=side, columns=side, bits=bits), segments)


def write_rle_bomb(out: BinaryIO, *, side: int = 65535, run_pairs: int = 3200) -> None:
    """~6.5 KB declaring `side` x `side` 8-bit pixels (4 GiB for 65535): its one segment holds run_pairs x 128 bytes.

    A decoder that trusts Rows x Columns allocates side**2 bytes before it finds out the data
    ends far too soon.
    """
    write_rle(out, image_header(rows=side, columns=side), [(bytes([REPLICATE_128, 0]) * run_pairs, 1)])


def write_deflate_bomb(out: BinaryIO, *, inflated_bytes: int = 256 * MIB) -> None:
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
    out.write(head)
    out.write(start.compress(header) + start.flush(zlib.Z_FULL_FLUSH))
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = zeros.compress(bytes(MIB)) + zeros.flush(zlib.Z_FULL_FLUSH)
    for _ in range(steps):
        out.write(block)
    out.write(zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))  # the final, empty block


def _built(write: Callable[..., object], **options: int) -> bytes:
    buffer = io.BytesIO()
    write(buffer, **options)
    return buffer.getvalue()


def rle_constant(*, side: int, value: int = 1000, bits: int = 16) -> bytes:
    """The bytes of write_rle_constant."""
    return _built(write_rle_constant, side=side, value=value, bits=bits)


def rle_bomb(*, side: int = 65535, run_pairs: int = 3200) -> bytes:
    """The bytes of write_rle_bomb."""
    return _built(write_rle_bomb, side=side, run_pairs=run_pairs)


def deflate_bomb(*, inflated_bytes: int = 256 * MIB) -> bytes:
    """The bytes of write_deflate_bomb."""
    return _built(write_deflate_bomb, inflated_bytes=inflated_bytes)


def check_builders(workdir: Path) -> None:
    """Small versions of the streaming builders read back through pydicom (bench/hostile_inputs.py
    runs this before it builds the real ones, which are too big to decode there)."""
    small = workdir / "small-rle.dcm"
    with small.open("wb") as out:
        write_rle_constant(out, side=256, value=0x1234)
    pixels = pydicom.dcmread(small).pixel_array
    if pixels.shape != (256, 256) or int(pixels.min()) != 0x1234 or int(pixels.max()) != 0x1234:
        raise RuntimeError("the RLE writer is wrong")
    deflated = workdir / "small-deflate.dcm"
    with deflated.open("wb") as out:
        write_deflate_bomb(out, inflated_bytes=2 * MIB)
    ds = pydicom.dcmread(deflated)
    if ds.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian or len(ds.PixelData) != 2 * MIB:
        raise RuntimeError("the deflate writer is wrong")
    for path in (small, deflated):
        path.unlink()


# --- codestreams declaring another size than their DICOM header (issue 14, item 1) ------------


def j2k_blank(*, rows: int, columns: int, bits: int = 16, jp2: bool = False) -> bytes:
    """A real blank JPEG 2000 codestream of rows x columns (OpenJPEG), raw or in JP2 boxes."""
    import numpy as np
    from openjpeg import encode

    dtype = np.uint16 if bits > 8 else np.uint8
    return bytes(encode(np.zeros((rows, columns), dtype=dtype), bits_stored=bits, codec_format=1 if jp2 else 0))


def j2k_resized(codestream: bytes, *, rows: int, columns: int) -> bytes:
    """A one-tile JPEG 2000 codestream (or JP2 file) whose SIZ (and JP2 ihdr) declare rows x
    columns instead: the image and its tile (15444-1 A.5.1: Xsiz, Ysiz, XTsiz, YTsiz), the rest as
    it was. A blank image's packets are all empty, so this is what an encoder would write for a
    blank image of that size (give or take resolution levels): a few hundred bytes declaring
    rows x columns to its decoder."""
    out = bytearray(codestream)
    siz = out.index(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", out, siz + 8, columns, rows)  # Xsiz, Ysiz (origins stay 0)
    struct.pack_into(">II", out, siz + 24, columns, rows)  # XTsiz, YTsiz: still one tile
    ihdr = out.find(b"ihdr")
    if ihdr >= 0:
        struct.pack_into(">II", out, ihdr + 4, rows, columns)
    return bytes(out)


def jpeg_blank(*, rows: int, columns: int, mode: str = "L") -> bytes:
    """A real baseline JPEG of rows x columns, one colour (Pillow)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (columns, rows), 0).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def jpeg_resized(jpeg: bytes, *, rows: int, columns: int) -> bytes:
    """A JPEG whose frame header (SOF0, T.81 B.2.2) declares rows x columns instead: its decoder
    allocates that size and fills what the scan lacks (libjpeg warns of a premature end)."""
    out = bytearray(jpeg)
    sof = out.index(b"\xff\xc0")
    struct.pack_into(">HH", out, sof + 5, rows, columns)
    return bytes(out)


def codestream_file(
    codestream: bytes, transfer_syntax: str, *, rows: int, columns: int, bits: int = 16, samples: int = 1
) -> tuple[bytes, int]:
    """A one-frame DICOM file of `transfer_syntax` whose header declares rows x columns and whose
    one fragment is `codestream`; and the offset of that fragment in the file."""
    ds = image_header(rows=rows, columns=columns, bits=bits, samples=samples)
    start = encapsulated_start(ds, transfer_syntax) + item_header(len(codestream))
    return start + codestream + SEQUENCE_END, len(start)
