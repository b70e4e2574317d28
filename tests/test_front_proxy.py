"""config/front_proxy.py: the nginx configuration of `make run`'s two ports, in front of its app servers.

Checked with the real nginx (`nginx -t`, Debian's nginx-light that `make test` installs) for every
kind of address, and directive by directive for what it must never do (log a query string, keep
a body or an answer on disk, pass on a client's own viewer-origin mark, answer in HTML). The
running nginx is driven by apps/radiology/tests/operations/test_make_run_server.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from config.front_proxy import OWN_ANSWERS, app_server_sockets, nginx_binary, render


def _render(
    tmp_path: Path, *, api_bind: str = "127.0.0.1:8000", viewer_bind: str = "127.0.0.1:3000", **options: object
) -> str:
    arguments: dict[str, object] = {
        "api_bind": api_bind,
        "viewer_bind": viewer_bind,
        "sockets": app_server_sockets(tmp_path / "run", 2),
        "work_dir": tmp_path,
        "access_log": False,
        "proxy_key": "k3y",
        **options,
    }
    return render(**arguments)  # type: ignore[arg-type]


def _server_blocks(config: str) -> list[list[str]]:
    """The lines of each `server { ... }` block, in order (the API's port first)."""
    blocks = config.split("\n    server {\n")[1:]
    return [[line.strip() for line in block.split("\n    }\n")[0].splitlines()] for block in blocks]


def test_the_app_servers_are_one_socket_each() -> None:
    assert app_server_sockets(Path("/srv/var/run"), 3) == [
        Path("/srv/var/run/api-0.sock"),
        Path("/srv/var/run/api-1.sock"),
        Path("/srv/var/run/api-2.sock"),
    ]


@pytest.mark.parametrize(
    ("bind", "listen"),
    [
        ("127.0.0.1:3000", "listen 127.0.0.1:3000;"),
        ("0.0.0.0:3001", "listen 0.0.0.0:3001;"),
        ("[::]:3002", "listen [::]:3002 ipv6only=off;"),
    ],
)
def test_the_configuration_is_valid_for_nginx(bind: str, listen: str, tmp_path: Path) -> None:
    tmp_path = tmp_path / "a var dir"  # a space in the path: every path is quoted
    tmp_path.mkdir()
    api_bind = bind.rsplit(":", 1)[0] + ":8000"
    config = _render(tmp_path, api_bind=api_bind, viewer_bind=bind, access_log=True, user="root")
    (tmp_path / "front.conf").write_text(config)
    nginx = nginx_binary()
    assert nginx is not None

    checked = subprocess.run(  # noqa: S603 (fixed argv)
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "front.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr
    api, viewer = _server_blocks(config)
    assert api[0] == listen.replace(bind.rsplit(":", 1)[1], "8000")
    assert viewer[0] == listen
    assert f'server "unix:{tmp_path}/run/api-0.sock";' in config
    assert f'server "unix:{tmp_path}/run/api-1.sock";' in config


def test_requests_go_to_the_least_busy_app_server(tmp_path: Path) -> None:
    config = _render(tmp_path)
    upstream = config.split("upstream pacs_app {")[1].split("}")[0]
    lines = [line.strip() for line in upstream.splitlines() if line.strip() and not line.strip().startswith("#")]

    assert lines == [
        "least_conn;",
        f'server "unix:{tmp_path}/run/api-0.sock";',
        f'server "unix:{tmp_path}/run/api-1.sock";',
        "keepalive 32;",
        "keepalive_timeout 20s;",  # below the app server's 30 s: never a request on a closing one
    ]


def test_only_the_viewer_port_marks_its_requests_and_only_it_limits_bodies(tmp_path: Path) -> None:
    api, viewer = _server_blocks(_render(tmp_path))

    assert "proxy_set_header X-PACS-Viewer-Origin 1;" in viewer  # set by nginx, whatever the client sent
    assert not any("Viewer-Origin" in line for line in api)
    assert "client_max_body_size 0;" in api  # the application refuses a body too large, in JSON
    assert "client_max_body_size 2g;" in viewer
    for block in (api, viewer):
        assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in block
        assert 'proxy_set_header X-PACS-Proxy-Key "k3y";' in block  # set by nginx: the audit trail trusts it


def test_what_nginx_answers_itself_is_json_with_a_code(tmp_path: Path) -> None:
    api, viewer = _server_blocks(_render(tmp_path))

    for block in (api, viewer):
        # A URI, not a named location: nginx cannot reach one from an error in the request line.
        assert "error_page 502 =503 /.pacs-lite-error/502;" in block
        assert (
            "location = /.pacs-lite-error/502 { internal; default_type application/json; return 503 "
            """'{"detail":"The server is starting or restarting; try again in a few seconds.","""
            """"code":"service_unavailable"}'; }"""
        ) in block
        assert "error_page 494 =431 /.pacs-lite-error/494;" in block
    assert sorted(OWN_ANSWERS) == [400, 413, 414, 494, 502, 503, 504]
    assert {code for _status, code, _detail in OWN_ANSWERS.values()} == {
        "bad_request",
        "request_too_large",
        "request_too_long",
        "headers_too_large",
        "service_unavailable",
        "gateway_timeout",
    }


def test_a_request_goes_to_another_app_server_only_when_its_own_could_not_be_reached(tmp_path: Path) -> None:
    for block in _server_blocks(_render(tmp_path)):
        assert "proxy_next_upstream error;" in block  # never after a timeout: no request sent twice for 300 s
        assert "proxy_next_upstream_tries 2;" in block


def test_behind_a_trusted_proxy_the_client_is_that_proxys_last_hop(tmp_path: Path) -> None:
    """RADIOLOGY_TRUST_X_FORWARDED_FOR=1: nginx appends the address the clinic's TLS proxy saw, not
    the TLS proxy's own, so the audit trail and the per-address limits see each client."""
    realip = ["set_real_ip_from 0.0.0.0/0;", "set_real_ip_from ::/0;", "real_ip_header X-Forwarded-For;"]
    for block in _server_blocks(_render(tmp_path, trust_forwarded=True)):
        assert block[3:6] == realip
    for block in _server_blocks(_render(tmp_path)):
        assert not any("real_ip" in line for line in block)


def test_what_the_front_proxy_never_does(tmp_path: Path) -> None:
    config = _render(tmp_path)
    lines = [line.strip() for line in config.splitlines()]

    assert "access_log off;" in lines
    # Error messages quote the request line, token and all; a missing socket is `crit`.
    assert "error_log stderr alert;" in lines
    assert "$request " not in config and "$args" not in config and "$request_uri" not in config
    assert lines.count("proxy_request_buffering off;") == 2  # a body is passed on as it arrives
    assert lines.count("proxy_max_temp_file_size 0;") == 2  # an answer never goes to nginx's temporary files
    assert "# user: nginx's own (not started as root)" in lines
    logged = _render(tmp_path, access_log=True, user="root")
    assert "access_log /dev/stdout pacs_no_secrets;" in logged
    assert "'$remote_addr [$time_local] \"$request_method $uri $server_protocol\" '" in logged
    assert "user root;" in logged.splitlines()
