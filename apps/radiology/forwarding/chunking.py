"""How big each chunk to a destination is, and whether it goes compressed: the two choices that set bytes on the wire.

Chunk size. A clinic's link is a 3G modem whose rate changes by the hour, so no fixed size
fits: too large and a stalled chunk sits out the whole read timeout; too small and each
chunk's round trip dominates. The sizer measures each chunk's throughput and sizes the next
one to take RADIOLOGY_FORWARD_CHUNK_SECONDS, between 64 KiB and RADIOLOGY_FORWARD_MAX_CHUNK_BYTES.
It starts small (256 KiB: about 2 s at 1 Mbit/s), grows at most 4x a chunk (one fast
measurement is not a fast link), shrinks at once when the link slows, and halves after a drop.
Sizes count payload (uncompressed) bytes, the unit of Content-Range; the rate is measured on
payload too, so compression that halves the wire bytes lets a chunk carry twice the payload.
Since the far side keeps what arrived of a cut chunk, a drop costs the bytes in flight, not the
chunk: the size only bounds how long a chunk may take, and so how stale the recorded progress is.

Compression. zstd (the `zstandard` binding of the reference library), level 3: on CT with
native pixels it takes a chunk to ~65% of its bytes at ~250 MB/s on one core of this 2-core
machine (measured on pydicom's CT_small.dcm); level 1 saves 4 points less, levels 6-9 save one
point more at a third of the speed, and level 19 runs at ~10 MB/s. A clinic's cheap CPU, several
times slower, still compresses far faster than any 3G link sends, so the forwarder never waits on
it. gzip/deflate would save less at a fraction of the speed; brotli is slower still at equal ratio.
JPEG photos and DICOM with compressed pixels (JPEG, JPEG 2000, RLE) do not shrink: they are
sent raw without trying, and any file whose chunk saved less than 10% is sent raw from then on.
"""

from __future__ import annotations

import threading

import zstandard

from apps.radiology.models import JPEG_MIME_TYPE, RadiologyImage

MIN_CHUNK_BYTES = 64 * 1024
FIRST_CHUNK_BYTES = 256 * 1024
# At most this many times the previous chunk: a quick small chunk on a LAN says little.
MAX_GROWTH = 4
ZSTD_LEVEL = 3
# A compressed chunk goes as such only when it is at most this fraction of the raw bytes.
WORTH_COMPRESSING = 0.9
ZSTD = "zstd"


class ChunkSizer:
    """The next chunk's payload size for one destination, learnt from the chunks sent to it.

    Shared by that destination's concurrent pushes (they share its link), hence the lock.
    """

    def __init__(self, *, target_seconds: float, max_bytes: int, first_bytes: int = FIRST_CHUNK_BYTES) -> None:
        self._target_seconds = target_seconds
        self._max_bytes = max(MIN_CHUNK_BYTES, max_bytes)
        self._size = self._clamp(first_bytes)
        self._lock = threading.Lock()

    def _clamp(self, size: float) -> int:
        return int(min(self._max_bytes, max(MIN_CHUNK_BYTES, size)))

    def next_size(self) -> int:
        with self._lock:
            return self._size

    def measured(self, *, payload_bytes: int, seconds: float) -> None:
        """A chunk of `payload_bytes` went through in `seconds` (request sent, answer read).

        A chunk below the smallest size (a file's tail) is mostly round trip: it says nothing
        about the link's rate, so it changes nothing.
        """
        if payload_bytes < MIN_CHUNK_BYTES or seconds <= 0:
            return
        wanted = payload_bytes / seconds * self._target_seconds
        with self._lock:
            self._size = self._clamp(min(wanted, self._size * MAX_GROWTH))

    def dropped(self) -> None:
        """The connection failed during a chunk: the link is worse than measured."""
        with self._lock:
            self._size = self._clamp(self._size // 2)


def compression_may_pay(image: RadiologyImage) -> bool:
    """Whether the image's bytes are worth trying to compress: not a JPEG, not compressed pixels."""
    if image.mime_type == JPEG_MIME_TYPE:
        return False
    # Imported here: pydicom loads numpy (~24 MiB), which the forwarder needs for nothing else.
    from pydicom.uid import UID

    return not (image.transfer_syntax_uid and UID(image.transfer_syntax_uid).is_compressed)


class ChunkEncoder:
    """The wire body of each chunk of one file: zstd while it pays, raw from the first chunk it did not."""

    def __init__(self, *, compress: bool) -> None:
        # One compressor per push: a ZstdCompressor must not be used by two threads at once.
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if compress else None

    @property
    def compressing(self) -> bool:
        return self._compressor is not None

    def encode(self, payload: bytes) -> tuple[bytes, str | None]:
        """(body, Content-Encoding or None). One zstd frame with its content size, as the far side requires."""
        if self._compressor is None:
            return payload, None
        compressed = self._compressor.compress(payload)
        if len(compressed) <= len(payload) * WORTH_COMPRESSING:
            return compressed, ZSTD
        self._compressor = None  # the file does not compress: stop spending CPU on it
        return payload, None
