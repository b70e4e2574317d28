"""config/viewer_proxy.py: the nginx configuration of `make run`'s viewer origin.

Checked with the real nginx (`nginx -t`, Debian's nginx-light that `make test` installs) for every
kind of address, and directive by directive for what it must never do (log a query string, keep
a body or an answer on disk, pass on a client's own viewer-origin mark). The running nginx is
driven by apps/radiology/tests/operations/test_make_run_server.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from config.viewer_proxy import nginx_binary, render, upstream_of


@pytest.mark.parametrize(
    ("api_bind", "upstream"),
    [
        ("127.0.0.1:8000", "127.0.0.1:8000"),
        ("0.0.0.0:8001", "127.0.0.1:8001"),
        ("[::]:8002", "[::1]:8002"),
        ("192.168.1.5:8003", "192.168.1.5:8003"),
    ],
)
def test_nginx_reaches_the_app_server_where_it_listens(api_bind: str, upstream: str) -> None:
    assert upstream_of(api_bind) == upstream


@pytest.mark.parametrize(
    ("viewer_bind", "listen"),
    [
        ("127.0.0.1:3000", "listen 127.0.0.1:3000;"),
        ("0.0.0.0:3001", "listen 0.0.0.0:3001;"),
        ("[::]:3002", "listen [::]:3002 ipv6only=off;"),
    ],
)
def test_the_configuration_is_valid_for_nginx(viewer_bind: str, listen: str, tmp_path: Path) -> None:
    tmp_path = tmp_path / "a var dir"  # a space in the path: every path is quoted
    tmp_path.mkdir()
    config = render(
        viewer_bind=viewer_bind, api_bind="127.0.0.1:8000", work_dir=tmp_path, access_log=True, proxy_key="k3y"
    )
    (tmp_path / "viewer.conf").write_text(config)
    nginx = nginx_binary()
    assert nginx is not None

    checked = subprocess.run(  # noqa: S603 (fixed argv)
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "viewer.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr
    assert f"        {listen}\n" in config


def test_what_the_viewer_proxy_never_does(tmp_path: Path) -> None:
    config = render(
        viewer_bind="127.0.0.1:3000", api_bind="127.0.0.1:8000", work_dir=tmp_path, access_log=False, proxy_key="k3y"
    )
    lines = [line.strip() for line in config.splitlines()]

    assert "access_log off;" in lines
    assert "error_log stderr crit;" in lines  # error-level messages quote the request line, token and all
    assert "$request " not in config and "$args" not in config and "$request_uri" not in config
    assert "proxy_request_buffering off;" in lines  # a body is passed on as it arrives
    assert "proxy_max_temp_file_size 0;" in lines  # an answer never goes to nginx's temporary files
    assert "proxy_set_header X-PACS-Viewer-Origin 1;" in lines  # set by nginx, whatever the client sent
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in lines
    assert 'proxy_set_header X-PACS-Proxy-Key "k3y";' in lines  # set by nginx: the audit trail trusts it
    assert "server 127.0.0.1:8000;" in lines
    assert "keepalive_timeout 20s;" in lines  # below the app server's 30 s: never a request on a closing one
    logged = render(
        viewer_bind="127.0.0.1:3000", api_bind="127.0.0.1:8000", work_dir=tmp_path, access_log=True, proxy_key="k3y"
    )
    assert "access_log /dev/stdout pacs_no_secrets;" in logged
    assert "'$remote_addr [$time_local] \"$request_method $uri $server_protocol\" '" in logged
