"""DICOM UID validation and generation.

A UID is what DICOM tools and viewers address objects by, so PACS-lite only stores UIDs
that are valid under PS3.5 9.1: components of digits separated by dots, no empty
component, no leading zero in a multi-digit component, at most 64 characters.
Objects without a UID of their own (JPEG photos) get a UUID-derived UID, `2.25.<uuid as
integer>` (PS3.5 B.2), which any DICOM tool accepts.
"""

from __future__ import annotations

import re
import uuid

from apps.radiology.errors import InvalidUID

# PS3.5 9.1; the same rule as pydicom's UID.is_valid, written out so the error can name it.
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """Tell whether `value` is a syntactically valid DICOM UID."""
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and _UID_PATTERN.fullmatch(value) is not None


def validate_uid(value: object, *, field: str = "uid") -> str:
    """Return `value` if it is a valid UID, else raise InvalidUID naming the field."""
    if not is_valid_uid(value):
        raise InvalidUID(f"{field} is not a valid DICOM UID (digits and dots, no zero-led component, max 64).")
    return str(value)


def generate_uid() -> str:
    """Make a new globally unique UID of the form 2.25.<uuid4 as a decimal integer>."""
    return f"2.25.{uuid.uuid4().int}"


# Namespace of PACS-lite's name-based UIDs (a fixed random UUID; never change it).
_NAME_NAMESPACE = uuid.UUID("6f1c3c52-8f0e-4d0c-9a51-2b7d5c1e9a40")


def uid_from_name(name: str) -> str:
    """A UID derived from a name (2.25.<uuid5 as integer>): the same name always gives the same UID.

    Used for JPEGs, which carry no UIDs: deriving them from the order and the bytes makes a
    retried or duplicated upload of the same photo land on the same image, not a second one.
    """
    return f"2.25.{uuid.uuid5(_NAME_NAMESPACE, name).int}"
