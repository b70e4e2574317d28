"""Keep the server's own environment variables out of every request's WSGI environ.

granian (config/app_server.py) starts each request's environ from a copy of the process's
environment (`dict(os.environ)`, granian/wsgi.py), as the CGI convention has it; gunicorn, which
served PACS-lite until issue 19, did not. That put DATABASE_URL with its password, the S3
credentials, the viewer proxy's key and the forwarding destinations' tokens into every
request.META: in an error report (Django's debug page hides only names with KEY, SECRET, PASS,
TOKEN in them: not DATABASE_URL), in anything that logs META.

What stays: the CGI variables the server sets for the request, the HTTP_* ones (the client's
headers; an HTTP_* variable of the process's own, HTTP_PROXY say, cannot be told apart from a
header of that name, so the header's meaning wins), and the lower-case wsgi.* and server keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# PEP 3333's request variables, and those servers commonly add: never dropped, whatever the
# process's environment holds.
REQUEST_VARIABLES = frozenset(
    {
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_PORT",
        "REMOTE_USER",
        "AUTH_TYPE",
        "GATEWAY_INTERFACE",
        "HTTPS",
        "RAW_URI",
        "REQUEST_URI",
    }
)


def without_process_environment(application: WSGIApp) -> WSGIApp:
    """`application`, called with the process's environment variables taken out of each environ."""
    inherited = tuple(name for name in os.environ if name not in REQUEST_VARIABLES and not name.startswith("HTTP_"))

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        for name in inherited:
            environ.pop(name, None)
        return application(environ, start_response)

    return wrapped
