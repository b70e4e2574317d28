"""nginx in front of `make run`'s app servers, on both its ports: writes its configuration under
PACS_VAR_DIR and becomes it.

    python -m config.front_proxy     (deploy/supervisord.conf's `proxy` program)

`make run` serves two origins: the API's (PACS_API_BIND, PORT) and the viewer's (PACS_VIEWER_BIND,
VIEWER_PORT), a second origin for OHIF and the lite viewer, so a page there cannot reach the REST
API, the admin or the token endpoint (issue 14). Both are this nginx. Behind it run
PACS_WEB_WORKERS app servers (config/app_server.py, granian), one worker each, on unix sockets in
PACS_SOCKET_DIR (`api-N.sock`); nginx passes each request to the one with the fewest requests in
flight (`least_conn`), and on the viewer's port marks it `X-PACS-Viewer-Origin: 1` so that
config/viewer_origin.py routes it with config.viewer_urls. docker-compose has the same layout
(deploy/nginx.conf), where nginx serves the OHIF dist itself; here the app serves it.

Why nginx balances, rather than one granian with a worker per core behind the API's port: granian's
workers share one listening socket and each takes whatever connection it accepts first, busy or
not. With four STOW-RS clients on 2 workers, all four connections went to one worker in three
runs of five (the other worker idle: 171-189 instances/s against 320-359 with the load shared;
issue 19's `/work` measurements, `make bench`'s 4-client row). A reading room's OHIF viewers keep
their connections open for the whole session, so such a split lasts. nginx hands out requests,
not connections: every worker gets work as long as there is any.

Why nginx and not a second pool of app workers for the viewer's port: a pool is ~100 MiB a
worker, over issue 19's memory budget. nginx is ~5 MiB, and keeps connections to the app servers
alive (`keepalive`).

What it does not do, on purpose:
- log query strings: viewer links and signed image URLs carry their token there. No access log
  unless PACS_ACCESS_LOG=1, then path only, as the app server's; only alerts (nginx itself
  failing), since nginx writes the whole request line into error messages ("upstream ...
  request: GET ...?token="), at level `crit` too when an app server's socket is missing (one
  restarting).
- keep patient data on disk: a response larger than its memory buffers is passed on as the
  client reads it (proxy_max_temp_file_size 0), and a request body is passed on as it arrives
  (proxy_request_buffering off), never written to nginx's temporary files.
- limit what the application limits: no body size limit of its own on the API's port (the
  application refuses a body too large with its own JSON 413), and the application's timeouts.
- answer in HTML: what nginx answers itself (an app server restarting, a header too large, a
  body over the viewer's port's limit) is JSON with a `code`, as every error of the API. One
  difference remains: nginx answers `Expect: 100-continue` itself, so a client whose upload the
  application refuses unread (a wrong token, a body too large) sends the body anyway, where the
  app server alone answered before it was sent.
- hide the client behind another proxy: with RADIOLOGY_TRUST_X_FORWARDED_FOR=1 (a clinic's TLS
  proxy in front), nginx takes the client's address from that proxy's X-Forwarded-For and appends
  it, so the audit trail, the login lockout and the per-address rate limits see the client, not
  the TLS proxy.
- trust a client's X-PACS-Viewer-Origin or X-Forwarded-For: it sets the first and appends the
  client's address to the second; the audit trail takes that last hop only from a request that
  carries RADIOLOGY_VIEWER_PROXY_KEY (a new one at every start of scripts/serve.sh) in
  X-PACS-Proxy-Key, which nginx sets on every request it passes on, whatever the client sent.

Run as root (a test box, a container), nginx's workers run as root too, as the app servers do:
they must open the app servers' sockets (0600). The systemd unit runs everything as its `pacs` user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from pathlib import Path

from config.app_server import parse_bind
from config.env import env_bool, env_int, env_str

# Seconds: as long as the app server gives a request (a slow link's upload or download).
PROXY_TIMEOUT_SECONDS = 300
# Connections to the app servers kept alive per nginx worker: a reading room's viewers reuse them.
UPSTREAM_KEEPALIVE = 32
# Seconds an idle one is kept: less than the app server's 30 s (granian closes a connection idle
# that long), so nginx never sends a request on one the app server is closing (a 502).
UPSTREAM_KEEPALIVE_SECONDS = 20
# A request line or header of up to this many KiB: long QIDO queries (many includefield) pass.
HEADER_BUFFER_KIB = 64
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")

# What nginx answers itself, in the API's error shape ({"detail", "code"}): status -> (code, detail).
OWN_ANSWERS = {
    502: (503, "service_unavailable", "The server is starting or restarting; try again in a few seconds."),
    503: (503, "service_unavailable", "The server is starting or restarting; try again in a few seconds."),
    504: (504, "gateway_timeout", "The server took too long to answer."),
    413: (413, "request_too_large", "The request body is larger than this port takes."),
    414: (414, "request_too_long", "The request line is too long."),
    494: (431, "headers_too_large", "The request headers are too large."),
    400: (400, "bad_request", "The request could not be read."),
}
# Where those answers live: internal locations (a client asking for one gets nginx's 404).
OWN_ANSWERS_PATH = "/.pacs-lite-error/"


def _host_port(host: str, port: int) -> str:
    """host:port as nginx reads it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(bind: str) -> str:
    host, port = parse_bind(bind)
    listen = _host_port(host, port)
    if host == "::":
        listen += " ipv6only=off"  # every address, IPv4 too, as HOST=:: means
    return listen


def app_server_sockets(socket_dir: Path, count: int) -> list[Path]:
    """The unix sockets of the `count` app servers (deploy/supervisord.conf's api-N programs)."""
    return [socket_dir / f"api-{number}.sock" for number in range(count)]


def _quoted(value: str | Path) -> str:
    """A value as an nginx string: a var directory with a space in its path is still one argument."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _own_answers() -> str:
    """error_page lines and the internal locations that answer them as JSON.

    URIs, not named locations: nginx cannot go to a named location from an error it found in the
    request line itself (a URI too long, a garbled line) and answers a 500 page instead.
    """
    lines = []
    for status, (answer, code, detail) in OWN_ANSWERS.items():
        body = '{"detail":"' + detail + '","code":"' + code + '"}'
        lines.append(f"        error_page {status} ={answer} {OWN_ANSWERS_PATH}{status};")
        lines.append(
            f"        location = {OWN_ANSWERS_PATH}{status} {{ internal; default_type application/json; "
            f"return {answer} '{body}'; }}"
        )
    return "\n".join(lines)


def _trusted_proxy() -> str:
    """With RADIOLOGY_TRUST_X_FORWARDED_FOR=1 (another proxy, a clinic's TLS proxy, in front): the
    client's address is the last hop that proxy appended, so nginx appends that one, not the proxy's."""
    return """
        set_real_ip_from 0.0.0.0/0;
        set_real_ip_from ::/0;
        real_ip_header X-Forwarded-For;"""


def _server(listen: str, *, proxy_key: str, viewer: bool, trust_forwarded: bool) -> str:
    # Uploads are not the viewer's, but DICOMweb's routes are the same there (2 GB, as before).
    body_limit = "2g" if viewer else "0"
    mark = "\n            proxy_set_header X-PACS-Viewer-Origin 1;" if viewer else ""
    return f"""    server {{
        listen {listen};
        server_name _;
        client_max_body_size {body_limit};{_trusted_proxy() if trust_forwarded else ""}
{_own_answers()}

        location / {{
            proxy_pass http://pacs_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $pacs_forwarded_proto;{mark}
            proxy_set_header X-PACS-Proxy-Key {_quoted(proxy_key)};
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            proxy_intercept_errors off;
            # To another app server only when this one could not be reached (one restarting), never
            # after a timeout: a request that took 300 s is not sent again.
            proxy_next_upstream error;
            proxy_next_upstream_tries 2;
            proxy_read_timeout {PROXY_TIMEOUT_SECONDS}s;
            proxy_send_timeout {PROXY_TIMEOUT_SECONDS}s;
        }}
    }}
"""


def render(
    *,
    api_bind: str,
    viewer_bind: str,
    sockets: list[Path],
    work_dir: Path,
    access_log: bool,
    proxy_key: str,
    user: str | None = None,
    trust_forwarded: bool = False,
) -> str:
    """nginx.conf for both origins, in front of the app servers listening on `sockets`.

    `user`: the user nginx's workers run as, when it is started as root (else None: its own).
    `trust_forwarded`: RADIOLOGY_TRUST_X_FORWARDED_FOR, another proxy in front (see _trusted_proxy).
    """
    access = "access_log /dev/stdout pacs_no_secrets;" if access_log else "access_log off;"
    upstreams = "\n".join(f"        server {_quoted(f'unix:{path}')};" for path in sockets)
    return f"""# Written by config/front_proxy.py at every start; edits are lost. See its docstring.
daemon off;
{f"user {user};" if user else "# user: nginx's own (not started as root)"}
worker_processes 1;
pid {_quoted(work_dir / "nginx.pid")};
error_log stderr alert;

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
    # A slow phone link's upload or download stalls for a while between two packets.
    client_body_timeout {PROXY_TIMEOUT_SECONDS}s;
    send_timeout {PROXY_TIMEOUT_SECONDS}s;
    large_client_header_buffers 4 {HEADER_BUFFER_KIB}k;

    # The scheme the browser used: a TLS proxy in front says so (trusted by the app only with
    # PACS_BEHIND_TLS_PROXY=1); otherwise plain HTTP.
    map $http_x_forwarded_proto $pacs_forwarded_proto {{
        default $http_x_forwarded_proto;
        "" $scheme;
    }}

    upstream pacs_app {{
        # Each request to the app server with the fewest in flight (see the module's docstring).
        least_conn;
{upstreams}
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_timeout {UPSTREAM_KEEPALIVE_SECONDS}s;
    }}

{_server(_listen(api_bind), proxy_key=proxy_key, viewer=False, trust_forwarded=trust_forwarded)}
{_server(_listen(viewer_bind), proxy_key=proxy_key, viewer=True, trust_forwarded=trust_forwarded)}}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), None)


def main() -> None:
    nginx = nginx_binary()
    if nginx is None:
        sys.exit("nginx is needed in front of the app servers: `make run` installs Debian's nginx-light (apt-get).")
    api_bind, viewer_bind, var_dir, socket_dir, proxy_key = (
        env_str("PACS_API_BIND"),
        env_str("PACS_VIEWER_BIND"),
        env_str("PACS_VAR_DIR"),
        env_str("PACS_SOCKET_DIR"),
        env_str("RADIOLOGY_VIEWER_PROXY_KEY"),
    )
    if not (viewer_bind and api_bind and var_dir and socket_dir and proxy_key):
        sys.exit(
            "PACS_API_BIND, PACS_VIEWER_BIND, PACS_VAR_DIR, PACS_SOCKET_DIR and RADIOLOGY_VIEWER_PROXY_KEY are "
            "set by scripts/serve.sh: run it."
        )
    work_dir = Path(var_dir).resolve() / "nginx"
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work_dir / name).mkdir(parents=True, exist_ok=True)
    config = work_dir / "front.conf"
    # 0600 from the start: it holds the proxy key.
    config.unlink(missing_ok=True)
    (work_dir / "viewer.conf").unlink(missing_ok=True)  # the name before nginx fronted both ports
    with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as written:
        written.write(
            render(
                api_bind=api_bind,
                viewer_bind=viewer_bind,
                sockets=app_server_sockets(Path(socket_dir), env_int("PACS_WEB_WORKERS", 1, minimum=1)),
                work_dir=work_dir,
                access_log=env_bool("PACS_ACCESS_LOG", False),
                proxy_key=proxy_key,
                user=pwd.getpwuid(0).pw_name if os.geteuid() == 0 else None,
                trust_forwarded=env_bool("RADIOLOGY_TRUST_X_FORWARDED_FOR", False),
            )
        )
    # -e: nginx opens its compiled-in error log (/var/log/nginx, root's) before it reads any
    # configuration unless told otherwise.
    os.execv(nginx, [nginx, "-p", str(work_dir), "-c", str(config), "-e", "stderr"])  # noqa: S606


if __name__ == "__main__":
    main()
