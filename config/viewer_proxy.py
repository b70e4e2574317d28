"""nginx on `make run`'s viewer origin: writes its configuration under PACS_VAR_DIR and becomes it.

    python -m config.viewer_proxy     (deploy/supervisord.conf's `viewer` program)

The viewer's origin (PACS_VIEWER_BIND, VIEWER_PORT) is a second origin for OHIF and the lite
viewer, so a page there cannot reach the REST API, the admin or the token endpoint (issue 14).
The app server (config/app_server.py, granian) binds one address, the API's, so the viewer's
port is this nginx: it passes every request to the app server with `X-PACS-Viewer-Origin: 1`,
and config/viewer_origin.py routes it with config.viewer_urls. docker-compose has the same
layout (deploy/nginx.conf), where nginx serves the OHIF dist itself; here the app serves it as
it did before (config.viewer_urls), so the two ports answer exactly as they did with one server.

Why nginx (Debian's nginx-light, installed by `make run`) and not a second app server on that
port: a second pool of granian workers would be ~100 MiB each, over issue 19's memory budget,
or half the viewer's capacity. nginx is ~5 MiB, and keeps a few connections to the app server
alive (`keepalive`).

What it does not do, on purpose:
- log query strings: viewer links and signed image URLs carry their token there. No access log
  unless PACS_ACCESS_LOG=1, then path only, as the app server's; only critical errors, since
  nginx writes the whole request line into error messages ("upstream ... request: GET ...?token=").
- keep patient data on disk: a response larger than its memory buffers is passed on as the
  client reads it (proxy_max_temp_file_size 0), and a request body is passed on as it arrives
  (proxy_request_buffering off), never written to nginx's temporary files.
- trust a client's X-PACS-Viewer-Origin or X-Forwarded-For: it sets the first and appends the
  client's address to the second; the audit trail takes that last hop only from a request that
  carries RADIOLOGY_VIEWER_PROXY_KEY (a new one at every start of scripts/serve.sh) in
  X-PACS-Proxy-Key, which nginx sets on every request it passes on, whatever the client sent.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from config.app_server import parse_bind
from config.env import env_bool, env_str

# Seconds: as long as the app server gives a request (a slow link's upload or download).
PROXY_TIMEOUT_SECONDS = 300
# Connections to the app server kept alive per nginx worker: a reading room's viewers reuse them.
UPSTREAM_KEEPALIVE = 32
# Seconds an idle one is kept: less than the app server's 30 s (granian closes a connection idle
# that long), so nginx never sends a request on one the app server is closing (a 502).
UPSTREAM_KEEPALIVE_SECONDS = 20
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")


def _host_port(host: str, port: int) -> str:
    """host:port as nginx reads it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def upstream_of(api_bind: str) -> str:
    """Where nginx reaches the app server: its address, or loopback when it listens on every one."""
    host, port = parse_bind(api_bind)
    if host in ("0.0.0.0", ""):  # noqa: S104 (the app server's wildcard, not a bind of ours)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return _host_port(host, port)


def _quoted(value: str | Path) -> str:
    """A value as an nginx string: a var directory with a space in its path is still one argument."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(*, viewer_bind: str, api_bind: str, work_dir: Path, access_log: bool, proxy_key: str) -> str:
    """nginx.conf for the viewer's origin on viewer_bind, in front of the app server on api_bind."""
    host, port = parse_bind(viewer_bind)
    listen = _host_port(host, port)
    if host == "::":
        listen += " ipv6only=off"  # every address, IPv4 too, as HOST=:: means for the API's port
    access = "access_log /dev/stdout pacs_no_secrets;" if access_log else "access_log off;"
    return f"""# Written by config/viewer_proxy.py at every start; edits are lost. See its docstring.
daemon off;
worker_processes 1;
pid {_quoted(work_dir / "nginx.pid")};
error_log stderr crit;

events {{
    worker_connections 1024;
}}

http {{
    log_format pacs_no_secrets '$remote_addr [$time_local] "$request_method $uri $server_protocol" '
                               '$status $body_bytes_sent $request_time';
    {access}
    client_body_temp_path {_quoted(work_dir / "client_body")};
    proxy_temp_path {_quoted(work_dir / "proxy")};
    fastcgi_temp_path {_quoted(work_dir / "fastcgi")};
    uwsgi_temp_path {_quoted(work_dir / "uwsgi")};
    scgi_temp_path {_quoted(work_dir / "scgi")};
    server_tokens off;

    # The scheme the browser used: a TLS proxy in front says so (trusted by the app only with
    # PACS_BEHIND_TLS_PROXY=1); otherwise plain HTTP.
    map $http_x_forwarded_proto $pacs_forwarded_proto {{
        default $http_x_forwarded_proto;
        "" $scheme;
    }}

    upstream pacs_app {{
        server {upstream_of(api_bind)};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_timeout {UPSTREAM_KEEPALIVE_SECONDS}s;
    }}

    server {{
        listen {listen};
        server_name _;
        # Uploads are not the viewer's, but DICOMweb's routes are the same here (2 GB, as the API's).
        client_max_body_size 2g;

        location / {{
            proxy_pass http://pacs_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $pacs_forwarded_proto;
            proxy_set_header X-PACS-Viewer-Origin 1;
            proxy_set_header X-PACS-Proxy-Key {_quoted(proxy_key)};
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            proxy_read_timeout {PROXY_TIMEOUT_SECONDS}s;
            proxy_send_timeout {PROXY_TIMEOUT_SECONDS}s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), None)


def main() -> None:
    nginx = nginx_binary()
    if nginx is None:
        sys.exit("nginx is needed for the viewer's origin: `make run` installs Debian's nginx-light (apt-get).")
    viewer_bind, api_bind, var_dir, proxy_key = (
        env_str("PACS_VIEWER_BIND"),
        env_str("PACS_API_BIND"),
        env_str("PACS_VAR_DIR"),
        env_str("RADIOLOGY_VIEWER_PROXY_KEY"),
    )
    if not (viewer_bind and api_bind and var_dir and proxy_key):
        sys.exit(
            "PACS_VIEWER_BIND, PACS_API_BIND, PACS_VAR_DIR and RADIOLOGY_VIEWER_PROXY_KEY are set by "
            "scripts/serve.sh: run it."
        )
    work_dir = Path(var_dir).resolve() / "nginx"
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work_dir / name).mkdir(parents=True, exist_ok=True)
    config = work_dir / "viewer.conf"
    # 0600 from the start: it holds the proxy key.
    config.unlink(missing_ok=True)
    with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as written:
        written.write(
            render(
                viewer_bind=viewer_bind,
                api_bind=api_bind,
                work_dir=work_dir,
                access_log=env_bool("PACS_ACCESS_LOG", False),
                proxy_key=proxy_key,
            )
        )
    # -e: nginx opens its compiled-in error log (/var/log/nginx, root's) before it reads any
    # configuration unless told otherwise.
    os.execv(nginx, [nginx, "-p", str(work_dir), "-c", str(config), "-e", "stderr"])  # noqa: S606


if __name__ == "__main__":
    main()
