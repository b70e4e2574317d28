"""Rendered images and thumbnails, cached on the server and revalidated by the browser.

A stored image never changes, so a render is fully determined by the image's checksum and
the render parameters: that key names the cache entry (Django's cache, a file cache under
var/ by default, shared by the workers of one host) and gives the ETag, so a browser that
already has it gets 304 without the server decoding anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.core.cache import caches
from django.http import HttpRequest, HttpResponse

from apps.radiology.models import RadiologyImage

CACHE_ALIAS = "renders"
# Private: it is patient data. Long-lived: the bytes behind a given ETag never change.
BROWSER_CACHE = "private, max-age=86400"


@dataclass(frozen=True)
class RenderKey:
    image_id: int
    checksum: str
    frame: int
    media_type: str
    viewport: tuple[int, int] | None
    window: tuple[float, float] | None
    quality: int

    @property
    def digest(self) -> str:
        parts = (self.image_id, self.checksum, self.frame, self.media_type, self.viewport, self.window, self.quality)
        raw = "|".join(str(part) for part in parts)
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
) -> RenderKey:
    return RenderKey(image.pk, image.checksum, frame, media_type, viewport, window, quality)


def cached_response(request: HttpRequest, key: RenderKey, produce: object) -> HttpResponse:
    """304 if the browser holds this render; else the cached or freshly produced bytes."""
    # Weak comparison, as RFC 9110 13.1.2 requires for If-None-Match: W/"x" (an ETag a
    # compressing proxy weakened) matches "x".
    held = [tag.strip().removeprefix("W/") for tag in request.headers.get("If-None-Match", "").split(",")]
    if key.etag in held:
        response = HttpResponse(status=304)
    else:
        cache = caches[CACHE_ALIAS]
        content = cache.get(f"render:{key.digest}")
        if content is None:
            content = produce()  # type: ignore[operator]
            cache.set(f"render:{key.digest}", content, timeout=None)
        response = HttpResponse(content, content_type=key.media_type)
    response["ETag"] = key.etag
    response["Cache-Control"] = BROWSER_CACHE
    return response
