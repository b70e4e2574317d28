"""An image's stored header: what ingest writes of it from the parsed file, and every read of it.

One header is kept in three forms on RadiologyImage, each for a reader that must be fast:
- `image_metadata`: the header as DICOM JSON without bulk data (for a JPEG: its size, colour
  mode, EXIF and how it was made, ConversionType). The reference form, as jsonb on PostgreSQL.
- `metadata_text`: a DICOM instance's whole WADO-RS metadata as compact JSON text, its bulk
  data as BulkDataURIs relative to the instance ("/bulk/<tag>"), so a series' metadata is its
  rows' text joined with no JSON parsed or written per request. "" for a JPEG: its metadata
  takes fields from the study and series rows, which may be edited.
- `pixel_data["header"]`: the dozen elements decoding and display read (PIXEL_HEADER_TAGS),
  beside the frame locations, so a render reads them with the image row it loads anyway.

A DICOM header is stored with the EMR's patient identity in place of the file's own (the
file's differing values kept as Original Attributes, patient_identity.py): every reader of
these columns is shown the one identity; the stored file keeps its own.

Nothing else knows how these columns are written or reads inside them: the parser and ingest
call the writing half, DICOMweb the reading half.

Writing. The header's JSON is encoded once (EncodedJSON, fastpaths/encoded_json.py), when the
file is parsed: `dicom_header` runs inside dicom.parse_dicom, so for a big batch the encoding is
done by the parse helper's process too (parse_helper.py), and the text travels back with the
dict. It is encoded in pieces cut where metadata_text puts its BulkDataURIs and with the patient
identity held back (EncodedJSON's `hold`), so `columns`, what ingest stores for a new row, fills
in the identity and writes metadata_text from those pieces, encoding only the identity again.

Reading. `instance_header` (one instance's WADO-RS metadata), `stored_texts` (many instances'
metadata as stored), `pixel_header` / `pixel_value` (the pixel description, without loading the
rest of the header), `photo_is_colour` / `photo_conversion_type` (what a JPEG's header says).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet

from apps.radiology.fastpaths.encoded_json import EncodedJSON, encode
from apps.radiology.fastpaths.json_members import select_json_members
from apps.radiology.fastpaths.utf8_rows import utf8_values
from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.imagefiles.patient_identity import HELD_TAGS, FileIdentity
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyImage

if TYPE_CHECKING:  # dicom.py imports this module to write the header it parses
    from apps.radiology.imagefiles.dicom import ParsedImage

PIXEL_DATA = "7FE00010"
# The column of the whole header: what a query defers when it will not read header_elements.
HEADER_COLUMN = "image_metadata"

# The header elements decoding and display read: Image Pixel module, Modality and VOI LUT.
# Kept in pixel_data["header"] too (migration 0008 added them to older rows).
PIXEL_HEADER_TAGS = (
    "00280002",  # Samples per Pixel
    "00280004",  # Photometric Interpretation
    "00280006",  # Planar Configuration
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # Bits Allocated
    "00280101",  # Bits Stored
    "00280103",  # Pixel Representation
    "00281050",  # Window Center
    "00281051",  # Window Width
    "00281052",  # Rescale Intercept
    "00281053",  # Rescale Slope
)

# The compact JSON every stored text is written in: what another answer's JSON must match to
# sit beside stored texts (a JPEG's metadata in a series' array).
compact_json = encode

# How metadata_text writes an instance-relative BulkDataURI. Stored headers never hold a
# BulkDataURI member (ingest drops bulk data), and inside a JSON string the quotes would be
# escaped, so in the text this only ever starts one of the URIs written by bulk_references.
_RELATIVE_BULK = '"BulkDataURI":"/bulk/'
_RELATIVE_BULK_UTF8 = _RELATIVE_BULK.encode()


# --- Writing ------------------------------------------------------------------------------


def pixel_header_of(header: dict[str, Any]) -> dict[str, Any]:
    """The PIXEL_HEADER_TAGS elements of a header in DICOM JSON."""
    return {tag: header[tag] for tag in PIXEL_HEADER_TAGS if tag in header}


def dicom_header(
    header: dict[str, Any], *, pixel_data: dict[str, Any], bulk_data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A parsed DICOM header as it will be stored: (image_metadata, pixel_data).

    `header` is the file's DICOM JSON without bulk data, `pixel_data` and `bulk_data` where
    the file's pixel data (with its frames) and other bulk elements lie ({} for none). The
    header comes back encoded (an EncodedJSON cut where metadata_text will put a BulkDataURI),
    the pixel data locations with the pixel description beside them.
    """
    bulk_tags = [*bulk_data, *([PIXEL_DATA] if pixel_data else [])]
    # The file's patient identity is held back: `columns` puts the EMR's in its place.
    encoded = EncodedJSON(header, cut_before=bulk_tags, hold=HELD_TAGS)
    if pixel_data:
        pixel_data = {**pixel_data, "header": pixel_header_of(encoded)}
    return encoded, pixel_data


def file_identity(parsed: ParsedImage) -> FileIdentity:
    """The patient identity elements the parsed file has (held back from its stored header)."""
    header = parsed.metadata
    if isinstance(header, EncodedJSON):
        return FileIdentity(dict(header.held))
    return FileIdentity({tag: header[tag] for tag in HELD_TAGS if tag in header})


def columns(parsed: ParsedImage, declared: DeclaredImage, *, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The header columns of a new image row of this parsed file: RadiologyImage(**columns(...)).

    A DICOM file's header is its DICOM JSON, with `identity` (patient_identity.served_members:
    the EMR's patient attributes, and the file's differing ones as Original Attributes) in
    place of the file's own, so every reader of the stored header sees the EMR's identity; a
    JPEG's is its EXIF and size plus how it was made (ConversionType DF for a photographed
    film, SI for a screen capture).
    """
    is_dicom = parsed.mime_type == DICOM_MIME_TYPE
    if is_dicom:
        header = parsed.metadata
        if isinstance(header, EncodedJSON):
            # Without an identity (no study to take it from), the file's own goes back in place.
            header = header.filled(identity if identity is not None else header.held)
        elif identity is not None:
            header = with_identity(header, identity)
    else:
        header = {**parsed.metadata, "conversion_type": "DF" if declared.photographed_film else "SI"}
    return {
        "image_metadata": header,
        "pixel_data": parsed.pixel_data,
        "bulk_data": parsed.bulk_data,
        "metadata_text": _metadata_text(is_dicom, header, parsed.pixel_data, parsed.bulk_data),
    }


def with_identity(header: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """A DICOM header (a plain dict) with `identity` in place of its own patient identity."""
    kept = {tag: element for tag, element in header.items() if tag not in HELD_TAGS}
    return dict(sorted({**kept, **identity}.items()))


def dicom_metadata_text(header: dict[str, Any], pixel_data: dict[str, Any], bulk_data: dict[str, Any]) -> str:
    """The metadata_text of a DICOM header with these bulk data locations (migration 0013 rewrites with it)."""
    return _metadata_text(True, header, pixel_data, bulk_data)


def metadata_text(image: RadiologyImage) -> str:
    """The metadata_text this image's row has (or, for a row stored before migration 0006, had
    written for it): its WADO-RS metadata as compact JSON, BulkDataURIs relative; "" for a JPEG."""
    return _metadata_text(image.is_dicom, image.image_metadata, image.pixel_data, image.bulk_data)


def _metadata_text(
    is_dicom: bool, header: dict[str, Any], pixel_data: dict[str, Any], bulk_data: dict[str, Any]
) -> str:
    if not is_dicom:
        return ""
    references = _bulk_references(pixel_data, bulk_data, "")
    if isinstance(header, EncodedJSON):  # just parsed: its text with the references put in
        text = header.spliced({tag: encode(reference) for tag, reference in references.items()})
        if text is not None:
            return text
    return encode(_with_references(header, references))


# --- Reading ------------------------------------------------------------------------------


def bulk_references(image: RadiologyImage, instance_url: str) -> dict[str, Any]:
    """The BulkDataURI attributes of an image's bulk data and pixel data, under `instance_url`."""
    return _bulk_references(image.pixel_data, image.bulk_data, instance_url)


def _bulk_references(pixel_data: dict[str, Any], bulk_data: dict[str, Any], instance_url: str) -> dict[str, Any]:
    references = {
        tag: {"vr": location["vr"], "BulkDataURI": f"{instance_url}/bulk/{tag}"}
        for tag, location in (bulk_data or {}).items()
    }
    if pixel_data:
        references[PIXEL_DATA] = {"vr": pixel_data.get("vr", "OB"), "BulkDataURI": f"{instance_url}/bulk/{PIXEL_DATA}"}
    return references


def _with_references(header: dict[str, Any], references: dict[str, Any]) -> dict[str, Any]:
    metadata = dict(header)
    metadata.update(references)
    return dict(sorted(metadata.items()))


def header_elements(image: RadiologyImage) -> dict[str, Any]:
    """A DICOM image's stored header elements as DICOM JSON (bulk data left out at ingest);
    {} for a JPEG, whose stored header describes the photo, not DICOM elements (QIDO's
    includefield answers from this)."""
    return image.image_metadata if image.is_dicom else {}


def instance_header(image: RadiologyImage, *, instance_url: str) -> dict[str, Any]:
    """A DICOM instance's full WADO-RS metadata, in tag order, bulk data as BulkDataURIs under
    `instance_url` (never inline). Loads the whole header: for many instances, stored_texts."""
    return _with_references(image.image_metadata, bulk_references(image, instance_url))


def stored_texts(
    images: QuerySet[RadiologyImage], *, instance_url: Callable[[str, str], str]
) -> Iterator[tuple[int, bytes | None]]:
    """(pk, WADO-RS metadata text in UTF-8) of each image in the queryset's order, in one query.

    The text is the one written at ingest, its relative BulkDataURIs made absolute with
    `instance_url(series_uid, image_uid)`; None for an image without one (a JPEG: the caller
    builds its metadata). Parsing kilobytes of stored JSON per instance into Python and dumping
    it again was most of the cost of a series' metadata (and PostgreSQL's jsonb to text, most
    of what remained); the text stays the bytes the database sent (fastpaths/utf8_rows.py).
    """
    for pk, image_uid, series_uid, text in utf8_values(
        images, "pk", "image_uid", "series__series_uid", "metadata_text"
    ):
        if not text:
            yield pk, None
            continue
        absolute = json.dumps(f"{instance_url(series_uid.decode(), image_uid.decode())}/bulk/")[:-1]
        yield pk, text.replace(_RELATIVE_BULK_UTF8, b'"BulkDataURI":' + absolute.encode())


def served_identity(image: RadiologyImage) -> dict[str, Any]:
    """A DICOM image's patient identity as every reader is shown it (DICOM JSON): the EMR's
    patient attributes and the Original Attributes Sequence with the file's differing values,
    exactly as its WADO-RS metadata has them. {} for a JPEG (its metadata takes them from the study).
    Read once per instance; with the header deferred, only these members are read."""
    if not image.is_dicom:
        return {}
    memo: dict[str, Any] | None = image.__dict__.get("_served_identity")
    if memo is not None:
        return memo
    if image.pk is None or HEADER_COLUMN not in image.get_deferred_fields():  # loaded (or never saved)
        header = image.image_metadata
    else:  # picked by the database rather than the whole header loaded (as pixel_header does)
        picked = select_json_members(image, HEADER_COLUMN, HELD_TAGS)
        header = image.image_metadata if picked is None else picked
    identity = {tag: header[tag] for tag in HELD_TAGS if tag in header}
    image.__dict__["_served_identity"] = identity
    return identity


def pixel_header(image: RadiologyImage) -> dict[str, Any]:
    """The image's PIXEL_HEADER_TAGS elements (DICOM JSON), read once per instance.

    From pixel_data["header"], loaded with the image row, when it is there (every row since
    migration 0008); else from the header if it is loaded; else picked from the stored header
    by the database (fastpaths/json_members.py), since views load images with the header
    deferred; on a database that has no SQL for that, by loading the header.
    """
    memo: dict[str, Any] | None = image.__dict__.get("_pixel_header")
    if memo is not None:
        return memo
    kept = (image.pixel_data or {}).get("header")
    if kept is not None:
        header: dict[str, Any] = kept
    elif image.pk is None or HEADER_COLUMN not in image.get_deferred_fields():  # loaded (or never saved)
        header = image.image_metadata
    else:
        picked = select_json_members(image, HEADER_COLUMN, PIXEL_HEADER_TAGS)
        header = image.image_metadata if picked is None else picked
    image.__dict__["_pixel_header"] = header
    return header


def pixel_value(image: RadiologyImage, tag: str, default: Any = None) -> Any:
    """The first value of one PIXEL_HEADER_TAGS element (`default` when absent or empty)."""
    values = (pixel_header(image).get(tag) or {}).get("Value") or []
    return values[0] if values else default


def photo_is_colour(image: RadiologyImage) -> bool:
    """Whether a stored JPEG is in colour (RGB) rather than greyscale, as its header says."""
    return image.image_metadata.get("mode", "RGB") != "L"


def photo_conversion_type(image: RadiologyImage) -> str:
    """A stored JPEG's ConversionType: DF (a photographed film) or SI (a screen capture)."""
    return image.image_metadata.get("conversion_type", "SI")
