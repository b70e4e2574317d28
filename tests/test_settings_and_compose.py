"""config.settings from the environment, docker-compose.yml and .env.example agreeing with it.

Settings are loaded in a fresh interpreter per case (they are read once, at import), with
every variable settings.py reads removed from the environment first, so the CI's own
DATABASE_URL or RADIOLOGY_STORAGE cannot leak into a case.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.app_server import ACCESS_LOG_FORMAT, GRACE_SECONDS, build_server, claim_socket

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_SOURCE = ROOT / "config" / "settings.py"
S3_BACKEND = "apps.radiology.storage.RadiologyS3Storage"
FILESYSTEM_BACKEND = "django.core.files.storage.FileSystemStorage"
_ENV_READ = re.compile(r"""env_(?:str|bool|int|list)\(\s*["']([A-Z][A-Z0-9_]*)["']""")

PRINT_SETTINGS = """
import json
import django
django.setup()
from django.conf import settings
from django.core.files.storage import storages
radiology = storages["radiology"]
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
    "SECRET_KEY": settings.SECRET_KEY,
    "RADIOLOGY_STORAGE": settings.RADIOLOGY_STORAGE,
    "radiology_store": settings.STORAGES["radiology"],
    "radiology_class": f"{type(radiology).__module__}.{type(radiology).__qualname__}",
    "AWS_ACCESS_KEY_ID": settings.AWS_ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": settings.AWS_SECRET_ACCESS_KEY,
    "AWS_S3_ENDPOINT_URL": settings.AWS_S3_ENDPOINT_URL,
    "AWS_STORAGE_BUCKET_NAME": settings.AWS_STORAGE_BUCKET_NAME,
    "AWS_S3_USE_SSL": settings.AWS_S3_USE_SSL,
    "DATABASE_ENGINE": settings.DATABASES["default"]["ENGINE"],
    "RADIOLOGY_MAX_UPLOAD_SIZE": settings.RADIOLOGY_MAX_UPLOAD_SIZE,
    "RADIOLOGY_TOKEN_RATE_PER_ADDRESS": settings.RADIOLOGY_TOKEN_RATE_PER_ADDRESS,
    "RADIOLOGY_VIEWER_PROXY_KEY": settings.RADIOLOGY_VIEWER_PROXY_KEY,
}, default=str))
"""


@cache
def names_read_by_settings() -> frozenset[str]:
    """Every environment variable config/settings.py reads through config.env's helpers."""
    return frozenset(_ENV_READ.findall(SETTINGS_SOURCE.read_text()))


@cache
def names_read_by_config() -> frozenset[str]:
    return frozenset(name for path in (ROOT / "config").glob("*.py") for name in _ENV_READ.findall(path.read_text()))


def env_example() -> dict[str, str]:
    """.env.example as name -> value, inline comments dropped."""
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            values[match.group(1)] = re.split(r"\s+#", match.group(2), maxsplit=1)[0].strip()
    return values


def clean_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The current environment without any settings variable, plus `overrides`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in names_read_by_settings() and name.removesuffix("_FILE") not in names_read_by_settings()
    }
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["PACS_VAR_DIR"] = str(tmp_path / "var")  # the SQLite default creates var/: keep it out of the repo
    env.update(overrides)
    return env


def run_settings(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own interpreter and a fixed script)
        [sys.executable, "-c", PRINT_SETTINGS],
        cwd=ROOT,
        env=clean_env(tmp_path, **overrides),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_settings(tmp_path: Path, **overrides: str) -> dict[str, Any]:
    result = run_settings(tmp_path, **overrides)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


PRODUCTION = {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "s3cret-for-tests", "DJANGO_ALLOWED_HOSTS": "pacs.example.org"}


# --- production refuses to start half-configured -------------------------------------------------


def test_setup_without_secret_key_fails_when_debug_is_off(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=clean_env(tmp_path, DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="pacs.example.org"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_setup_without_secret_key_fails_when_debug_is_unset(tmp_path: Path) -> None:
    result = run_settings(tmp_path)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off" in result.stderr


def test_setup_without_allowed_hosts_fails_when_debug_is_off(tmp_path: Path) -> None:
    result = run_settings(tmp_path, DJANGO_DEBUG="0", DJANGO_SECRET_KEY="s3cret-for-tests")
    assert result.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS is required when DJANGO_DEBUG is off" in result.stderr


def test_production_settings_load_with_key_and_hosts(tmp_path: Path) -> None:
    loaded = load_settings(tmp_path, **{**PRODUCTION, "DJANGO_ALLOWED_HOSTS": "pacs.example.org, 10.0.0.5 ,"})
    assert loaded["DEBUG"] is False
    assert loaded["SECRET_KEY"] == "s3cret-for-tests"
    assert loaded["ALLOWED_HOSTS"] == ["pacs.example.org", "10.0.0.5"]


def test_secret_key_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret_key"
    secret.write_text("from-a-mounted-file\n")
    loaded = load_settings(
        tmp_path, DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="pacs.example.org", DJANGO_SECRET_KEY_FILE=str(secret)
    )
    assert loaded["SECRET_KEY"] == "from-a-mounted-file"


def test_debug_mode_runs_with_nothing_set(tmp_path: Path) -> None:
    loaded = load_settings(tmp_path, DJANGO_DEBUG="1")
    assert loaded["DEBUG"] is True
    assert loaded["SECRET_KEY"] == "insecure-development-key-never-use-in-production"
    assert loaded["DATABASE_ENGINE"] == "django.db.backends.sqlite3"
    assert loaded["radiology_store"]["BACKEND"] == FILESYSTEM_BACKEND
    assert loaded["radiology_store"]["OPTIONS"]["location"] == str(tmp_path / "var" / "media")
    assert loaded["radiology_store"]["OPTIONS"]["base_url"] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DJANGO_DEBUG", "maybe"),
        ("RADIOLOGY_STORAGE", "bogus"),
        ("RADIOLOGY_STORAGE", "S3"),
        ("RADIOLOGY_MAX_UPLOAD_SIZE", "2GB"),
        ("RADIOLOGY_URL_EXPIRES", "0"),
        ("AWS_S3_USE_SSL", "sometimes"),
    ],
)
def test_values_settings_do_not_understand_are_refused(tmp_path: Path, name: str, value: str) -> None:
    result = run_settings(tmp_path, **{**PRODUCTION, name: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr


# --- the radiology store ---------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["s3", "minio", "storages.backends.s3boto3.S3Boto3Storage", S3_BACKEND])
def test_s3_choices_select_the_never_overwrite_s3_backend(tmp_path: Path, choice: str) -> None:
    loaded = load_settings(tmp_path, **PRODUCTION, RADIOLOGY_STORAGE=choice, AWS_STORAGE_BUCKET_NAME="scans")

    assert loaded["RADIOLOGY_STORAGE"] == S3_BACKEND
    assert loaded["radiology_store"]["BACKEND"] == S3_BACKEND
    # Defined in storage/s3.py (only an S3 store imports boto3), named through the package as
    # Django's FileSystemStorage is through django.core.files.storage.
    assert loaded["radiology_class"] == "apps.radiology.storage.s3.RadiologyS3Storage"
    options = loaded["radiology_store"]["OPTIONS"]
    assert options["bucket_name"] == "scans"
    assert options["file_overwrite"] is False
    assert options["default_acl"] is None
    assert options["querystring_auth"] is True
    assert options["signature_version"] == "s3v4"


def test_minio_variables_fill_in_for_aws_ones(tmp_path: Path) -> None:
    loaded = load_settings(
        tmp_path,
        **PRODUCTION,
        RADIOLOGY_STORAGE="minio",
        MINIO_ACCESS_KEY="minio-user",
        MINIO_SECRET_KEY="minio-password",
        MINIO_ENDPOINT_URL="http://minio:9000",
        AWS_S3_USE_SSL="0",
    )

    assert loaded["AWS_ACCESS_KEY_ID"] == "minio-user"
    assert loaded["AWS_SECRET_ACCESS_KEY"] == "minio-password"
    assert loaded["AWS_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert loaded["AWS_S3_USE_SSL"] is False
    options = loaded["radiology_store"]["OPTIONS"]
    assert options["access_key"] == "minio-user"
    assert options["secret_key"] == "minio-password"
    assert options["endpoint_url"] == "http://minio:9000"
    assert options["addressing_style"] == "path"
    assert options["use_ssl"] is False


def test_aws_variables_win_over_minio_ones(tmp_path: Path) -> None:
    loaded = load_settings(
        tmp_path,
        **PRODUCTION,
        RADIOLOGY_STORAGE="s3",
        AWS_ACCESS_KEY_ID="aws-key",
        AWS_SECRET_ACCESS_KEY="aws-secret",
        MINIO_ACCESS_KEY="minio-user",
        MINIO_SECRET_KEY="minio-password",
    )
    assert (loaded["AWS_ACCESS_KEY_ID"], loaded["AWS_SECRET_ACCESS_KEY"]) == ("aws-key", "aws-secret")
    assert loaded["AWS_S3_ENDPOINT_URL"] is None
    assert loaded["radiology_store"]["OPTIONS"]["addressing_style"] is None


def test_filesystem_is_the_default_store(tmp_path: Path) -> None:
    loaded = load_settings(tmp_path, **PRODUCTION, MEDIA_ROOT=str(tmp_path / "images"))
    assert loaded["RADIOLOGY_STORAGE"] == FILESYSTEM_BACKEND
    assert loaded["radiology_class"] == "django.core.files.storage.filesystem.FileSystemStorage"
    assert loaded["radiology_store"]["OPTIONS"] == {"location": str(tmp_path / "images"), "base_url": None}


def test_env_example_as_is_gives_working_settings(tmp_path: Path) -> None:
    """Copying .env.example to .env must give settings that load (with the placeholders)."""
    values = {name: value for name, value in env_example().items() if name in names_read_by_settings()}
    values["PACS_VAR_DIR"] = str(tmp_path / "var")
    loaded = load_settings(tmp_path, **values)
    assert loaded["DEBUG"] is False
    assert loaded["DATABASE_ENGINE"] == "apps.radiology.fastpaths.postgresql"  # Django's, its check cheaper
    assert loaded["RADIOLOGY_MAX_UPLOAD_SIZE"] == 2147483648
    assert loaded["RADIOLOGY_TOKEN_RATE_PER_ADDRESS"] == "60/min"


def test_the_token_endpoint_has_a_per_address_rate_against_password_spraying(tmp_path: Path) -> None:
    default = load_settings(tmp_path, **PRODUCTION)
    configured = load_settings(tmp_path, **PRODUCTION, RADIOLOGY_TOKEN_RATE_PER_ADDRESS="200/hour")

    assert (default["RADIOLOGY_TOKEN_RATE_PER_ADDRESS"], configured["RADIOLOGY_TOKEN_RATE_PER_ADDRESS"]) == (
        "60/min",
        "200/hour",
    )


# --- docker-compose.yml and .env.example -----------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_has_db_minio_and_app() -> None:
    services = compose()["services"]
    assert {"db", "minio", "app"} <= set(services)
    assert services["db"]["image"].startswith("postgres:")
    assert services["minio"]["image"].startswith("minio/minio")
    assert set(services["app"]["depends_on"]) == {"db", "minio"}


def test_compose_app_runs_the_app_server_on_the_wsgi_app() -> None:
    command = compose()["services"]["app"]["command"]
    text = command if isinstance(command, str) else " ".join(command)
    # The same app server and settings as make run's (config/app_server.py), on the WSGI app.
    assert re.search(r"\bexec python -m config\.app_server --bind 0\.0\.0\.0:8000\b", text)
    assert "migrate" in text
    assert "manage.py check --deploy" in text


def test_every_compose_service_is_restarted_when_it_exits() -> None:
    """As supervisord restarts make run's processes, docker restarts each service."""
    services = compose()["services"]
    assert {name: service.get("restart") for name, service in services.items()} == {
        name: "unless-stopped" for name in services
    }


def test_compose_app_sets_only_variables_settings_read() -> None:
    environment = compose()["services"]["app"]["environment"]
    names = set(environment) if isinstance(environment, dict) else {item.split("=", 1)[0] for item in environment}
    assert names
    assert names - names_read_by_settings() == set()


def test_compose_app_runs_in_production_mode_on_minio_and_postgres() -> None:
    environment = compose()["services"]["app"]["environment"]
    assert str(environment["DJANGO_DEBUG"]) == "0"
    assert environment["RADIOLOGY_STORAGE"] == "minio"
    assert environment["DATABASE_URL"].startswith("postgres://")
    assert environment["DATABASE_URL"].endswith("@db:5432/pacs")
    assert environment["MINIO_ENDPOINT_URL"] == "http://minio:9000"


def test_compose_runs_the_dicom_listener_on_the_apps_image_and_store() -> None:
    """The DICOM listener is a service like supervisord's `dicom` program, with the app's database and store."""
    services = compose()["services"]
    dicom, app = services["dicom"], services["app"]
    command = dicom["command"] if isinstance(dicom["command"], str) else " ".join(dicom["command"])
    assert re.search(r"\bmanage\.py run_dicom_listener --host 0\.0\.0\.0 --port 11112\b", command)
    assert dicom["build"] == app["build"]
    assert set(dicom["depends_on"]) == {"db", "minio", "app"}
    assert dicom["ports"] == ["${RADIOLOGY_DICOM_PORT:-11112}:11112"]
    environment = dicom["environment"]
    assert set(environment) - names_read_by_settings() == set()
    for name in ("DJANGO_DEBUG", "DATABASE_URL", "RADIOLOGY_STORAGE", "MINIO_ENDPOINT_URL", "AWS_STORAGE_BUCKET_NAME"):
        assert environment[name] == app["environment"][name], name
    supervisord = (ROOT / "deploy" / "supervisord.conf").read_text()
    assert (
        "[program:dicom]\n"
        "command=%(ENV_PACS_BIN)s/python manage.py run_dicom_listener --host %(ENV_HOST)s --skip-checks\n"
    ) in supervisord


def test_compose_keeps_secrets_out_of_the_file() -> None:
    """Secret values are ${...} references to .env, never literals."""
    services = compose()["services"]
    secrets = {
        ("app", "DJANGO_SECRET_KEY"),
        ("app", "MINIO_ACCESS_KEY"),
        ("app", "MINIO_SECRET_KEY"),
        ("dicom", "DJANGO_SECRET_KEY"),
        ("dicom", "MINIO_ACCESS_KEY"),
        ("dicom", "MINIO_SECRET_KEY"),
        ("forwarder", "DJANGO_SECRET_KEY"),
        ("forwarder", "MINIO_ACCESS_KEY"),
        ("forwarder", "MINIO_SECRET_KEY"),
        ("db", "POSTGRES_PASSWORD"),
        ("minio", "MINIO_ROOT_USER"),
        ("minio", "MINIO_ROOT_PASSWORD"),
    }
    for service, name in secrets:
        assert re.fullmatch(r"\$\{[A-Z_]+(:?[?-].*)?\}", services[service]["environment"][name]), (service, name)


# Read by docker-compose.yml itself (the db service), not by the app's settings.
COMPOSE_ONLY_VARIABLES = {"POSTGRES_PASSWORD"}


def test_every_env_example_variable_is_read_by_config() -> None:
    names = set(env_example())
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "RADIOLOGY_STORAGE"} <= names
    assert names - names_read_by_config() == COMPOSE_ONLY_VARIABLES


def test_compose_only_variables_are_used_by_docker_compose() -> None:
    compose_text = (ROOT / "docker-compose.yml").read_text()
    for name in COMPOSE_ONLY_VARIABLES:
        assert "${" + name in compose_text


def test_every_variable_settings_read_is_in_env_example() -> None:
    assert names_read_by_settings() - set(env_example()) == set()


# --- the OHIF viewer behind nginx (docker-compose.yml + deploy/nginx.conf) -------------------------

NGINX_HTML = "/usr/share/nginx/html"
_NGINX_LOCATION = re.compile(r"location\s+(=\s*)?(\S+)\s*\{([^{}]*)\}")


@cache
def nginx_conf() -> str:
    """deploy/nginx.conf without comments."""
    return re.sub(r"#[^\n]*", "", (ROOT / "deploy" / "nginx.conf").read_text())


@cache
def nginx_locations() -> dict[str, str]:
    """`location [=] path { ... }` blocks (none nested) as "path" or "= path" -> body."""
    return {f"{'= ' if exact else ''}{path}": body for exact, path, body in _NGINX_LOCATION.findall(nginx_conf())}


def directives(block: str) -> list[str]:
    return [" ".join(part.split()) for part in block.split(";") if part.strip()]


def test_nginx_logs_no_query_string_and_no_referer() -> None:
    """Tokens ride in query strings and Referers: nginx's access log names neither (issue 14)."""
    conf = nginx_conf()
    formats = dict(re.findall(r"log_format\s+(\w+)\s+((?:'[^']*'\s*)+);", conf))
    access_logs = re.findall(r"access_log\s+([^;]+);", conf)
    assert access_logs == ["/var/log/nginx/access.log pacs_no_secrets"]
    # error-level messages quote the request line with its query string: critical ones only
    assert re.findall(r"error_log\s+([^;]+);", conf) == ["/var/log/nginx/error.log crit"]
    assert set(formats) == {"pacs_no_secrets"}
    used = set(re.findall(r"\$\w+", formats["pacs_no_secrets"]))
    assert used == {
        "$remote_addr",
        "$time_local",
        "$request_method",
        "$uri",
        "$server_protocol",
        "$status",
        "$body_bytes_sent",
        "$request_time",
    }


def test_compose_nginx_serves_the_ohif_dist_on_port_3000() -> None:
    nginx = compose()["services"]["nginx"]
    assert re.fullmatch(r"nginx:1\.2[7-9][.\w-]*", nginx["image"])
    assert [str(port) for port in nginx["ports"]] == ["3000:80"]
    volumes = nginx["volumes"]
    assert f"./var/ohif/dist:{NGINX_HTML}:ro" in volumes
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in volumes
    assert "app" in nginx["depends_on"]
    # The app hands out viewer URLs on that origin unless .env says otherwise.
    assert compose()["services"]["app"]["environment"]["OHIF_VIEWER_URL"] == (
        "${OHIF_VIEWER_URL:-http://localhost:3000/viewer}"
    )


def test_nginx_conf_serves_the_dist_with_the_index_html_fallback() -> None:
    outside_locations = _NGINX_LOCATION.sub("", nginx_conf())
    assert re.search(r"^\s*listen\s+80;", outside_locations, re.MULTILINE)
    assert re.search(rf"^\s*root\s+{re.escape(NGINX_HTML)};", outside_locations, re.MULTILINE)
    assert "try_files $uri $uri/ /index.html" in directives(nginx_locations()["/"])


def test_nginx_conf_never_caches_app_config_js() -> None:
    block = directives(nginx_locations()["= /app-config.js"])
    assert 'add_header Cache-Control "no-store" always' in block


def test_nginx_conf_sends_referrer_policy_no_referrer_everywhere() -> None:
    """Server-wide, and again in each location with its own add_header (nginx does not inherit them)."""
    outside_locations = _NGINX_LOCATION.sub("", nginx_conf())
    assert 'add_header Referrer-Policy "no-referrer" always' in directives(outside_locations)
    for name, body in nginx_locations().items():
        if "add_header" in body:
            assert 'add_header Referrer-Policy "no-referrer" always' in directives(body), name


@pytest.mark.parametrize("path", ["/api/", "/admin/", "/static/"])
def test_nginx_conf_proxies_the_app(path: str) -> None:
    block = directives(nginx_locations()[path])
    assert "proxy_pass http://app:8000" in block
    assert "proxy_set_header Host $http_host" in block


# --- make run, the supervisor and the systemd unit ---------------------------------------------------


@cache
def supervisord_conf() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string((ROOT / "deploy" / "supervisord.conf").read_text())
    return parser


def test_supervisord_runs_an_app_server_per_worker_behind_nginx_on_both_ports() -> None:
    conf = supervisord_conf()
    programs = sorted(section for section in conf.sections() if section.startswith("program:"))
    assert programs == ["program:api", "program:dicom", "program:forwarder", "program:proxy"]
    # PACS_WEB_WORKERS app servers of one worker each, on the sockets config/front_proxy.py names;
    # nginx binds both ports and hands each request to the least busy one.
    assert conf["program:api"]["numprocs"] == "%(ENV_PACS_WEB_WORKERS)s"
    assert conf["program:api"]["process_name"] == "api-%(process_num)d"
    assert conf["program:api"]["command"] == (
        "%(ENV_PACS_BIN)s/python -m config.app_server"
        " --uds %(ENV_PACS_SOCKET_DIR)s/api-%(process_num)d.sock --workers 1"
    )
    assert conf["program:proxy"]["command"] == "%(ENV_PACS_BIN)s/python -m config.front_proxy"
    # nginx stops last (supervisord stops by reverse priority): it passes on the app servers' last answers.
    assert int(conf["program:proxy"]["priority"]) < min(
        int(conf[name].get("priority", "999"))
        for name in conf.sections()
        if name.startswith("program:") and name != "program:proxy"
    )
    assert "environment" not in conf["program:api"]
    serve = (ROOT / "scripts" / "serve.sh").read_text()
    assert "export PACS_WEB_WORKERS PACS_SOCKET_DIR" in serve


def test_the_listener_and_the_forwarder_skip_the_checks_serve_sh_just_ran() -> None:
    """Run again in them, the URL check would load every API view (pydicom, numpy) into both (issue 19)."""
    conf = supervisord_conf()
    assert conf["program:dicom"]["command"].endswith(" --skip-checks")
    assert conf["program:forwarder"]["command"] == "%(ENV_PACS_BIN)s/python manage.py run_forwarder --skip-checks"
    serve = (ROOT / "scripts" / "serve.sh").read_text()
    assert serve.index("manage.py check --deploy --fail-level ERROR") < serve.index('exec "$PACS_BIN/supervisord"')


@pytest.mark.parametrize("program", ["program:api", "program:proxy", "program:dicom", "program:forwarder"])
def test_supervisord_restarts_a_program_and_stops_its_whole_process_group(program: str) -> None:
    section = supervisord_conf()[program]
    assert section["autorestart"] == "true"
    assert (section["stopasgroup"], section["killasgroup"]) == ("true", "true")
    # nginx's graceful stop is QUIT (TERM drops its connections); the others stop gracefully on TERM.
    assert section["stopsignal"] == ("QUIT" if program == "program:proxy" else "TERM")
    # Requests in flight get their grace (the app server's 20 s, nginx's own) before supervisord kills.
    assert int(section["stopwaitsecs"]) > (5 if program == "program:proxy" else GRACE_SECONDS)
    assert section["directory"] == "%(ENV_PACS_ROOT)s"


def test_supervisord_runs_in_the_foreground_and_gives_up_loudly() -> None:
    conf = supervisord_conf()
    assert conf["supervisord"]["nodaemon"] == "true"
    assert conf["eventlistener:fatal"]["events"] == "PROCESS_STATE_FATAL"
    assert conf["eventlistener:fatal"]["command"] == "%(ENV_PACS_BIN)s/python scripts/supervisor_fatal.py"


def test_the_serving_app_server_settings_are_the_benchmarked_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PACS_WEB_WORKERS", "PACS_WEB_THREADS", "PACS_ACCESS_LOG", "PACS_ACCESS_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    server = build_server("127.0.0.1", 8000)

    # One worker per core this process may use (2 on the benchmark machine), four threads each.
    assert (server.workers, server.blocking_threads) == (len(os.sched_getaffinity(0)), 4)
    assert (str(server.interface), str(server.http), server.websockets) == ("wsgi", "1", False)
    assert (server.respawn_failed_workers, server.workers_kill_timeout, GRACE_SECONDS) == (True, 20, 20)
    assert (server.target, server.bind_addr, server.bind_port) == ("config.wsgi:application", "127.0.0.1", 8000)
    assert (server.log_access, server.log_access_format, server.process_name) == (False, ACCESS_LOG_FORMAT, "pacs-api")
    # Every handler granian logs through carries the redaction filter.
    handlers = server.log_config["handlers"]
    assert {name: handler["filters"] for name, handler in handlers.items()} == {
        "console": ["redact_secrets"],
        "access": ["redact_secrets"],
    }
    assert server.log_config["filters"] == {"redact_secrets": {"()": "config.log_redaction.RedactSecrets"}}


def test_make_runs_app_servers_listen_on_a_private_socket_with_one_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PACS_WEB_WORKERS", "2")  # make run's count of app servers, not their workers
    server = build_server("", 0, uds=tmp_path / "api-0.sock", workers=1)

    assert (server.bind_uds, server.uds_permissions, server.workers) == (tmp_path / "api-0.sock", 0o600, 1)
    assert (server.blocking_threads, server.respawn_failed_workers, server.process_name) == (4, True, "pacs-api")


def test_a_dead_app_servers_socket_is_replaced_and_a_live_ones_is_not(tmp_path: Path) -> None:
    """A SIGKILLed app server leaves its socket file behind, which granian cannot bind over."""
    dead = tmp_path / "api-0.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
        left.bind(str(dead))  # bound, never listening, then closed: what a killed server leaves
    assert dead.is_socket()
    claim_socket(dead)
    assert not dead.exists()
    claim_socket(dead)  # nothing there: nothing to do

    live = tmp_path / "api-1.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(live))
        listening.listen()
        with pytest.raises(SystemExit, match=r"An app server already listens on .*api-1\.sock"):
            claim_socket(live)
    assert live.is_socket()

    not_a_socket = tmp_path / "api-2.sock"
    not_a_socket.write_text("kept")
    with pytest.raises(SystemExit, match="exists and is not a socket"):
        claim_socket(not_a_socket)
    assert not_a_socket.read_text() == "kept"


def test_the_systemd_unit_runs_serve_sh_and_is_restarted() -> None:
    unit = configparser.RawConfigParser(strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((ROOT / "deploy" / "pacs-lite.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"] == "/bin/bash /opt/pacs-lite/scripts/serve.sh"
    assert service["WorkingDirectory"] == "/opt/pacs-lite"
    assert service["Restart"] == "always"
    assert service["KillMode"] == "mixed"
    assert service["User"] == "pacs"
    assert service["EnvironmentFile"] == "-/etc/default/pacs-lite"
    # supervisord stops its programs one after another: systemd waits for all of them.
    conf = supervisord_conf()
    stop_wait = sum(int(conf[name]["stopwaitsecs"]) for name in conf.sections() if name.startswith("program:"))
    assert int(service["TimeoutStopSec"]) > stop_wait
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def serving_env(**environment: str) -> dict[str, str]:
    """The variables scripts/serve_env.sh exports, from a clean environment plus `environment`."""
    result = subprocess.run(  # noqa: S603 (our own script)
        ["/bin/sh", str(ROOT / "scripts" / "serve_env.sh"), "env"],
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def test_make_run_serves_production_settings_with_a_generated_key_on_plain_http() -> None:
    env = serving_env()
    assert "DJANGO_DEBUG" not in env
    assert env["DJANGO_SETTINGS_MODULE"] == "config.settings"
    assert env["PACS_GENERATE_SECRET_KEY"] == "1"
    assert env["PACS_ALLOW_PLAIN_HTTP"] == "1"
    assert env["PACS_VAR_DIR"] == str(ROOT / "var")
    assert env["DJANGO_ALLOWED_HOSTS"] == "localhost,127.0.0.1"
    assert env["OHIF_VIEWER_URL"] == "http://127.0.0.1:3000/viewer"
    assert env["RADIOLOGY_CORS_ORIGINS"] == "http://localhost:3000,http://127.0.0.1:3000"
    assert (env["PACS_API_BIND"], env["PACS_VIEWER_BIND"]) == ("127.0.0.1:8000", "127.0.0.1:3000")
    # glibc's, for every served process: two malloc arenas, not one per app server thread (issue 19).
    assert env["MALLOC_ARENA_MAX"] == "2"
    assert serving_env(MALLOC_ARENA_MAX="8")["MALLOC_ARENA_MAX"] == "8"


def test_host_0_0_0_0_allows_this_machines_names_and_addresses() -> None:
    hostname = shutil.which("hostname")
    assert hostname is not None
    addresses = subprocess.run([hostname, "-I"], capture_output=True, text=True, check=True).stdout.split()  # noqa: S603
    name = subprocess.run([hostname], capture_output=True, text=True, check=True).stdout.strip()  # noqa: S603
    in_url = [f"[{address}]" if ":" in address else address for address in addresses]
    first_ipv4 = next(address for address in addresses if ":" not in address)

    env = serving_env(HOST="0.0.0.0", PORT="8001", VIEWER_PORT="3001")  # noqa: S104 (what is tested)

    hosts = env["DJANGO_ALLOWED_HOSTS"].split(",")
    assert hosts == list(dict.fromkeys(["localhost", "127.0.0.1", name, *in_url]))
    assert env["OHIF_VIEWER_URL"] == f"http://{first_ipv4}:3001/viewer"
    assert env["RADIOLOGY_CORS_ORIGINS"].split(",") == [f"http://{host}:3001" for host in hosts]
    assert (env["PACS_API_BIND"], env["PACS_VIEWER_BIND"]) == ("0.0.0.0:8001", "0.0.0.0:3001")


def test_what_the_environment_sets_wins_over_make_runs_defaults() -> None:
    env = serving_env(
        DJANGO_ALLOWED_HOSTS="pacs.clinic.example",
        OHIF_VIEWER_URL="",
        PACS_ALLOW_PLAIN_HTTP="0",
        PACS_GENERATE_SECRET_KEY="0",
        DJANGO_DEBUG="1",
    )
    assert env["DJANGO_ALLOWED_HOSTS"] == "pacs.clinic.example"
    assert env["OHIF_VIEWER_URL"] == ""  # the built-in lite viewer
    assert (env["PACS_ALLOW_PLAIN_HTTP"], env["PACS_GENERATE_SECRET_KEY"], env["DJANGO_DEBUG"]) == ("0", "0", "1")


def test_make_run_serves_through_serve_sh_and_no_longer_runserver() -> None:
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert run_recipe is not None
    assert run_recipe.group(1).strip() == "$(SERVE_VARIABLES) exec bash scripts/serve.sh"
    assert "runserver" not in makefile
    assert "DJANGO_DEBUG" not in makefile.split("SERVE_ENV =")[1]


def test_every_way_in_of_compose_knows_the_forwarding_destinations() -> None:
    """Ingest queues a stored image in its own transaction, in whichever process stored it: the API
    (uploads, STOW-RS) and the DICOM listener must read RADIOLOGY_FORWARD_DESTINATIONS as the forwarder does."""
    services = compose()["services"]
    for service in ("app", "dicom", "forwarder"):
        assert services[service]["environment"]["RADIOLOGY_FORWARD_DESTINATIONS"] == (
            "${RADIOLOGY_FORWARD_DESTINATIONS:-}"
        ), service


def test_the_viewer_proxy_key_is_read_and_empty_by_default(tmp_path: Path) -> None:
    """RADIOLOGY_VIEWER_PROXY_KEY: the key `make run`'s viewer nginx sends (scripts/serve.sh makes one)."""
    assert (
        load_settings(tmp_path, **PRODUCTION, RADIOLOGY_VIEWER_PROXY_KEY="k3y")["RADIOLOGY_VIEWER_PROXY_KEY"] == "k3y"
    )
    assert load_settings(tmp_path, **PRODUCTION)["RADIOLOGY_VIEWER_PROXY_KEY"] == ""
