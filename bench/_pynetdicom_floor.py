"""pynetdicom with handlers that do no work: how fast any pynetdicom-based SCP can be on this machine.

bench/compare_dimse.py runs it beside PACS-lite's listener and Orthanc, on the same files and
clients, so the table shows how much of the gap to Orthanc is pynetdicom's own (its PDU and DIMSE
handling in Python, two threads per association polling every millisecond) and how much is
PACS-lite's work (parse, checks, fsync, commit, audit). Not a server: nothing is kept.

- C-STORE: pynetdicom writes each received dataset to a temporary file, as it does for the
  listener (STORE_RECV_CHUNKED_DATASET); the handler answers success and the file is removed.
- C-FIND: answers a fixed identifier with the keys a study list asks for, --wildcard-matches
  times for a query with a wildcard, once otherwise (what the benchmark's two queries find on
  the real servers).
- C-GET: sends the instances of --get-dir, read into memory once at start (the cheapest way
  pynetdicom sends: no file read during the retrieve).

Usage: python bench/_pynetdicom_floor.py --port P --ae-title PACSLITE --get-dir DIR --wildcard-matches N
Prints "ready" once listening; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, _config, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)


def study_match() -> Dataset:
    """One study-level match with the keys compare_dimse.py asks for (STUDY_RETURN_KEYS)."""
    match = Dataset()
    attributes = {
        "QueryRetrieveLevel": "STUDY",
        "PatientName": "Okeke^Adaeze",
        "PatientID": "BENCH-0001",
        "PatientBirthDate": "19800101",
        "PatientSex": "F",
        "StudyDate": "20261207",
        "StudyTime": "101500",
        "AccessionNumber": "ACC-BENCH-0001",
        "StudyDescription": "CT Head without contrast",
        "ModalitiesInStudy": "CT",
        "NumberOfStudyRelatedSeries": "5",
        "NumberOfStudyRelatedInstances": "500",
        "StudyInstanceUID": "2.25.1234567890123456789012345678901234567",
    }
    for keyword, value in attributes.items():
        setattr(match, keyword, value)
    return match


STUDY_MATCH = study_match()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ae-title", default="PACSLITE")
    parser.add_argument("--get-dir", type=Path, required=True)
    parser.add_argument("--wildcard-matches", type=int, default=15)
    arguments = parser.parse_args()
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    to_send = [pydicom.dcmread(path) for path in sorted(arguments.get_dir.iterdir())]

    def handle_store(event: evt.Event) -> int:
        return 0x0000

    def handle_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        wildcard = any("*" in str(element.value) for element in query if isinstance(element.value, str))
        for _ in range(arguments.wildcard_matches if wildcard else 1):
            yield 0xFF00, STUDY_MATCH

    def handle_get(event: evt.Event) -> Iterator[Any]:
        yield len(to_send)
        for dataset in to_send:
            yield 0xFF00, dataset

    ae = AE(ae_title=arguments.ae_title)
    for context in VerificationPresentationContexts:
        ae.add_supported_context(context.abstract_syntax)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, scu_role=True, scp_role=True)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    handlers = [(evt.EVT_C_STORE, handle_store), (evt.EVT_C_FIND, handle_find), (evt.EVT_C_GET, handle_get)]
    server = ae.start_server(("127.0.0.1", arguments.port), block=False, evt_handlers=handlers)
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the listener does
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
