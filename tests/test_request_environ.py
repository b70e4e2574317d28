"""config/request_environ.py: the server's environment variables never reach request.META.

granian starts each request's environ from the process's environment; the wrapper takes those
variables out again and leaves the request's own (CGI variables, the client's headers, wsgi.*).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from config.request_environ import without_process_environment


def test_the_process_environment_is_taken_out_and_the_request_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://pacs:secret@db/pacs")
    monkeypatch.setenv("RADIOLOGY_VIEWER_PROXY_KEY", "k3y")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.lan:3128")
    monkeypatch.setenv("SERVER_NAME", "from-the-process")
    seen: dict[str, Any] = {}

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.update(environ)
        return [b""]

    request = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/healthz",
        "SERVER_NAME": "127.0.0.1",
        "REMOTE_ADDR": "10.1.2.3",
        "HTTP_HOST": "pacs.lan",
        "HTTP_PROXY": "http://proxy.lan:3128",
        "wsgi.url_scheme": "http",
    }
    environ = {"DATABASE_URL": "postgres://pacs:secret@db/pacs", "RADIOLOGY_VIEWER_PROXY_KEY": "k3y", **request}

    assert list(without_process_environment(application)(environ, lambda *args: None)) == [b""]
    # The request's own variables stay, an HTTP_* one too (it cannot be told from a header).
    assert seen == request
