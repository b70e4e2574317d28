"""Rendered images and thumbnails, cached on the server and revalidated by the browser.

A stored image never changes, so a render is fully determined by the image's checksum and
the render parameters: that key names the cache entry (Django's cache, by default a
RenderFileCache under var/, shared by the workers of one host) and gives the ETag, so a
browser that already has it gets 304 without the server decoding anything.

A frame that could not be decoded is remembered too (a small entry per image and frame, for
FAILURE_SECONDS), so a viewer retrying it, or every page that shows its thumbnail, costs a
cache read rather than another decode of the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
import random
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.http import HttpRequest, HttpResponse

from apps.radiology.errors import CodestreamMismatch, ImageTooLargeToRender, RadiologyError, RenderingFailed
from apps.radiology.fastpaths.after_response import when_closed

if TYPE_CHECKING:
    from apps.radiology.models import RadiologyImage

CACHE_ALIAS = "renders"
# Private: it is patient data. Long-lived: the bytes behind a given ETag never change.
BROWSER_CACHE = "private, max-age=86400"
# Bump when pixels.render produces other bytes for the same parameters (2: JPEGs without
# optimised Huffman tables, large reductions with reducing_gap; 3: JPEG photos decoded at a
# reduced scale with Pillow's draft; 4: overlay planes burned in, and whether they are shown is
# part of the key), so an ETag keeps naming one exact body.
RENDER_FORM = 4


@dataclass(frozen=True)
class RenderKey:
    image_id: int
    checksum: str
    frame: int
    media_type: str
    viewport: tuple[int, int] | None
    window: tuple[float, float] | None
    quality: int
    # Overlay planes burned in: False both when hidden (?overlays=false) and when the image has
    # none, so an image without overlays has one render, whichever was asked.
    overlays: bool = False

    @property
    def digest(self) -> str:
        parts = (
            self.image_id,
            self.checksum,
            self.frame,
            self.media_type,
            self.viewport,
            self.window,
            self.quality,
            self.overlays,
        )
        raw = "|".join(str(part) for part in (RENDER_FORM, *parts))
        return hashlib.sha256(raw.encode()).hexdigest()[:40]

    @property
    def etag(self) -> str:
        return f'"r-{self.digest}"'


def render_key(
    image: RadiologyImage,
    *,
    frame: int,
    media_type: str,
    viewport: tuple[int, int] | None,
    window: tuple[float, float] | None,
    quality: int,
    overlays: bool = False,
) -> RenderKey:
    return RenderKey(image.pk, image.checksum, frame, media_type, viewport, window, quality, overlays)


# How long a failed decode is remembered: the stored bytes never change, but a decoder plugin
# installed meanwhile may read them; a day bounds how long that takes to show.
FAILURE_SECONDS = 86400


def _failure_key(image: RadiologyImage, frame: int) -> str:
    return f"render-failed:{RENDER_FORM}:{image.pk}:{image.checksum}:{frame}"


# The refusals a decode of a frame can end with that are remembered, by code: the entry is
# (code, detail), and the same class with the same detail is raised again.
REMEMBERED_FAILURES: dict[str, type[RadiologyError]] = {
    error.code: error for error in (RenderingFailed, CodestreamMismatch, ImageTooLargeToRender)
}


def remembered_failure(image: RadiologyImage, frame: int) -> RadiologyError | None:
    """The refusal a decode of this frame ended with before, if any (one cache read; see remember_failure)."""
    if image.pk is None:
        return None
    value = caches[CACHE_ALIAS].get(_failure_key(image, frame))
    if isinstance(value, tuple) and len(value) == 2 and value[0] in REMEMBERED_FAILURES and isinstance(value[1], str):
        return REMEMBERED_FAILURES[value[0]](value[1])
    return None


def remember_failure(image: RadiologyImage, frame: int, error: RadiologyError) -> None:
    """Keep a refused decode of this frame (one of REMEMBERED_FAILURES), so the next request does not decode again."""
    if image.pk is not None and error.code in REMEMBERED_FAILURES:
        caches[CACHE_ALIAS].set(_failure_key(image, frame), (error.code, str(error.detail)), timeout=FAILURE_SECONDS)


def cached_response(request: HttpRequest, key: RenderKey, produce: object) -> HttpResponse:
    """304 if the browser holds this render; else the cached or freshly produced bytes."""
    # Weak comparison, as RFC 9110 13.1.2 requires for If-None-Match: W/"x" (an ETag a
    # compressing proxy weakened) matches "x".
    held = [tag.strip().removeprefix("W/") for tag in request.headers.get("If-None-Match", "").split(",")]
    if key.etag in held:
        response = HttpResponse(status=304)
    else:
        cache = caches[CACHE_ALIAS]
        cache_key = f"render:{key.digest}"
        content = cache.get(cache_key)
        fresh = content is None
        if fresh:
            content = produce()  # type: ignore[operator]
        response = HttpResponse(content, content_type=key.media_type)
        if fresh:
            # Kept once the server has sent the answer: writing a cache file costs as much as
            # rendering a small image, and the viewer waiting for this one does not need it kept.
            when_closed(response, cache.set, key=cache_key, value=content, timeout=None)
    response["ETag"] = key.etag
    response["Cache-Control"] = BROWSER_CACHE
    return response


# --- the cache backend ----------------------------------------------------------------------

_MISSING = object()
# magic, kind of value, expiry (epoch seconds, inf: never), payload length, CRC-32 of the payload
_HEADER = struct.Struct("<4sBdQI")
_MAGIC = b"PLRC"
_BYTES, _TEXT, _PICKLE = 0, 1, 2
# A writer killed between creating its temporary file and renaming it leaves the file behind.
_STALE_TEMP_SECONDS = 3600


class RenderFileCache(BaseCache):
    """A Django cache backend of one file per entry, named by the SHA-256 of the key.

    Django's FileBasedCache, which this replaces, lists the whole directory on every set() to
    decide whether to cull (tens of milliseconds once it holds the default 20,000 renders)
    and pickles and zlib-compresses every value (wasted work on JPEG bytes) and unpickles
    it on every get(). Here bytes and text are stored as they are behind a 25-byte header,
    and the directory is listed about once every CULL_EVERY writes (default MAX_ENTRIES/100,
    counted per thread from a random start, so restarted workers still cull), so the
    cache may hold a little more than MAX_ENTRIES between culls. A cull removes the oldest
    entries down to MAX_ENTRIES less 1/CULL_FREQUENCY, as FileBasedCache removes random ones.

    MAX_BYTES (optional) bounds the bytes the entries hold as well: a count alone lets 20,000
    full-size PNGs of 2048 x 2048 fill a disk. A writer also culls once it has written
    MAX_BYTES/100 since its last cull, and a cull then removes the oldest entries until they
    hold MAX_BYTES less 1/CULL_FREQUENCY (each entry's size comes with the stat that gives
    its age, so this costs no extra system call per entry).

    Entries are written to a temporary file and renamed, so a reader sees a whole entry or
    none; the header's length and CRC catch one a crash left torn (it is dropped, not served).
    Files are private to the server's user: renders are patient data.
    """

    suffix = ".render"
    temp_suffix = ".tmp"
    legacy_suffix = ".djcache"  # FileBasedCache's entries: culled and cleared with ours

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._dir = os.path.abspath(location)
        options = params.get("OPTIONS", {})
        self._cull_every = max(int(options.get("CULL_EVERY", self._max_entries // 100)), 1)
        self._writes = random.randrange(self._cull_every)  # noqa: S311 (spreads culls, not a secret)
        max_bytes = options.get("MAX_BYTES")
        self._max_bytes: int | None = int(max_bytes) if max_bytes else None
        self._cull_bytes = max((self._max_bytes or 0) // 100, 1)
        self._bytes_written = 0

    def _path(self, key: str, version: int | None) -> str:
        name = hashlib.sha256(self.make_and_validate_key(key, version=version).encode()).hexdigest()
        return os.path.join(self._dir, name + self.suffix)

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        value = self._read(self._path(key, version))
        return default if value is _MISSING else value

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        self._bytes_written += self._write(self._path(key, version), value, self.get_backend_timeout(timeout))
        self._writes += 1
        if self._writes >= self._cull_every or (self._max_bytes and self._bytes_written >= self._cull_bytes):
            self._writes = self._bytes_written = 0
            self._cull()

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        if self.has_key(key, version):
            return False
        self.set(key, value, timeout, version)
        return True

    def has_key(self, key: str, version: int | None = None) -> bool:
        return self._read(self._path(key, version)) is not _MISSING

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        path = self._path(key, version)
        value = self._read(path)
        if value is _MISSING:
            return False
        self._write(path, value, self.get_backend_timeout(timeout))
        return True

    def delete(self, key: str, version: int | None = None) -> bool:
        try:
            os.remove(self._path(key, version))
        except FileNotFoundError:
            return False
        return True

    def clear(self) -> None:
        for name in self._names():
            if name.endswith((self.suffix, self.temp_suffix, self.legacy_suffix)):
                self._remove(name)

    def _read(self, path: str) -> Any:
        """The value stored at `path`; _MISSING if absent, expired or torn (those are removed)."""
        try:
            with open(path, "rb") as handle:
                # Header and payload read apart: slicing the payload off one read would copy it
                # (~23 MB for a big series' metadata, tens of ms).
                header = handle.read(_HEADER.size)
                payload = handle.read()
        except FileNotFoundError:
            return _MISSING
        if len(header) == _HEADER.size:
            magic, kind, expiry, length, crc = _HEADER.unpack(header)
            if magic == _MAGIC and length == len(payload) and crc == zlib.crc32(payload) and expiry > time.time():
                if kind == _BYTES:
                    return payload
                if kind == _TEXT:
                    return payload.decode("utf-8", "surrogatepass")
                if kind == _PICKLE:
                    return pickle.loads(payload)  # noqa: S301 (written by this server, in its private directory)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return _MISSING

    def _write(self, path: str, value: Any, expiry: float | None) -> int:
        """Write one entry whole; return its size in bytes."""
        if type(value) is bytes:
            kind, payload = _BYTES, value
        elif type(value) is str:
            kind, payload = _TEXT, value.encode("utf-8", "surrogatepass")
        else:
            kind, payload = _PICKLE, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        header = _HEADER.pack(_MAGIC, kind, math.inf if expiry is None else expiry, len(payload), zlib.crc32(payload))
        try:
            descriptor, temp = tempfile.mkstemp(dir=self._dir, prefix=".", suffix=self.temp_suffix)
        except FileNotFoundError:  # first write, or the directory was removed meanwhile
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            descriptor, temp = tempfile.mkstemp(dir=self._dir, prefix=".", suffix=self.temp_suffix)
        try:
            with open(descriptor, "wb") as handle:
                handle.write(header)
                handle.write(payload)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)
            raise
        return len(header) + len(payload)

    def _cull(self) -> None:
        """Remove the oldest entries once there are more than MAX_ENTRIES or they hold more than
        MAX_BYTES, and stale temporary files."""
        names = self._names()
        entries = [name for name in names if name.endswith((self.suffix, self.legacy_suffix))]
        now = time.time()
        for name in names:
            if name.endswith(self.temp_suffix) and now - self._mtime(name, now) > _STALE_TEMP_SECONDS:
                self._remove(name)
        too_many = len(entries) > self._max_entries
        if not too_many and self._max_bytes is None:
            return
        stats = {name: self._stat(name, now) for name in entries}
        held = sum(size for _mtime, size in stats.values())
        too_large = self._max_bytes is not None and held > self._max_bytes
        if not (too_many or too_large):
            return

        def kept(limit: int) -> int:
            return limit - limit // self._cull_frequency if self._cull_frequency else 0

        keep_entries = kept(self._max_entries) if too_many else len(entries)
        keep_bytes = kept(self._max_bytes) if too_large and self._max_bytes is not None else held
        remaining = len(entries)
        for name in sorted(entries, key=lambda name: stats[name][0]):  # oldest first
            if remaining <= keep_entries and held <= keep_bytes:
                break
            self._remove(name)
            remaining -= 1
            held -= stats[name][1]

    def _stat(self, name: str, now: float) -> tuple[float, int]:
        """(modification time, size) of a file of the cache; (now, 0) if it is gone."""
        try:
            result = os.stat(os.path.join(self._dir, name))
        except FileNotFoundError:
            return now, 0
        return result.st_mtime, result.st_size

    def _names(self) -> list[str]:
        try:
            with os.scandir(self._dir) as listing:
                return [entry.name for entry in listing]
        except FileNotFoundError:
            return []

    def _mtime(self, name: str, default: float) -> float:
        try:
            return os.stat(os.path.join(self._dir, name)).st_mtime
        except FileNotFoundError:
            return default

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self._dir, name))
