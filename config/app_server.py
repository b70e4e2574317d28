"""Serve PACS-lite's WSGI application with granian: `make run`, the systemd unit and docker-compose.

    python -m config.app_server --bind 127.0.0.1:8000
    python -m config.app_server --uds var/run/api-0.sock --workers 1     (make run, behind nginx)

Started by deploy/supervisord.conf (`make run`, the systemd unit) and by docker-compose.yml's
`app` service, so a clinic gets the server the benchmarks measured (bench/compare_orthanc.py,
bench/compare_app_servers.py) without reading anything. Only the address (and, for `make run`,
the worker count) is a flag; the rest is here, with PACS_WEB_WORKERS, PACS_WEB_THREADS and
PACS_ACCESS_LOG from the environment.

Why granian (a Rust HTTP server with a WSGI interface) and not gunicorn, which served until
issue 19: under wrk, with the study's viewer token, a frame cost the workers 1.70-1.89 ms of
CPU in gunicorn's gthread workers against 1.32-1.33 ms in granian, the same application,
environment and database (`make bench-app-servers`), and granian answered 1.27-1.45x the
frames and 1.41-1.51x the rendered images. gunicorn parses HTTP and hands each connection
between threads in Python, under the GIL the application needs; granian does both in Rust.
What the application relies on, checked with granian 2.8.7:
- a chunked request body (Orthanc's STOW-RS) is streamed to wsgi.input, read to its end, and
  wsgi.input_terminated is set (apps/radiology/ingest/request_streams.py); a 400 MB body,
  chunked or not, kept the worker at ~38 MiB RSS;
- a response iterator (a frame, a whole file) is sent as it is read, and a slow reader holds it
  back rather than have it buffered;
- it binds one address, and its workers share one listening socket, each accepting connections
  whether it is busy or not. So `make run` runs PACS_WEB_WORKERS of it with one worker each, on
  unix sockets, and nginx in front hands requests to the least busy (config/front_proxy.py says
  what a shared socket cost), on the API's port and on the viewer's.
Where it differs, and what makes up for it:
- each request's environ starts from the process's environment: config/request_environ.py takes
  it out again (DATABASE_URL and the S3 credentials would be in request.META);
- an answer given before the request body was read closes the connection without saying so:
  config/unread_body.py says it (Connection: close);
- a response iterator that raises midway ends the chunked body cleanly where gunicorn broke the
  connection off: a multipart answer then lacks only its closing boundary. DICOMweb checks
  every stored file is there and whole, and prepares the first part, before its status line
  (apps/radiology/dicomweb/views.py), so that happens only if storage fails during the answer.

Why these values:
- one worker process per usable core (under `make run`: one app server per core, of one worker
  each): a worker's Python runs one thread at a time (the GIL), so a worker is at most one busy
  core; on 2 cores a third one added no throughput, only waiting.
- four blocking threads per worker, the threads that run the application: a request waiting on
  the disk, PostgreSQL or a slow client's upload does not hold up its worker's other requests.
- a worker that dies is started again (respawn_failed_workers) rather than the whole server
  stopping; supervisord restarts the server itself if it exits.
- on SIGTERM (Ctrl-C, `systemctl stop`, docker stop) requests in flight get 20 s to end
  (workers_kill_timeout); deploy/supervisord.conf waits 25 s before it kills what is left.
- no line per request by default (PACS_ACCESS_LOG=1 prints them, path without query string;
  PACS_ACCESS_LOG_FORMAT takes granian's fields, `%(query_string)s`, `%(header{referer})s`):
  the audit trail already records every request for clinical data, and a line per frame was a
  tenth of a worker's time under load. Every log line granian writes, whatever the format, goes
  through the same redaction filter as Django's (config/log_redaction.py).
- HTTP/1.1 only: no client of PACS-lite speaks cleartext HTTP/2 (h2c), and HTTPS ends at the
  clinic's TLS proxy (docs/security.md).
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

from config.env import env_bool, env_int, env_str, usable_cores

# The request line granian logs with PACS_ACCESS_LOG=1: path without its query string, where
# viewer links and signed image URLs carry their token.
ACCESS_LOG_FORMAT = '%(addr)s "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).1fms'
# Seconds a request in flight gets to end on SIGTERM (deploy/supervisord.conf's stopwaitsecs is 25).
GRACE_SECONDS = 20


def listen_address(host: str, port: int) -> str:
    """The IP address to bind for `host`: granian takes addresses only, and HOST may be a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])


def parse_bind(bind: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"."""
    host, separator, port = bind.rpartition(":")
    if not separator or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


def logging_config() -> dict[str, Any]:
    """granian's own logging configuration with the redaction filter on both of its handlers."""
    from granian.log import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact_secrets": {"()": "config.log_redaction.RedactSecrets"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_secrets"]
    return config


def claim_socket(path: Path) -> None:
    """Make way for a new unix socket at `path`: remove one left by an app server that was killed
    (nothing accepts on it), refuse to start while a live one listens there."""
    if not path.exists():
        return
    if not path.is_socket():
        sys.exit(f"{path} exists and is not a socket: not replacing it.")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # a dead server's socket: granian cannot bind over it
            return
    sys.exit(f"An app server already listens on {path}: is PACS-lite already running?")


def build_server(host: str, port: int, *, uds: Path | None = None, workers: int | None = None) -> Any:
    """The granian server for PACS-lite's WSGI application on host:port (or the unix socket
    `uds`, 0600), configured as above; `workers` worker processes (default PACS_WEB_WORKERS)."""
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    where: dict[str, Any] = (
        {"uds": uds, "uds_permissions": 0o600}
        if uds is not None
        else {"address": listen_address(host, port), "port": port}
    )
    return Server(
        "config.wsgi:application",
        **where,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=workers or env_int("PACS_WEB_WORKERS", usable_cores(), minimum=1),
        blocking_threads=env_int("PACS_WEB_THREADS", 4, minimum=1),
        respawn_failed_workers=True,
        workers_kill_timeout=GRACE_SECONDS,
        log_level=LogLevels.warning,
        log_dictconfig=logging_config(),
        log_access=env_bool("PACS_ACCESS_LOG", False),
        log_access_format=env_str("PACS_ACCESS_LOG_FORMAT", "") or ACCESS_LOG_FORMAT,
        process_name="pacs-api",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bind", type=parse_bind, metavar="HOST:PORT")
    where.add_argument("--uds", type=Path, metavar="PATH", help="a unix socket (make run's, behind nginx)")
    parser.add_argument("--workers", type=int, help="worker processes (default: PACS_WEB_WORKERS, else one per core)")
    arguments = parser.parse_args(argv)
    if arguments.uds is not None:
        claim_socket(arguments.uds)
        build_server("", 0, uds=arguments.uds, workers=arguments.workers).serve()
        return
    host, port = arguments.bind
    build_server(host, port, workers=arguments.workers).serve()


if __name__ == "__main__":
    main()
