"""What an install holds and answers, as JSON: run inside an install by the backup tests.

`manage.py shell -c "from apps.radiology.tests.operations.install_probe import dump; dump(PATH)"`
writes every row (dumpdata) and every stored object's SHA-256; `answers(PATH)` the REST API's
and DICOMweb's answers to the demo doctor and radiology tech, with signed links and tokens
masked (they are signed with the time and the secret key, not restored data). The tests
compare the files of the original install and of the restored one.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.test import Client

from apps.radiology import storage
from apps.radiology.operations.backup import STORE_PREFIXES

API = "/api/v1/radiology"
_SIGNED = re.compile(r"url|token|signature|expires", re.IGNORECASE)


def stored_objects() -> dict[str, dict[str, Any]]:
    objects = {}
    for prefix in STORE_PREFIXES:
        for key in storage.iter_keys(prefix):
            digest = hashlib.sha256()
            size = 0
            for chunk in storage.iter_object_chunks(key):
                digest.update(chunk)
                size += len(chunk)
            objects[key] = {"sha256": digest.hexdigest(), "size": size}
    return objects


def dump(path: str) -> None:
    rows = io.StringIO()
    call_command("dumpdata", "emr", "radiology", "auth.user", "auth.group", indent=1, stdout=rows)
    Path(path).write_text(json.dumps({"rows": json.loads(rows.getvalue()), "objects": stored_objects()}, indent=1))


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {name: _masked(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, key) for item in value]
    if isinstance(value, str) and _SIGNED.search(key):
        return "<signed>"
    return value


def _get_json(client: Client, token: str, url: str) -> Any:
    response = client.get(url, HTTP_AUTHORIZATION=f"Token {token}", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, (url, response.status_code)
    return _masked(json.loads(b"".join(response.streaming_content) if response.streaming else response.content))


def answers(path: str) -> None:
    client = Client(HTTP_HOST="localhost")  # an allowed host of the installs the tests make
    result: dict[str, Any] = {}
    for role in ("doctor", "radtech"):
        login = client.post(
            "/api/v1/auth/token/",
            {"username": role, "password": settings.DEMO_PASSWORD},
            content_type="application/json",
        )
        assert login.status_code == 200, login.content
        token = login.json()["token"]
        studies = _get_json(client, token, f"{API}/studies/")
        mine: dict[str, Any] = {"studies": studies}
        items = studies["results"] if isinstance(studies, dict) else studies
        for study in items:
            mine[f"study {study['id']}"] = _get_json(client, token, f"{API}/studies/{study['id']}/")
            mine[f"images {study['id']}"] = _get_json(client, token, f"{API}/studies/{study['id']}/images/")
        qido = _get_json(client, token, f"{API}/dicomweb/studies")
        mine["qido"] = qido
        for study in qido:
            uid = study["0020000D"]["Value"][0]
            mine[f"metadata {uid}"] = _get_json(client, token, f"{API}/dicomweb/studies/{uid}/metadata")
        result[role] = mine
    Path(path).write_text(json.dumps(result, indent=1, sort_keys=True))
