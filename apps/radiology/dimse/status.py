"""What every DIMSE handler reads from an identifier and answers with, written once.

- `status_dataset`: a status with its Error Comment (ErrorComment is LO: at most 64 characters);
  pynetdicom sends a status Dataset's elements as given.
- `element_values`: an identifier element's values as text (a UID list has several), empty ones left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

ERROR_COMMENT_LENGTH = 64  # ErrorComment is LO


def status_dataset(status: int, comment: str = "") -> Dataset:
    answer = Dataset()
    answer.Status = status
    if comment:
        answer.ErrorComment = comment[:ERROR_COMMENT_LENGTH]
    return answer


def element_values(element: DataElement | None) -> list[str]:
    raw = element.value if element is not None else None
    if raw is None:
        return []
    items: Iterable[Any] = raw if isinstance(raw, MultiValue | list | tuple) else [raw]
    return [text for item in items if (text := str(item).strip()) != ""]
