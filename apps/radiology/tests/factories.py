"""Helpers of the radiology tests: what is in the store, what is in the database, sample bytes.

`stored_keys()` lists every object in STORAGES["radiology"] whichever backend is configured
(a directory walk on the filesystem, list_objects_v2 on S3/moto), so a test can say
"nothing was written" the same way on both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from apps.radiology import storage
from apps.radiology.imagefiles.patient_identity import (
    HELD_TAGS,
    ORIGINAL_ATTRIBUTES,
    EmrIdentity,
    FileIdentity,
    served_members,
)
from apps.radiology.models import RadiologyImage, RadiologySeries, RadiologyStudy
from apps.radiology.operations.demo import relabelled_dicom, sample_path

BULK_THRESHOLD = 1024
PIXEL_DATA_TAG = "7FE00010"


def stored_keys() -> list[str]:
    """Every key in the radiology store, sorted."""
    store: Any = storage.radiology_storage()
    if storage.is_s3(store):
        client = store.connection.meta.client
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket_name):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)
    root = Path(store.location)
    if not root.exists():
        return []
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def read_stored(key: str) -> bytes:
    """The bytes of one stored object, read back through the storage backend."""
    with storage.radiology_storage().open(key, "rb") as handle:
        return bytes(handle.read())


def row_counts() -> tuple[int, int, int]:
    """(studies, series, images) rows in the database."""
    return RadiologyStudy.objects.count(), RadiologySeries.objects.count(), RadiologyImage.objects.count()


def assert_nothing_stored() -> None:
    """No study, series or image row and no object in the store."""
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def sample_bytes(name: str) -> bytes:
    """The bytes of one of pydicom's bundled test files."""
    return sample_path(name).read_bytes()


def dataset_bytes(dataset: Dataset, *, enforce_file_format: bool = True) -> bytes:
    """A DICOM Part 10 file (with preamble) of `dataset`.

    enforce_file_format=False writes the file meta as it is, so a test can make a file
    that lacks what the standard requires (e.g. every SOP Instance UID).
    """
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=enforce_file_format)
    return buffer.getvalue()


def _edit(dataset: Dataset, changes: dict[str, Any]) -> Dataset:
    """Set elements by keyword (value) or remove them (None)."""
    for keyword, value in changes.items():
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    return dataset


def edited_sample(name: str, **changes: Any) -> bytes:
    """A pydicom sample with some elements set (value) or removed (None), nothing else changed."""
    return dataset_bytes(_edit(pydicom.dcmread(sample_path(name)), changes))


def edited(content: bytes, **changes: Any) -> bytes:
    """DICOM bytes with some elements set (value) or removed (None), nothing else changed."""
    return dataset_bytes(_edit(pydicom.dcmread(io.BytesIO(content)), changes))


def relabelled(name: str, *, study_uid: str, series_uid: str, instance_number: int = 1, **changes: Any) -> bytes:
    """A pydicom sample moved into a study and series under a new SOP Instance UID (the demo
    seeder's relabelled_dicom), other elements set or removed by keyword; everything else, pixel
    data included, exactly as in the sample. The one relabelling helper of the tests."""
    content = relabelled_dicom(name, study_uid=study_uid, series_uid=series_uid, instance_number=instance_number)
    return edited(content, **changes) if changes else content


def pydicom_json_without_bulk(path: Path) -> dict[str, Any]:
    """pydicom's own DICOM JSON of a file read whole, with bulk data left out.

    Bulk data: binary values over 1 KiB anywhere, and the pixel data whatever its size.
    """
    dataset = pydicom.dcmread(path)

    def mark(_element: Any) -> str:
        return "bulk"

    as_json = dataset.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=mark)
    as_json.pop(PIXEL_DATA_TAG, None)
    # Data Set Trailing Padding follows the pixel data and "shall have no meaning" (PS3.5 7.2).
    as_json.pop("FFFCFFFC", None)
    return _without_bulk(as_json)


def _without_bulk(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _without_bulk(value)
            for key, value in node.items()
            if not (isinstance(value, dict) and value.get("BulkDataURI") == "bulk")
        }
    if isinstance(node, list):
        return [_without_bulk(item) for item in node]
    return node


def identity_modified_at(header: dict[str, Any]) -> dt.datetime:
    """When ingest gave a stored header the EMR's identity (its Original Attributes item's time)."""
    stamp = header[ORIGINAL_ATTRIBUTES]["Value"][-1]["04000562"]["Value"][0]
    return dt.datetime.strptime(stamp, "%Y%m%d%H%M%S.%f%z")


def served_json(file_json: dict[str, Any], study: RadiologyStudy, stored_header: dict[str, Any]) -> dict[str, Any]:
    """What PACS-lite serves of a file's DICOM JSON once stored in `study`: the study's (the EMR's)
    patient identity in the file's place, and the file's differing values as Original Attributes,
    stamped with the time read from `stored_header` (the one value a test cannot know beforehand)."""
    file_identity = FileIdentity({tag: file_json[tag] for tag in HELD_TAGS if tag in file_json})
    emr = EmrIdentity.of_study(study)
    at = identity_modified_at(stored_header) if ORIGINAL_ATTRIBUTES in stored_header else dt.datetime.now(dt.UTC)
    kept = {tag: element for tag, element in file_json.items() if tag not in HELD_TAGS}
    return dict(sorted({**kept, **served_members(file_identity, emr, at=at)}.items()))
