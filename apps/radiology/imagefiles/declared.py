"""What a client says about an image besides its bytes: the one place its fields are listed.

`DeclaredImage` names each field once, with how it is stored and checked (a `Declared` in
the field's metadata). Everything else is derived from it, so a field added here reaches
every step (only the migration for its new column is left to write):
- the upload model's columns (`models.DeclaredImageColumns`), which keep what a device
  declared until its bytes are in;
- the upload serializer's fields (`upload_serializers.UploadCreateSerializer`);
- the conversions between a DeclaredImage and those column values (`from_columns`,
  `from_row`, `columns`), which upload sync uses on the way in and on the way to ingest;
- ingest itself (`ingest.pipeline.ingest_image(declared=...)`), which reads the dataclass.

Imports only the standard library and uids.py, so that models.py can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from apps.radiology.imagefiles.uids import MAX_UID_LENGTH

# Series and instance numbers go to 32-bit integer columns (DICOM IS is 32-bit too): a larger
# value must be refused when declared (a 400), not as out of range by the database (a 500).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

Kind = Literal["uid", "text", "int32", "flag"]
# What "not declared" is for each kind, in a DeclaredImage. A column keeps a missing UID as
# "" (a blank CharField), the dataclass as None.
_NOT_DECLARED: dict[Kind, Any] = {"uid": None, "text": "", "int32": None, "flag": False}


@dataclass(frozen=True)
class Declared:
    """How one declared field is stored and checked: its kind, longest text, and help."""

    kind: Kind
    max_length: int | None = None
    help_text: str = ""


def _declared(kind: Kind, max_length: int | None = None, help_text: str = "") -> Any:
    return field(default=_NOT_DECLARED[kind], metadata={"declared": Declared(kind, max_length, help_text)})


@dataclass(frozen=True)
class DeclaredImage:
    """What a client says about an image besides its bytes.

    For DICOM every UID given here must agree with the file's header; for a JPEG (which
    has none) the UIDs given are used and the missing ones generated.
    """

    study_uid: str | None = _declared("uid", MAX_UID_LENGTH)
    series_uid: str | None = _declared("uid", MAX_UID_LENGTH)
    image_uid: str | None = _declared("uid", MAX_UID_LENGTH)
    study_description: str = _declared("text", 255)
    series_description: str = _declared("text", 255)
    series_number: int | None = _declared("int32")
    instance_number: int | None = _declared("int32")
    modality: str = _declared("text", 16)
    photographed_film: bool = _declared(
        "flag",
        help_text='A JPEG that is a photograph of a film (ConversionType "DF"), not a screen capture ("SI").',
    )

    @classmethod
    def from_columns(cls, values: Mapping[str, Any]) -> DeclaredImage:
        """From column values (an upload's, or the serializer's validated data); a blank UID is none.

        Keys other than the declared fields are ignored.
        """
        return cls(
            **{
                name: (values[name] or None) if spec.kind == "uid" else values[name]
                for name, spec in DECLARED_FIELDS.items()
            }
        )

    @classmethod
    def from_row(cls, row: object) -> DeclaredImage:
        """From an object with one attribute per declared field (a RadiologyUpload)."""
        return cls.from_columns({name: getattr(row, name) for name in DECLARED_FIELDS})

    def columns(self) -> dict[str, Any]:
        """The column values of an upload row: a missing UID is stored blank."""
        values = {name: getattr(self, name) for name in DECLARED_FIELDS}
        return {
            name: "" if value is None and DECLARED_FIELDS[name].kind == "uid" else value
            for name, value in values.items()
        }


# Each declared field's name and how it is stored and checked, in the order defined above.
DECLARED_FIELDS: Mapping[str, Declared] = MappingProxyType(
    {each.name: each.metadata["declared"] for each in fields(DeclaredImage)}
)
