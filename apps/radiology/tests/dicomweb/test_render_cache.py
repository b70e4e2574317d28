"""RenderFileCache: the render cache's Django cache backend (apps/radiology/dicomweb/render_cache.py).

Entries are files named by the SHA-256 of the full cache key, written whole (temporary file,
then rename), private to the server's user; the directory is listed only on every
CULL_EVERY-th write, and a cull keeps the newest entries.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from apps.radiology.dicomweb import render_cache
from apps.radiology.dicomweb.render_cache import RenderFileCache
from config import settings as production_settings

JPEG = b"\xff\xd8\xff\xe0 a render \xff\xd9"


def make_cache(folder: Path, **options: Any) -> RenderFileCache:
    return RenderFileCache(str(folder), {"TIMEOUT": None, "OPTIONS": options})


def entry_path(folder: Path, key: str) -> Path:
    """Where an entry lives: the SHA-256 of Django's full key (prefix:version:key)."""
    return folder / (hashlib.sha256(f":1:{key}".encode()).hexdigest() + ".render")


def entries(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "render-cache"


def test_the_real_settings_use_it_in_the_configured_directory_with_the_configured_limit() -> None:
    renders = production_settings.CACHES["renders"]  # the test settings swap in LocMemCache
    assert renders["BACKEND"] == "apps.radiology.dicomweb.render_cache.RenderFileCache"
    assert renders["LOCATION"] == str(production_settings.VAR_DIR / "render-cache")  # RADIOLOGY_RENDER_CACHE_DIR unset
    # RADIOLOGY_RENDER_CACHE_ENTRIES and RADIOLOGY_RENDER_CACHE_MAX_BYTES unset
    assert renders["OPTIONS"] == {"MAX_ENTRIES": 20000, "MAX_BYTES": 1024**3}


def test_values_round_trip_with_their_type(folder: Path) -> None:
    cache = make_cache(folder)
    cache.set("render:a", JPEG)
    cache.set("metadata:b", '[{"00080018": "é"}]')
    cache.set("other", {"count": 3})
    assert cache.get("render:a") == JPEG and type(cache.get("render:a")) is bytes
    assert cache.get("metadata:b") == '[{"00080018": "é"}]'
    assert cache.get("other") == {"count": 3}
    assert cache.get("absent") is None
    assert cache.get("absent", "fallback") == "fallback"


def test_an_entry_is_one_private_file_named_by_the_key_digest_holding_the_bytes_as_they_are(folder: Path) -> None:
    cache = make_cache(folder)
    assert not folder.exists()  # created by the first write, not on start-up
    cache.set("render:a", JPEG)
    path = entry_path(folder, "render:a")
    assert entries(folder) == {path.name}
    data = path.read_bytes()
    assert data.startswith(b"PLRC") and data.endswith(JPEG) and len(data) == 25 + len(JPEG)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_the_cache_api(folder: Path) -> None:
    cache = make_cache(folder)
    assert cache.add("k", b"first") is True
    assert cache.add("k", b"second") is False
    assert cache.get("k") == b"first"
    assert cache.has_key("k") and not cache.has_key("other")
    assert cache.touch("k", timeout=None) is True and cache.get("k") == b"first"
    assert cache.touch("other") is False
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert cache.get("k") is None
    assert entries(folder) == set()


def test_an_expired_entry_is_a_miss_and_is_removed(folder: Path) -> None:
    cache = make_cache(folder)
    cache.set("k", JPEG, timeout=0)  # expires at once, as in every Django backend
    assert entries(folder) == {entry_path(folder, "k").name}
    assert cache.get("k") is None
    assert entries(folder) == set()
    cache.set("k", JPEG)
    assert cache.touch("k", timeout=0) is True
    assert not cache.has_key("k")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-3],  # cut short
        lambda data: data[:-1] + b"\x00",  # a changed byte: the CRC no longer matches
        lambda data: b"",  # empty, as a rename without fsync may leave it after a crash
        lambda data: b"XXXX" + data[4:],  # not ours
    ],
)
def test_a_torn_or_foreign_entry_is_a_miss_and_is_removed_never_served(folder: Path, damage: Any) -> None:
    cache = make_cache(folder)
    cache.set("render:a", JPEG)
    path = entry_path(folder, "render:a")
    path.write_bytes(damage(path.read_bytes()))
    assert cache.get("render:a") is None
    assert not path.exists()


def test_writes_do_not_list_the_directory_until_the_cull_is_due(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_cache.random, "randrange", lambda stop: 0)
    cache = make_cache(folder, MAX_ENTRIES=2, CULL_EVERY=5)
    listings: list[str] = []
    real_scandir = os.scandir
    monkeypatch.setattr(render_cache.os, "scandir", lambda path: listings.append(path) or real_scandir(path))
    for number in range(4):
        cache.set(f"k{number}", JPEG)
    assert listings == [] and len(entries(folder)) == 4  # over MAX_ENTRIES until the cull is due
    cache.set("k4", JPEG)
    assert listings == [str(folder)]
    assert len(entries(folder)) == 2  # MAX_ENTRIES less a third of it, rounded down


def test_a_cull_keeps_the_newest_entries_and_removes_old_temporary_files(folder: Path) -> None:
    cache = make_cache(folder, MAX_ENTRIES=10, CULL_EVERY=1)  # CULL_FREQUENCY 3: 10 - 10 // 3 = 7 kept
    for number in range(10):
        cache.set(f"k{number}", JPEG)
        os.utime(entry_path(folder, f"k{number}"), (1_000_000 + number, 1_000_000 + number))
    legacy = folder / "0123abcd.djcache"  # left by FileBasedCache, the backend before this one
    legacy.write_bytes(b"old")
    os.utime(legacy, (999_999, 999_999))
    stale, fresh = folder / ".stale.tmp", folder / ".in-flight.tmp"
    stale.write_bytes(b"")
    os.utime(stale, (1_000_000, 1_000_000))
    fresh.write_bytes(b"")
    unrelated = folder / "README"
    unrelated.write_bytes(b"not an entry")

    cache.set("k10", JPEG)  # 12 entries (11 + the legacy one) > 10

    kept = {entry_path(folder, f"k{number}").name for number in range(4, 11)}
    assert entries(folder) == kept | {fresh.name, unrelated.name}
    assert [cache.get(f"k{number}") for number in range(11)] == [None] * 4 + [JPEG] * 7


def test_clear_removes_entries_temporary_and_legacy_files_only(folder: Path) -> None:
    cache = make_cache(folder)
    cache.set("k", JPEG)
    (folder / ".x.tmp").write_bytes(b"")
    (folder / "0123.djcache").write_bytes(b"")
    (folder / "README").write_bytes(b"")
    cache.clear()
    assert entries(folder) == {"README"}
    make_cache(folder / "never-created").clear()  # no directory yet: nothing to do


def test_a_fresh_render_is_kept_once_the_response_is_closed_and_served_from_the_cache_after() -> None:
    from django.core.cache import caches
    from django.core.signals import request_finished
    from django.db import close_old_connections
    from django.test import RequestFactory

    caches[render_cache.CACHE_ALIAS].clear()
    key = render_cache.RenderKey(7, "ab" * 32, 1, "image/jpeg", (64, 64), None, 85)
    made: list[bytes] = []

    def produce() -> bytes:
        made.append(b"\xff\xd8rendered")
        return made[-1]

    first = render_cache.cached_response(RequestFactory().get("/"), key, produce)
    assert caches[render_cache.CACHE_ALIAS].get(f"render:{key.digest}") is None  # not yet: still being sent
    # As the test client closes responses (request_finished would close database connections).
    request_finished.disconnect(close_old_connections)
    try:
        first.close()
    finally:
        request_finished.connect(close_old_connections)
    again = render_cache.cached_response(RequestFactory().get("/"), key, produce)

    assert (first.content, again.content, first["ETag"], again["ETag"]) == (
        b"\xff\xd8rendered",
        b"\xff\xd8rendered",
        key.etag,
        key.etag,
    )
    assert made == [b"\xff\xd8rendered"]  # rendered once


def test_the_cache_is_bounded_by_bytes_removing_the_oldest_entries_first(folder: Path) -> None:
    """Issue 14 item 9: a count alone lets a few thousand full-size renders fill a disk."""
    render = b"\xff" * 1000  # 1,025 bytes on disk with its header
    cache = make_cache(folder, MAX_ENTRIES=1000, CULL_EVERY=1000, MAX_BYTES=10_000)  # culls per 100 bytes written
    for number in range(9):
        cache.set(f"k{number}", render)
        os.utime(entry_path(folder, f"k{number}"), (1_000_000 + number, 1_000_000 + number))
    assert len(entries(folder)) == 9  # 9,225 bytes: within MAX_BYTES, nothing removed

    cache.set("k9", render)  # 10,250 bytes > 10,000: down to 10,000 - 10,000 // 3 = 6,667 bytes

    kept = {entry_path(folder, f"k{number}").name for number in range(4, 10)}
    assert entries(folder) == kept
    assert sum((folder / name).stat().st_size for name in kept) == 6 * 1025
    assert [cache.get(f"k{number}") for number in range(10)] == [None] * 4 + [render] * 6


def test_a_writer_culls_once_it_has_written_a_hundredth_of_max_bytes(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render_cache.random, "randrange", lambda stop: 0)
    cache = make_cache(folder, MAX_ENTRIES=1000, CULL_EVERY=1000, MAX_BYTES=100_000)  # every 1,000 bytes
    listings: list[str] = []
    real_scandir = os.scandir
    monkeypatch.setattr(render_cache.os, "scandir", lambda path: listings.append(path) or real_scandir(path))
    cache.set("small", b"x" * 100)
    assert listings == []
    cache.set("large", b"x" * 900)  # 1,050 bytes written since the last cull
    assert listings == [str(folder)]
    cache.set("next", b"x")
    assert listings == [str(folder)]
