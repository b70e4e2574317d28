"""DICOM JSON (PS3.18 F) for studies, series and instances, built from what ingest stored.

Nothing here opens an image file: study and series attributes come from their rows, an
instance's from the header saved at ingest (read through imagefiles/stored_header.py), with
bulk data given as BulkDataURI.
A stored JPEG is presented as a Secondary Capture instance whose single frame is the
JPEG itself (or, for a JPEG process viewers do not decode, its decoded pixels: photo_is_decoded),
marked as a converted photo (ConversionType, LossyImageCompression "01").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from django.core.cache import caches
from django.db.models import Count, F, Max, Q, QuerySet
from django.http import HttpResponseBase
from pydicom.dataset import Dataset, FileMetaDataset

from apps.radiology import storage
from apps.radiology.dicomweb import pixels
from apps.radiology.dicomweb.render_cache import CACHE_ALIAS
from apps.radiology.fastpaths.after_response import when_closed
from apps.radiology.imagefiles import stored_header
from apps.radiology.imagefiles.dicom import (
    DECODED_PHOTO_TRANSFER_SYNTAX,
    JPEG_BASELINE_TRANSFER_SYNTAX,
    SECONDARY_CAPTURE_SOP_CLASS,
)
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyImage, RadiologySeries, RadiologyStudy

PIXEL_DATA = stored_header.PIXEL_DATA
# Instances (and series) without a number last, on every database: SQLite would sort NULL first.
INSTANCE_ORDER = (F("instance_number").asc(nulls_last=True), "id")


def element(vr: str, *values: Any) -> dict[str, Any]:
    """One DICOM JSON attribute; empty values give an attribute with no Value (present, empty)."""
    present = [value for value in values if value not in (None, "")]
    if not present:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(value)} for value in present]}
    return {"vr": vr, "Value": present}


def da(value: dt.date | None) -> str | None:
    return value.strftime("%Y%m%d") if value else None


def tm(value: dt.time | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%H%M%S.%f") if value.microsecond else value.strftime("%H%M%S")


def study_attributes(
    study: RadiologyStudy, *, modalities: list[str], series_count: int, instance_count: int, retrieve_url: str
) -> dict[str, Any]:
    """Study-level attributes (what OHIF's study list and its study query read)."""
    return {
        "00080005": element("CS", "ISO_IR 192"),
        "00080020": element("DA", da(study.study_date)),
        "00080030": element("TM", tm(study.study_time)),
        "00080050": element("SH", study.accession_number),
        "00080056": element("CS", "ONLINE"),
        "00080061": element("CS", *modalities),
        "00080090": element("PN", study.referring_physician_name),
        "00081030": element("LO", study.study_description),
        "00081190": element("UR", retrieve_url),
        "00100010": element("PN", study.patient_dicom_name or study.patient_name),
        "00100020": element("LO", study.patient_id),
        "00100030": element("DA", da(study.patient_birth_date)),
        "00100040": element("CS", study.patient_sex),
        "0020000D": element("UI", study.study_uid),
        "00200010": element("SH", study.accession_number),
        "00201206": element("IS", series_count),
        "00201208": element("IS", instance_count),
    }


def series_attributes(
    series: RadiologySeries, *, study_uid: str, instance_count: int, retrieve_url: str
) -> dict[str, Any]:
    """Series-level attributes."""
    return {
        "00080005": element("CS", "ISO_IR 192"),
        "00080021": element("DA", da(series.series_date)),
        "00080031": element("TM", tm(series.series_time)),
        "00080060": element("CS", series.modality),
        "0008103E": element("LO", series.series_description),
        "00081190": element("UR", retrieve_url),
        "00180015": element("CS", series.body_part_examined),
        "0020000D": element("UI", study_uid),
        "0020000E": element("UI", series.series_uid),
        "00200011": element("IS", series.series_number),
        "00201209": element("IS", instance_count),
    }


def instance_attributes(
    image: RadiologyImage, *, study_uid: str, series_uid: str, modality: str, retrieve_url: str
) -> dict[str, Any]:
    """Instance-level attributes of a QIDO answer."""
    return {
        "00080016": element("UI", image.sop_class_uid),
        "00080018": element("UI", image.image_uid),
        "00080060": element("CS", modality),
        "00081190": element("UR", retrieve_url),
        "00083002": element("UI", image.transfer_syntax_uid),
        "0020000D": element("UI", study_uid),
        "0020000E": element("UI", series_uid),
        "00200013": element("IS", image.instance_number),
        "00280008": element("IS", image.number_of_frames),
        "00280010": element("US", image.rows),
        "00280011": element("US", image.columns),
    }


def instance_metadata(
    image: RadiologyImage, *, study: RadiologyStudy | None, series: RadiologySeries | None, instance_url: str
) -> dict[str, Any]:
    """The full metadata of one instance, bulk data as BulkDataURI (never inline).

    `study` and `series` are only read for a JPEG (a DICOM instance's stored header has it all)."""
    if image.is_dicom:
        return stored_header.instance_header(image, instance_url=instance_url)
    if study is None or series is None:
        raise ValueError("A JPEG's metadata needs its study and series.")
    metadata = jpeg_secondary_capture(image, study=study, series=series)
    metadata.update(stored_header.bulk_references(image, instance_url))
    return dict(sorted(metadata.items()))


def metadata_array(images: QuerySet[RadiologyImage], *, instance_url: Callable[[str, str], str]) -> bytes:
    """The full metadata of many instances (in the queryset's order) as one DICOM JSON array, UTF-8.

    A DICOM instance's text was written at ingest and goes out as stored (stored_header.stored_texts);
    JPEGs take the general path (instance_metadata). `instance_url(series_uid, image_uid)` is
    an instance's retrieve URL.

    Made of the bytes the database sent, with one join and nothing else that copies the whole:
    the answer for a 2,000-instance series is ~23 MB, and each further copy of it (a
    concatenation, a str encoded again for the response and for the cache) cost 20-40 ms on the
    2-core server (py-spy, bench/scale.py's first series metadata request).
    """
    parts: list[bytes] = []
    general: dict[int, int] = {}  # image pk -> the index of its text in parts
    for pk, text in stored_header.stored_texts(images, instance_url=instance_url):
        parts.append(b",")
        if text is None:
            general[pk] = len(parts)
        parts.append(text or b"")
    if general:
        for image in RadiologyImage.objects.select_related("series__study").filter(pk__in=general):
            series = image.series
            metadata = instance_metadata(
                image, study=series.study, series=series, instance_url=instance_url(series.series_uid, image.image_uid)
            )
            parts[general[image.pk]] = stored_header.compact_json(metadata).encode()
    if parts:
        parts[0] = b"["  # the first separator
    else:
        parts.append(b"[")
    parts.append(b"]")
    return b"".join(parts)


# Bump when the text metadata_array writes changes, so no cached answer of an older form is served
# (3: kept as bytes, not text).
METADATA_CACHE_FORM = 3


@dataclass(frozen=True)
class ImageSummary:
    """What names the set of images of a series or study: stored images never change and are
    never deleted, so (how many, the highest id) changes whenever one is added."""

    count: int
    last: int | None
    photos: int  # JPEGs: described partly from study and series rows, which may be edited


def image_summary(prefix: str) -> dict[str, Any]:
    """Annotations giving an ImageSummary of the images under `prefix` ("images", "series__images")."""
    return {
        "image_count": Count(prefix),
        "last_image": Max(prefix),
        "photo_count": Count(prefix, filter=~Q(**{f"{prefix}__mime_type": DICOM_MIME_TYPE})),
    }


def summary_of(annotated: Any) -> ImageSummary:
    return ImageSummary(annotated.image_count, annotated.last_image, annotated.photo_count)


@dataclass(frozen=True)
class MetadataAnswer:
    """A metadata array, and the render-cache key to keep it under once it has been sent (None:
    it came from the cache, or is never cached)."""

    body: bytes
    cache_key: str | None = None

    def keep_after(self, response: HttpResponseBase) -> None:
        """Write the body to the render cache once `response` has gone: the ~23 MB of a big
        series' answer need not wait for the disk (as renders, render_cache.cached_response)."""
        if self.cache_key is not None:
            when_closed(response, caches[CACHE_ALIAS].set, key=self.cache_key, value=self.body, timeout=None)


def cached_metadata_array(
    images: QuerySet[RadiologyImage], *, summary: ImageSummary, scope: str, instance_url: Callable[[str, str], str]
) -> MetadataAnswer:
    """metadata_array, kept in the server's render cache for as long as the images stay the same.

    `summary` (read with the series or study row, no extra query) names the set of images;
    `scope` says which series or study and the base URL the BulkDataURIs were written with.
    An answer with a JPEG in it is never cached (see ImageSummary). A fresh answer is kept
    after its response (MetadataAnswer.keep_after).
    """
    if summary.photos or not summary.count:
        return MetadataAnswer(metadata_array(images, instance_url=instance_url))
    raw = f"{METADATA_CACHE_FORM}|{scope}|{summary.count}|{summary.last}"
    key = f"metadata:{hashlib.sha256(raw.encode()).hexdigest()[:40]}"
    cached = caches[CACHE_ALIAS].get(key)
    if isinstance(cached, bytes):
        return MetadataAnswer(cached)
    return MetadataAnswer(metadata_array(images, instance_url=instance_url), cache_key=key)


def series_metadata(images: QuerySet[RadiologyImage], series: RadiologySeries, *, base: str) -> MetadataAnswer:
    """The metadata array of `series` (annotated with image_summary("images")) from `images`,
    its BulkDataURIs under `base`, the series' retrieve URL: what a request is answered and
    what metadata_warming.py builds ahead under the same cache key."""
    return cached_metadata_array(
        images.filter(series=series).order_by(*INSTANCE_ORDER),
        summary=summary_of(series),
        scope=f"series:{series.pk}:{base}",
        instance_url=lambda _series_uid, image_uid: f"{base}/instances/{image_uid}",
    )


def photo_is_decoded(image: RadiologyImage) -> bool:
    """Whether a stored JPEG is presented as its decoded pixels rather than as the JPEG itself:
    ingest chose the transfer syntax from its JPEG process (dicom.photo_transfer_syntax); a row
    stored before that says JPEG Baseline, and is presented as before."""
    return not image.is_dicom and image.transfer_syntax_uid == DECODED_PHOTO_TRANSFER_SYNTAX


def jpeg_secondary_capture(image: RadiologyImage, *, study: RadiologyStudy, series: RadiologySeries) -> dict[str, Any]:
    """A stored JPEG as a Secondary Capture instance (without its pixel data), conformant to
    the SC Image IOD as dciodvfy checks it: Study ID is the accession number, as at study level
    (study_attributes); Laterality and Patient Orientation (Type 2C: a photo knows neither) are
    present and empty; no Number of Frames (single-frame SC has no Multi-frame module).

    Its pixels are the JPEG's own codestream (colour as YBR_FULL_422, what a JPEG decoder
    converts from) or, for a photo presented decoded (photo_is_decoded), RGB.
    """
    colour = stored_header.photo_is_colour(image)
    conversion = stored_header.photo_conversion_type(image)
    photometric = ("RGB" if photo_is_decoded(image) else "YBR_FULL_422") if colour else "MONOCHROME2"
    attributes = {
        "00080005": element("CS", "ISO_IR 192"),
        "00080016": element("UI", SECONDARY_CAPTURE_SOP_CLASS),
        "00080018": element("UI", image.image_uid),
        "00080020": element("DA", da(study.study_date)),
        "00080030": element("TM", tm(study.study_time)),
        "00080050": element("SH", study.accession_number),
        "00080060": element("CS", series.modality or "OT"),
        "00080064": element("CS", conversion),
        "00080090": element("PN", study.referring_physician_name),
        "00081030": element("LO", study.study_description),
        "0008103E": element("LO", series.series_description),
        "00100010": element("PN", study.patient_dicom_name or study.patient_name),
        "00100020": element("LO", study.patient_id),
        "00100030": element("DA", da(study.patient_birth_date)),
        "00100040": element("CS", study.patient_sex),
        "0020000D": element("UI", study.study_uid),
        "0020000E": element("UI", series.series_uid),
        "00200010": element("SH", study.accession_number),
        "00200011": element("IS", series.series_number),
        "00200013": element("IS", image.instance_number),
        "00200020": element("CS"),
        "00200060": element("CS"),
        "00280002": element("US", 3 if colour else 1),
        "00280004": element("CS", photometric),
        "00280010": element("US", image.rows),
        "00280011": element("US", image.columns),
        "00280100": element("US", 8),
        "00280101": element("US", 8),
        "00280102": element("US", 7),
        "00280103": element("US", 0),
        "00282110": element("CS", "01"),
        "00282114": element("CS", "ISO_10918_1"),
    }
    if colour:
        attributes["00280006"] = element("US", 0)
    return attributes


def jpeg_as_part10(
    image: RadiologyImage, *, study: RadiologyStudy, series: RadiologySeries
) -> tuple[int, Iterator[bytes | memoryview]]:
    """A DICOM Part 10 file of a stored JPEG's Secondary Capture instance, in the transfer
    syntax its row names: the JPEG unchanged as the one fragment (JPEG Baseline or Extended),
    or a photo presented decoded as its decoded pixels (Explicit VR Little Endian).

    Returns (total length, byte stream); the JPEG bytes stream from storage. A decoded photo is
    decoded when this is called (within pixels.check_decode_budget, which a caller may check first).
    """
    dataset = Dataset.from_json(jpeg_secondary_capture(image, study=study, series=series))
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
    dataset.file_meta.MediaStorageSOPInstanceUID = image.image_uid
    dataset.file_meta.TransferSyntaxUID = image.transfer_syntax_uid or JPEG_BASELINE_TRANSFER_SYNTAX
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    if photo_is_decoded(image):
        return _with_decoded_pixels(image, buffer.getvalue())
    padded = image.file_size + (image.file_size % 2)
    header = buffer.getvalue() + (
        b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"  # (7FE0,0010) OB, undefined length
        + b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # empty basic offset table
        + b"\xfe\xff\x00\xe0"
        + padded.to_bytes(4, "little")  # the one fragment: the JPEG
    )
    trailer = (b"\x00" if image.file_size % 2 else b"") + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

    def chunks() -> Iterator[bytes]:
        yield header
        yield from storage.iter_object_chunks(image.file_key)
        yield trailer

    return len(header) + image.file_size + len(trailer), chunks()


def _with_decoded_pixels(image: RadiologyImage, head: bytes) -> tuple[int, Iterator[bytes | memoryview]]:
    """(total length, byte stream) of a Part 10 file whose data set is `head` followed by the
    photo's decoded pixels as native Pixel Data (OB, padded to even length)."""
    frame = pixels.decode_frame(image, 1)
    padding = b"\x00" if frame.nbytes % 2 else b""
    header = head + b"\xe0\x7f\x10\x00OB\x00\x00" + (frame.nbytes + len(padding)).to_bytes(4, "little")

    def chunks() -> Iterator[bytes | memoryview]:
        yield header
        yield from pixels.decoded_chunks(frame)
        if padding:
            yield padding

    return len(header) + frame.nbytes + len(padding), chunks()
