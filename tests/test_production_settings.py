"""Production settings: HTTPS-only by default, `check --deploy` clean, refusal to start half-configured,
and the token endpoint's throttle.

Settings are read once, at import, so each case runs manage.py (or a tiny script) in a fresh
interpreter whose environment has every variable config/ reads removed first: nothing of the
developer's or the CI's environment (DATABASE_URL, PACS_ALLOW_PLAIN_HTTP, ...) leaks in. The
throttle is exercised in-process against the test settings with a rate of 3/min.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.test import Client
from rest_framework.throttling import SimpleRateThrottle

from apps.radiology.access.permissions import DOCTOR_GROUP
from apps.radiology.tests.conftest import PASSWORD, make_user

ROOT = Path(__file__).resolve().parent.parent
_ENV_READ = re.compile(r"""env_(?:str|bool|int|list)\(\s*["']([A-Z][A-Z0-9_]*)["']""")
TOKEN_URL = "/api/v1/auth/token/"

PRINT_SECURITY = """
import json
import django
django.setup()
from django.conf import settings
names = [
    "DEBUG", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_REDIRECT_EXEMPT", "SECURE_PROXY_SSL_HEADER",
    "SESSION_COOKIE_HTTPONLY", "X_FRAME_OPTIONS", "ALLOWED_HOSTS",
]
print(json.dumps({
    **{name: getattr(settings, name) for name in names},
    "THROTTLE_RATES": settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
    "NUM_PROXIES": settings.REST_FRAMEWORK.get("NUM_PROXIES"),
    "DEFAULT_CACHE": settings.CACHES["default"]["BACKEND"],
}))
"""

HTTPS_ON = {
    "SECURE_SSL_REDIRECT": True,
    "SESSION_COOKIE_SECURE": True,
    "CSRF_COOKIE_SECURE": True,
    "SECURE_HSTS_SECONDS": 31536000,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
    "SECURE_HSTS_PRELOAD": True,
}
HTTPS_OFF = {
    "SECURE_SSL_REDIRECT": False,
    "SESSION_COOKIE_SECURE": False,
    "CSRF_COOKIE_SECURE": False,
    "SECURE_HSTS_SECONDS": 0,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
    "SECURE_HSTS_PRELOAD": False,
}


@cache
def names_read_by_config() -> frozenset[str]:
    """Every environment variable a module of config/ reads through config.env's helpers."""
    return frozenset(name for path in (ROOT / "config").glob("*.py") for name in _ENV_READ.findall(path.read_text()))


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A clean environment with only DJANGO_DEBUG=0, a long random key and allowed hosts; then `overrides`.

    An override of "" removes the variable.
    """
    read = names_read_by_config()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in read and name.removesuffix("_FILE") not in read and name != "DJANGO_SETTINGS_MODULE"
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        PACS_VAR_DIR=str(tmp_path / "var"),  # the SQLite default creates var/: keep it out of the repo
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="pacs.example.org",
    )
    for name, value in overrides.items():
        if value == "":
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run(tmp_path: Path, args: list[str], **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own interpreter, fixed arguments)
        [sys.executable, *args],
        cwd=ROOT,
        env=production_env(tmp_path, **overrides),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def security_settings(tmp_path: Path, **overrides: str) -> dict[str, Any]:
    result = run(tmp_path, ["-c", PRINT_SECURITY], **overrides)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


# --- check --deploy --------------------------------------------------------------------------------


def test_check_deploy_is_clean_with_only_key_and_hosts(tmp_path: Path) -> None:
    result = run(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"])

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "System check identified no issues (0 silenced).\n"


def test_check_deploy_names_what_plain_http_gives_up(tmp_path: Path) -> None:
    result = run(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], PACS_ALLOW_PLAIN_HTTP="1")

    assert result.returncode == 1
    found = sorted(set(re.findall(r"\(security\.(W\d+)\)", result.stderr)))
    assert found == ["W004", "W008", "W012", "W016"]
    assert "System check identified 4 issues (0 silenced)." in result.stderr


# --- HTTPS by default ------------------------------------------------------------------------------


def test_https_only_by_default(tmp_path: Path) -> None:
    loaded = security_settings(tmp_path)

    assert {name: loaded[name] for name in HTTPS_ON} == HTTPS_ON
    assert loaded["DEBUG"] is False
    assert loaded["SECURE_REDIRECT_EXEMPT"] == ["^healthz$"]
    assert loaded["SECURE_PROXY_SSL_HEADER"] is None
    assert loaded["SESSION_COOKIE_HTTPONLY"] is True
    assert loaded["X_FRAME_OPTIONS"] == "DENY"
    assert loaded["ALLOWED_HOSTS"] == ["pacs.example.org"]


@pytest.mark.parametrize("spelling", ["1", "true", "yes", "on"])
def test_plain_http_switch_turns_it_off(tmp_path: Path, spelling: str) -> None:
    loaded = security_settings(tmp_path, PACS_ALLOW_PLAIN_HTTP=spelling)

    assert {name: loaded[name] for name in HTTPS_OFF} == HTTPS_OFF


def test_plain_http_switch_set_to_false_keeps_https(tmp_path: Path) -> None:
    loaded = security_settings(tmp_path, PACS_ALLOW_PLAIN_HTTP="0")

    assert {name: loaded[name] for name in HTTPS_ON} == HTTPS_ON


def test_debug_is_never_https_only(tmp_path: Path) -> None:
    loaded = security_settings(tmp_path, DJANGO_DEBUG="1")

    assert {name: loaded[name] for name in HTTPS_OFF} == HTTPS_OFF


def test_behind_a_tls_proxy_trusts_x_forwarded_proto(tmp_path: Path) -> None:
    loaded = security_settings(tmp_path, PACS_BEHIND_TLS_PROXY="1")

    assert loaded["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert {name: loaded[name] for name in HTTPS_ON} == HTTPS_ON


def test_a_misspelt_switch_refuses_to_start(tmp_path: Path) -> None:
    result = run(tmp_path, ["manage.py", "check"], PACS_ALLOW_PLAIN_HTTP="sometimes")

    assert result.returncode != 0
    assert "PACS_ALLOW_PLAIN_HTTP must be true or false, not 'sometimes'" in result.stderr


# --- refusing to start half-configured ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ALLOWED_HOSTS is required when DJANGO_DEBUG is off"),
        ({"DJANGO_ALLOWED_HOSTS": " , "}, "DJANGO_ALLOWED_HOSTS is required when DJANGO_DEBUG is off"),
        ({"DJANGO_DEBUG": "", "DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off"),
    ],
    ids=["no-secret-key", "no-allowed-hosts", "blank-allowed-hosts", "debug-unset-no-key"],
)
@pytest.mark.parametrize(
    "start",
    [["manage.py", "check"], ["-c", "from config.wsgi import application"]],
    ids=["manage.py", "wsgi"],
)
def test_refuses_to_start_half_configured(
    tmp_path: Path, overrides: dict[str, str], message: str, start: list[str]
) -> None:
    result = run(tmp_path, start, **overrides)

    assert result.returncode != 0
    assert f"django.core.exceptions.ImproperlyConfigured: {message}" in result.stderr


def test_the_wsgi_app_freezes_what_it_loaded_and_collects_young_objects_less_often(tmp_path: Path) -> None:
    script = (
        "import gc, json; from config import wsgi; "
        "print(json.dumps([list(gc.get_threshold()), gc.get_freeze_count() > 1000, callable(wsgi.application)]))"
    )
    result = run(tmp_path, ["-c", script])

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[5_000, 10, 100], True, True]


# --- the token endpoint's throttle -----------------------------------------------------------------


def test_production_rate_and_shared_cache(tmp_path: Path) -> None:
    default = security_settings(tmp_path)
    configured = security_settings(tmp_path, RADIOLOGY_TOKEN_RATE="5/hour")

    assert default["THROTTLE_RATES"] == {"auth-token": "10/min"}
    assert configured["THROTTLE_RATES"] == {"auth-token": "5/hour"}
    # Counted in a cache every worker of the host shares, not per process.
    assert default["DEFAULT_CACHE"] == "django.core.cache.backends.filebased.FileBasedCache"


def test_throttle_counts_by_the_address_the_trail_records(tmp_path: Path) -> None:
    direct = security_settings(tmp_path)
    proxied = security_settings(tmp_path, RADIOLOGY_TRUST_X_FORWARDED_FOR="1")

    # 0: the connection's address, never a header; 1: the X-Forwarded-For hop the proxy added.
    assert (direct["NUM_PROXIES"], proxied["NUM_PROXIES"]) == (0, 1)


@pytest.fixture
def three_per_minute(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The token endpoint at 3 requests a minute per address, the clock stopped, counts cleared."""
    assert settings.REST_FRAMEWORK["NUM_PROXIES"] == 0  # the test settings trust no proxy
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth-token": "3/min"},
    }
    # DRF copies the rates into the throttle class when it is imported; follow the override.
    from rest_framework.settings import api_settings

    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", api_settings.DEFAULT_THROTTLE_RATES)
    monkeypatch.setattr(SimpleRateThrottle, "timer", lambda self: 1_800_000_000.0)
    caches["default"].clear()
    yield
    caches["default"].clear()


def _login(client: Client, password: str, address: str = "198.51.100.7", forwarded: str | None = None) -> Any:
    return client.post(
        TOKEN_URL,
        {"username": "doctor-alice", "password": password},
        content_type="application/json",
        REMOTE_ADDR=address,
        headers={"X-Forwarded-For": forwarded} if forwarded is not None else {},
    )


@pytest.mark.django_db
def test_the_fourth_token_request_a_minute_is_throttled(three_per_minute: None) -> None:
    make_user("doctor-alice", groups=(DOCTOR_GROUP,))
    client = Client()

    wrong = [_login(client, "guess-1"), _login(client, "guess-2")]
    right = _login(client, PASSWORD)
    throttled = _login(client, PASSWORD)
    elsewhere = _login(client, PASSWORD, address="198.51.100.8")

    assert [response.status_code for response in wrong] == [400, 400]
    assert wrong[0].json() == {
        "detail": "Unable to log in with the provided credentials.",
        "code": "invalid_credentials",
    }
    assert right.status_code == 200
    assert throttled.status_code == 429
    assert throttled.json() == {
        "detail": "Request was throttled. Expected available in 60 seconds.",
        "code": "throttled",
    }
    assert throttled["Retry-After"] == "60"
    # Counted per client address: another address still gets its token.
    assert elsewhere.status_code == 200
    assert elsewhere.json() == right.json()


@pytest.mark.django_db
def test_a_made_up_x_forwarded_for_does_not_reset_the_count(three_per_minute: None) -> None:
    make_user("doctor-alice", groups=(DOCTOR_GROUP,))
    client = Client()

    guesses = [_login(client, f"guess-{n}", forwarded=f"203.0.113.{n}") for n in range(1, 5)]

    assert [response.status_code for response in guesses] == [400, 400, 400, 429]


@pytest.mark.django_db
def test_behind_a_trusted_proxy_the_hop_it_added_is_counted(three_per_minute: None, settings: Any) -> None:
    # The one switch, as config/settings.py applies it: the audit trail, the login lockout and the
    # throttle all count by the address the proxy saw.
    settings.RADIOLOGY_TRUST_X_FORWARDED_FOR = True
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    make_user("doctor-alice", groups=(DOCTOR_GROUP,))
    proxy = "10.0.0.2"
    client = Client()

    guesses = [
        _login(client, f"guess-{n}", address=proxy, forwarded=f"203.0.113.{n}, 198.51.100.7") for n in range(1, 5)
    ]
    other_client = _login(client, PASSWORD, address=proxy, forwarded="198.51.100.8")

    assert [response.status_code for response in guesses] == [400, 400, 400, 429]
    assert other_client.status_code == 200


# --- the generated secret key (make run, the systemd unit) -----------------------------------------

PRINT_KEY = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"


def test_a_generated_key_is_only_used_when_asked_for(tmp_path: Path) -> None:
    """Production without DJANGO_SECRET_KEY still refuses: only PACS_GENERATE_SECRET_KEY=1 writes a key."""
    refused = run(tmp_path, ["manage.py", "check"], DJANGO_SECRET_KEY="", PACS_GENERATE_SECRET_KEY="0")

    assert refused.returncode != 0
    assert "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off" in refused.stderr
    assert not (tmp_path / "var" / "secret_key").exists()


def test_a_generated_key_is_written_0600_once_and_reused(tmp_path: Path) -> None:
    first = run(tmp_path, ["-c", PRINT_KEY], DJANGO_SECRET_KEY="", PACS_GENERATE_SECRET_KEY="1")
    second = run(tmp_path, ["-c", PRINT_KEY], DJANGO_SECRET_KEY="", PACS_GENERATE_SECRET_KEY="1")

    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "var" / "secret_key"
    key = key_file.read_text().strip()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert first.stdout.strip().splitlines()[-1] == key
    assert second.stdout.strip().splitlines()[-1] == key
    assert len(key) >= 50
    # Nothing but the key is left in var/ (the draft it was written under is gone).
    assert sorted(path.name for path in (tmp_path / "var").iterdir() if "secret" in path.name) == ["secret_key"]


def test_a_given_key_wins_over_the_generated_one(tmp_path: Path) -> None:
    given = secrets.token_urlsafe(50)
    result = run(tmp_path, ["-c", PRINT_KEY], DJANGO_SECRET_KEY=given, PACS_GENERATE_SECRET_KEY="1")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == given
    assert not (tmp_path / "var" / "secret_key").exists()


def test_check_deploy_is_clean_with_a_generated_key(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        DJANGO_SECRET_KEY="",
        PACS_GENERATE_SECRET_KEY="1",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "System check identified no issues (0 silenced).\n"


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "secret_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(secrets.token_urlsafe(50))
    key_file.chmod(0o644)

    result = run(tmp_path, ["manage.py", "check"], DJANGO_SECRET_KEY="", PACS_GENERATE_SECRET_KEY="1")

    assert result.returncode != 0
    assert (
        f"django.core.exceptions.ImproperlyConfigured: {key_file} is readable by others (mode 644): chmod 600 it"
        in result.stderr
    )


# --- persistent database connections ----------------------------------------------------------------

PRINT_DATABASE = (
    "import json, django; django.setup(); from django.conf import settings; "
    "d = settings.DATABASES['default']; print(json.dumps([d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS']]))"
)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, [60, True]),
        ({"DATABASE_URL": "postgres://pacs:pacs@db.example:5432/pacs"}, [60, True]),
        ({"DATABASE_CONN_MAX_AGE": "0"}, [0, True]),
        ({"DATABASE_CONN_HEALTH_CHECKS": "0"}, [60, False]),
    ],
    ids=["sqlite-default", "postgres-default", "max-age-0", "no-health-checks"],
)
def test_database_connections_are_kept_and_checked_by_default(
    tmp_path: Path, overrides: dict[str, str], expected: list[object]
) -> None:
    result = run(tmp_path, ["-c", PRINT_DATABASE], **overrides)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_on_one_usable_core_there_is_one_worker_and_no_parse_helper(tmp_path: Path) -> None:
    """Both defaults follow the cores the process may use (its affinity: a container's cpuset), not the host's."""
    script = (
        "import json, os, runpy; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "import django; django.setup(); from django.conf import settings; "
        "from config.app_server import build_server; served = build_server('127.0.0.1', 8000); "
        "print(json.dumps([served.workers, settings.RADIOLOGY_INGEST_PARSE_HELPER]))"
    )
    result = run(tmp_path, ["-c", script])

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [1, False]
