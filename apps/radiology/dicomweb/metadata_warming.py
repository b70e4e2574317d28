"""A big series' WADO-RS metadata built once the series stops growing, so its first request reads it.

Why: a series' metadata is every instance's stored text joined (dicom_json.metadata_array). For
2,000 instances that is ~23 MB read from 2,000 rows whose text PostgreSQL keeps out of line. In a
database of a year of studies those pages have long left PostgreSQL's buffers (and the kernel's
page cache), and the first request of such a series took ~300 ms (bench/scale.py at 100,000
instances: ~180 ms of it PostgreSQL reading the texts, auto_explain) where an answer kept in the
render cache is read in ~45 ms. So the answer is built ahead, as Orthanc's DICOMweb plugin (1.15
on) stores a series' metadata once the series is stable.

How:
- ingest sends images_committed (ingest/signals.py) with the series that gained images, and each
  process notes them (`note_series`);
- a series noted and then quiet for settings.RADIOLOGY_METADATA_PREBUILD_SECONDS is built by the
  process's builder thread. Quiet first: a modality sends a series over minutes, and building it
  after every batch would read it again and again;
- only a series of at least MIN_INSTANCES instances: a smaller one is built on request in well
  under 100 ms, and its answer would only push renders out of the render cache. Never one with a
  JPEG (such an answer is never cached, dicom_json.cached_metadata_array);
- an answer's BulkDataURIs are absolute, so it is built for each DICOMweb root clients used lately
  (`remember_root`: at most MAX_ROOTS, kept in the render cache where every process reads them);
- a process that ends soon after its ingest (import_radiology) builds what it noted before it
  exits (`build_noted_now`).

The answer is kept under the key a request keeps it under (dicom_json.series_metadata), read
through the read door with the everything scope: a series is visible whole or not at all, so its
answer is the same for every reader who may see it. Nothing here is needed for a correct answer:
a series not built ahead is built by its first request, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connection

from apps.radiology.access.principals import EVERYTHING, ScopePrincipal
from apps.radiology.access.visible import visible_images
from apps.radiology.dicomweb.render_cache import CACHE_ALIAS
from apps.radiology.models import RadiologySeries

logger = logging.getLogger(__name__)

MIN_INSTANCES = 1000
MAX_ROOTS = 3
ROOTS_KEY = "dicomweb-roots"
# A process writes a root it serves again after this long, so the entry comes back after the render
# cache's culls (oldest entries first) or its deletion (docs/operations.md says that is safe).
ROOT_REFRESH_SECONDS = 300.0

_written_roots: dict[str, float] = {}  # root -> when this process last wrote it


def remember_root(root: str) -> None:
    """Note a DICOMweb root a client used (scheme, host and path of the API), most recent last."""
    now = time.monotonic()
    written = _written_roots.get(root)
    if written is not None and now - written < ROOT_REFRESH_SECONDS:
        return
    kept = [known for known in remembered_roots() if known != root]
    caches[CACHE_ALIAS].set(ROOTS_KEY, "\n".join([*kept[-(MAX_ROOTS - 1) :], root]), timeout=None)
    _written_roots[root] = now


def remembered_roots() -> list[str]:
    text = caches[CACHE_ALIAS].get(ROOTS_KEY)
    return text.split("\n") if isinstance(text, str) and text else []


def build_series(series_ids: Iterable[int]) -> int:
    """Build and keep the metadata answers of these series (those big enough, without a JPEG) for
    each remembered root; how many answers were built (one already kept is not built again)."""
    # Imported here: every process connects note_series at start-up (apps.py), and most (migrate,
    # the forwarder) never build an answer, so they need not load pydicom and the pixel codecs.
    from apps.radiology.dicomweb.dicom_json import image_summary, series_metadata

    roots = remembered_roots()
    ids = list(series_ids)
    if not roots or not ids:
        return 0
    images = visible_images(ScopePrincipal(EVERYTHING))
    found = RadiologySeries.objects.filter(pk__in=ids).select_related("study").annotate(**image_summary("images"))
    built = 0
    for series in found:
        if series.image_count < MIN_INSTANCES or series.photo_count:
            continue
        for root in roots:
            base = f"{root}/studies/{series.study.study_uid}/series/{series.series_uid}"
            answer = series_metadata(images, series, base=base)
            if answer.cache_key is not None:
                caches[CACHE_ALIAS].set(answer.cache_key, answer.body, timeout=None)
                built += 1
    return built


class _Noted:
    """The series this process noted, each with when it may be built; and the thread that builds them."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: dict[int, float] = {}
        self._thread: threading.Thread | None = None

    def note(self, series_ids: Iterable[int], delay: float) -> None:
        with self._changed:
            at = time.monotonic() + delay
            for pk in series_ids:
                self._due[pk] = at  # a series that grows again waits again
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._build_when_quiet, name="metadata-prebuild", daemon=True)
                self._thread.start()
            self._changed.notify()

    def take(self, *, all_of_them: bool) -> list[int]:
        """The series that are due (or all noted), no longer noted."""
        with self._changed:
            now = time.monotonic()
            taken = [pk for pk, at in self._due.items() if all_of_them or at <= now]
            for pk in taken:
                del self._due[pk]
            return taken

    def _build_when_quiet(self) -> None:
        while True:
            with self._changed:
                while (first_due := min(self._due.values(), default=None)) is None or first_due > time.monotonic():
                    self._changed.wait(timeout=None if first_due is None else first_due - time.monotonic())
            _build_logged(self.take(all_of_them=False))
            connection.close()  # the thread's own; not held open between builds


_noted = _Noted()


def _build_logged(series_ids: list[int]) -> None:
    """build_series; a failure is logged, never raised: the series is then built by its first request."""
    try:
        build_series(series_ids)
    except Exception:
        logger.exception("building the metadata of %d series ahead failed", len(series_ids))


def note_series(sender: Any, series_ids: Iterable[int], **_: Any) -> None:
    """images_committed's receiver: build these series' metadata once they have been quiet a while."""
    delay = settings.RADIOLOGY_METADATA_PREBUILD_SECONDS
    if delay is not None:
        _noted.note(series_ids, delay)


def build_noted_now() -> None:
    """Build every series this process noted, without waiting for it to be quiet (a command's end)."""
    _build_logged(_noted.take(all_of_them=True))
