"""Reading only a DICOM stream's file meta information (group 0002), and nothing after it.

Why: the transfer syntax decides whether a file may be read at all (a deflated data set is
refused before anything inflates it, see imagefiles/dicom.py check_transfer_syntax), so it must
be read without touching the data set. pydicom's public `read_file_meta_info` takes only a path;
for an open stream (a STOW-RS part, a spooled upload) the same two steps are its private
`_read_file_meta_info` after the public `read_preamble`. Private API: `pydicom.filereader.
_read_file_meta_info(fp)`, checked against pydicom 3.0.2 (CHECKED_PYDICOM_VERSIONS of
dicom_json_fast; tests/fastpaths/test_private_api_versions.py guards its name and signature).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble


def file_meta_of(source: Path | IO[bytes]) -> FileMetaDataset:
    """The file meta of a Part 10 file or stream; a stream is left at its start."""
    if isinstance(source, Path):
        return read_file_meta_info(source)
    read_preamble(source, False)
    file_meta = _read_file_meta_info(source)
    source.seek(0)
    return file_meta
