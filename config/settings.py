"""Settings for the EMR host and PACS-lite, read from the environment.

Every name is listed in .env.example. With nothing set the app runs on SQLite under var/ with
images on the filesystem under var/media (what `make run` uses). With DJANGO_DEBUG unset or 0 the
server refuses to start without a secret key and allowed hosts; `make run` (scripts/serve_env.sh)
gives it both: PACS_GENERATE_SECRET_KEY=1 and the hosts it serves.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_str, usable_cores

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PACS_VAR_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var")

DEBUG = env_bool("DJANGO_DEBUG", False)


def generated_secret_key(path: Path) -> str:
    """The key kept in `path` (mode 0600), generated there on first use.

    For one server that keeps its own state (`make run`, the systemd unit: PACS_GENERATE_SECRET_KEY=1),
    never the default: a deployment of several app servers, or of containers without a volume for
    var/, would give each its own key, and a signed link or session from one would fail on another.
    Written under a temporary name and linked into place, so the workers starting at once all read
    the one key that won, never half of one. A key file others can read is refused, not used.
    """
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(50) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:  # another process of this server wrote it first: use theirs
            pass
        finally:
            draft.unlink()
        mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ImproperlyConfigured(f"{path} is readable by others (mode {mode:o}): chmod 600 it")
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: remove it and a new key is generated")
    return key


SECRET_KEY = env_str("DJANGO_SECRET_KEY") or ""
# 1 (set by `make run`, scripts/serve.sh and the systemd unit): without DJANGO_SECRET_KEY, use
# the key kept in var/secret_key, generated on first start. Off by default: see generated_secret_key.
PACS_GENERATE_SECRET_KEY = env_bool("PACS_GENERATE_SECRET_KEY", False)
if not SECRET_KEY and PACS_GENERATE_SECRET_KEY:
    SECRET_KEY = generated_secret_key(VAR_DIR / "secret_key")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off")
    # Development only: a fixed, clearly-labelled key so sessions survive restarts of the server.
    SECRET_KEY = "insecure-development-key-never-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS is required when DJANGO_DEBUG is off")

# HTTPS by default in production: secure cookies, HSTS, redirect to https. A clinic LAN
# without TLS sets PACS_ALLOW_PLAIN_HTTP=1 (the one documented switch); behind a TLS proxy
# set PACS_BEHIND_TLS_PROXY=1 so X-Forwarded-Proto is trusted.
ALLOW_PLAIN_HTTP = env_bool("PACS_ALLOW_PLAIN_HTTP", False)
HTTPS_ONLY = not DEBUG and not ALLOW_PLAIN_HTTP
SECURE_SSL_REDIRECT = HTTPS_ONLY
SESSION_COOKIE_SECURE = HTTPS_ONLY
CSRF_COOKIE_SECURE = HTTPS_ONLY
SECURE_HSTS_SECONDS = 31536000 if HTTPS_ONLY else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS_ONLY
SECURE_HSTS_PRELOAD = HTTPS_ONLY
if env_bool("PACS_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# /healthz answers load balancers over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    # Swagger UI's JS/CSS as static files (SPECTACULAR_SETTINGS' *_DIST = "SIDECAR").
    "drf_spectacular_sidecar",
    "storages",
    "corsheaders",
    # Failed-login counting and lockout per username + client address (apps/radiology/access/login_protection.py).
    "axes",
    "apps.emr",
    "apps.radiology",
]

MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files (admin, API docs) without a separate web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Requests nginx marks as the viewer's origin are routed with config.viewer_urls (before
    # anything resolves a URL): see config/viewer_origin.py.
    "config.viewer_origin.ViewerOriginMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.radiology.access.audit.AuditMiddleware",
    # Last (django-axes asks for it): turns a locked-out login into the lockout answer, which
    # the audit middleware above then records as a failed login.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out username+address before any password is checked.
AUTHENTICATION_BACKENDS = [
    "apps.radiology.access.login_protection.LoginAttemptBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = env_str("DATABASE_URL")
if not _database_url:
    # The embedded default: one SQLite file under var/, created on first use.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    _database_url = f"sqlite:///{VAR_DIR / 'pacs-lite.sqlite3'}"
# Persistent connections, checked before each request reuses one: without them every request
# to PostgreSQL opens a new connection and loses its prepared statements (small DICOMweb reads
# measured at 15-20 ms instead of a few ms, issue 17). DATABASE_CONN_MAX_AGE=0 closes each
# connection at the end of its request, as Django's own default does.
DATABASES = {
    "default": dj_database_url.parse(
        _database_url,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=env_bool("DATABASE_CONN_HEALTH_CHECKS", True),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's engine, its per-request health check skipped for a connection that served a
    # request well within the last second (apps/radiology/fastpaths/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "apps.radiology.fastpaths.postgresql"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several workers write at once (chunks, ingests): take the write lock at BEGIN and wait
    # for it, instead of failing with "database is locked"; WAL lets readers run meanwhile.
    _sqlite_options = DATABASES["default"].setdefault("OPTIONS", {})
    _sqlite_options.setdefault("transaction_mode", "IMMEDIATE")
    _sqlite_options.setdefault("timeout", 30)
    _sqlite_options.setdefault("init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("DJANGO_TIME_ZONE", "Africa/Lagos")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# The seed's MEDIA_ROOT / MEDIA_URL. Nothing routes MEDIA_URL: radiology files are only
# ever served through signed, expiring URLs (see apps/radiology/storage.py).
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or VAR_DIR / "media")
MEDIA_URL = env_str("MEDIA_URL", "/media/radiology/")

# --- Radiology storage ------------------------------------------------------------------
# RADIOLOGY_STORAGE picks the backend of STORAGES["radiology"]: "filesystem" (default),
# "s3" (AWS S3 or MinIO), or the seed's dotted path 'storages.backends.s3boto3.S3Boto3Storage'.
SEED_S3_BACKEND = "storages.backends.s3boto3.S3Boto3Storage"
# django-storages' S3 backend with conditional writes (never overwrites): see apps/radiology/storage.py.
S3_BACKEND = "apps.radiology.storage.RadiologyS3Storage"
FILESYSTEM_BACKEND = "django.core.files.storage.FileSystemStorage"
_storage_choice = (env_str("RADIOLOGY_STORAGE") or "filesystem").strip()
_storage_aliases = {
    "filesystem": FILESYSTEM_BACKEND,
    FILESYSTEM_BACKEND: FILESYSTEM_BACKEND,
    "s3": S3_BACKEND,
    "minio": S3_BACKEND,
    SEED_S3_BACKEND: S3_BACKEND,
    S3_BACKEND: S3_BACKEND,
}
if _storage_choice not in _storage_aliases:
    raise ImproperlyConfigured(
        f"RADIOLOGY_STORAGE must be filesystem, s3, minio or {SEED_S3_BACKEND}, not {_storage_choice!r}"
    )
RADIOLOGY_STORAGE = _storage_aliases[_storage_choice]

# The seed's names; MINIO_* fill in for AWS_* when set (self-hosted MinIO).
AWS_ACCESS_KEY_ID = env_str("AWS_ACCESS_KEY_ID") or env_str("MINIO_ACCESS_KEY")
AWS_SECRET_ACCESS_KEY = env_str("AWS_SECRET_ACCESS_KEY") or env_str("MINIO_SECRET_KEY")
AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME", "radiology")
AWS_S3_REGION_NAME = env_str("AWS_S3_REGION_NAME", "us-east-1")
AWS_S3_ENDPOINT_URL = env_str("AWS_S3_ENDPOINT_URL") or env_str("MINIO_ENDPOINT_URL")
AWS_S3_USE_SSL = env_bool("AWS_S3_USE_SSL", True)


def s3_storage_options() -> dict[str, object]:
    """Options of the S3 backend: v4 signatures, private objects, never overwrite."""
    return {
        "access_key": AWS_ACCESS_KEY_ID,
        "secret_key": AWS_SECRET_ACCESS_KEY,
        "bucket_name": AWS_STORAGE_BUCKET_NAME,
        "region_name": AWS_S3_REGION_NAME,
        "endpoint_url": AWS_S3_ENDPOINT_URL,
        "use_ssl": AWS_S3_USE_SSL,
        # Without s3v4 boto3 signs custom endpoints in us-east-1 with the old query auth.
        "signature_version": "s3v4",
        # MinIO and moto want path-style addressing; AWS accepts it too.
        "addressing_style": "path" if AWS_S3_ENDPOINT_URL else None,
        "default_acl": None,
        "querystring_auth": True,
        "file_overwrite": False,
    }


def filesystem_storage_options() -> dict[str, object]:
    """Options of the filesystem backend: files under MEDIA_ROOT, no public base URL."""
    return {"location": str(MEDIA_ROOT), "base_url": None}


if RADIOLOGY_STORAGE == S3_BACKEND:
    if not AWS_STORAGE_BUCKET_NAME:
        raise ImproperlyConfigured("AWS_STORAGE_BUCKET_NAME is required with RADIOLOGY_STORAGE=s3")
    _radiology_storage = {"BACKEND": S3_BACKEND, "OPTIONS": s3_storage_options()}
else:
    _radiology_storage = {"BACKEND": FILESYSTEM_BACKEND, "OPTIONS": filesystem_storage_options()}

STORAGES = {
    "default": {"BACKEND": FILESYSTEM_BACKEND, "OPTIONS": {"location": str(VAR_DIR / "default-media")}},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    "radiology": _radiology_storage,
}

# --- Radiology behaviour ----------------------------------------------------------------
RADIOLOGY_SIGNED_URLS = env_bool("RADIOLOGY_SIGNED_URLS", True)
RADIOLOGY_URL_EXPIRES = env_int("RADIOLOGY_URL_EXPIRES", 3600, minimum=1)
RADIOLOGY_MAX_URL_EXPIRES = env_int("RADIOLOGY_MAX_URL_EXPIRES", 86400, minimum=1)
# Lifetime of the presigned S3 URL a checked signed link redirects to.
RADIOLOGY_PRESIGNED_REDIRECT_SECONDS = env_int("RADIOLOGY_PRESIGNED_REDIRECT_SECONDS", 30, minimum=1)
# Where ingest spools incoming bytes while hashing and checking them (never in memory).
RADIOLOGY_STAGING_DIR = Path(env_str("RADIOLOGY_STAGING_DIR") or VAR_DIR / "staging")
# The DICOM listener (manage.py run_dicom_listener; apps/radiology/dimse/): its AE title and
# TCP port, the nodes that may call it (AE_TITLE@ADDRESS:ROLE[:MOVE_PORT],... with ROLE
# modality or workstation: apps/radiology/dimse/nodes.py, checked when the listener starts),
# and a demo switch: a role ("modality" or "workstation") given to any AE title calling from
# loopback (empty: off; for trying `make run` with storescu on the server itself).
RADIOLOGY_DICOM_AE_TITLE = env_str("RADIOLOGY_DICOM_AE_TITLE", "PACSLITE") or "PACSLITE"
RADIOLOGY_DICOM_PORT = env_int("RADIOLOGY_DICOM_PORT", 11112, minimum=1)
RADIOLOGY_DICOM_NODES = env_str("RADIOLOGY_DICOM_NODES", "") or ""
RADIOLOGY_DICOM_DEMO_LOCAL_ROLE = env_str("RADIOLOGY_DICOM_DEMO_LOCAL_ROLE", "") or ""
# Seconds between the listener's heartbeats in the database, which /healthz reads (it runs in
# another process): silent for 3 of them without a clean stop, it is "not_responding".
RADIOLOGY_DICOM_HEARTBEAT_SECONDS = env_int("RADIOLOGY_DICOM_HEARTBEAT_SECONDS", 10, minimum=1)
# Store and forward (apps/radiology/forwarding/, docs/forwarding.md): the servers this one hands
# its studies to, NAME=RULE@URL entries separated by commas, RULE being `all`, `on_request`
# (only when a doctor or tech asks) or modalities joined by + (CR+DX); checked by
# apps/radiology/outbox/destinations.py. Each destination's credential, the far side's API
# token of its forwarding-clinic account, is RADIOLOGY_FORWARD_TOKEN_<NAME> (NAME upper-cased)
# or its _FILE twin: never in this value, the repository or the database.
RADIOLOGY_FORWARD_DESTINATIONS = env_str("RADIOLOGY_FORWARD_DESTINATIONS", "") or ""
RADIOLOGY_FORWARD_TOKENS = {
    name: env_str(f"RADIOLOGY_FORWARD_TOKEN_{name.upper()}") or ""
    for name in (entry.partition("=")[0].strip() for entry in RADIOLOGY_FORWARD_DESTINATIONS.split(","))
    if name
}
# The forwarder process (manage.py run_forwarder): images pushed at once, the backoff after a
# failure (base seconds, doubled per failed attempt, with jitter, up to the cap), how long one
# chunk should take on the link (chunks are sized from the measured rate: a drop loses at most
# that much), the largest chunk, the seconds a connection may stall before it is given up, the
# wire compression of chunks (zstd or none), and its lease on a claimed image.
RADIOLOGY_FORWARD_IN_FLIGHT = env_int("RADIOLOGY_FORWARD_IN_FLIGHT", 4, minimum=1)
RADIOLOGY_FORWARD_BACKOFF_SECONDS = env_int("RADIOLOGY_FORWARD_BACKOFF_SECONDS", 2, minimum=1)
RADIOLOGY_FORWARD_BACKOFF_MAX_SECONDS = env_int("RADIOLOGY_FORWARD_BACKOFF_MAX_SECONDS", 900, minimum=1)
RADIOLOGY_FORWARD_CHUNK_SECONDS = env_int("RADIOLOGY_FORWARD_CHUNK_SECONDS", 4, minimum=1)
RADIOLOGY_FORWARD_MAX_CHUNK_BYTES = env_int("RADIOLOGY_FORWARD_MAX_CHUNK_BYTES", 8 * 1024**2, minimum=65536)
RADIOLOGY_FORWARD_TIMEOUT_SECONDS = env_int("RADIOLOGY_FORWARD_TIMEOUT_SECONDS", 60, minimum=1)
RADIOLOGY_FORWARD_COMPRESSION = env_str("RADIOLOGY_FORWARD_COMPRESSION", "zstd") or "zstd"
if RADIOLOGY_FORWARD_COMPRESSION not in {"zstd", "none"}:
    raise ImproperlyConfigured("RADIOLOGY_FORWARD_COMPRESSION must be zstd or none")
RADIOLOGY_FORWARD_LEASE_SECONDS = env_int("RADIOLOGY_FORWARD_LEASE_SECONDS", 300, minimum=10)
# Backups (manage.py backup_radiology / restore_radiology): an S3/MinIO destination's endpoint,
# region and keys when they are not the image store's (unset: the store's own), and where
# pg_dump/pg_restore live (unset: the newest /usr/lib/postgresql/N/bin, else PATH).
PACS_BACKUP_S3_ENDPOINT_URL = env_str("PACS_BACKUP_S3_ENDPOINT_URL")
PACS_BACKUP_S3_REGION = env_str("PACS_BACKUP_S3_REGION")
PACS_BACKUP_S3_ACCESS_KEY_ID = env_str("PACS_BACKUP_S3_ACCESS_KEY_ID")
PACS_BACKUP_S3_SECRET_ACCESS_KEY = env_str("PACS_BACKUP_S3_SECRET_ACCESS_KEY")
PACS_PG_BIN_DIR = env_str("PACS_PG_BIN_DIR")
# Free disk space ingest keeps, on the staging directory and on a filesystem store, beyond the
# file it receives: below it uploads, STOW-RS and import refuse with 507 insufficient_storage
# and /healthz says degraded (apps/radiology/storage/free_space.py). Default 2 GiB; 0: only
# the incoming file's own size is kept free.
RADIOLOGY_MIN_FREE_BYTES = env_int("RADIOLOGY_MIN_FREE_BYTES", 2 * 1024**3, minimum=0)
# A helper process per server process parses part of each big ingest batch on another core
# (apps/radiology/ingest/parse_helper.py); on by default where this process may use another core
# (its CPU affinity, as the app server's worker count: config/env.py usable_cores).
RADIOLOGY_INGEST_PARSE_HELPER = env_bool("RADIOLOGY_INGEST_PARSE_HELPER", usable_cores() > 1)
# Largest single file accepted by ingest (413 above it); default 2 GiB.
RADIOLOGY_MAX_UPLOAD_SIZE = env_int("RADIOLOGY_MAX_UPLOAD_SIZE", 2 * 1024**3, minimum=1)
# STOW-RS limits, checked while a request is received (413 as soon as one is crossed): parts
# per request, and bytes per request body (default: two files of the largest size).
RADIOLOGY_STOW_MAX_PARTS = env_int("RADIOLOGY_STOW_MAX_PARTS", 1000, minimum=1)
RADIOLOGY_STOW_MAX_REQUEST_BYTES = env_int("RADIOLOGY_STOW_MAX_REQUEST_BYTES", 4 * 1024**3, minimum=1)
# Partial uploads idle longer than this are purged by `manage.py purge_radiology_uploads`.
RADIOLOGY_UPLOAD_STALE_HOURS = env_int("RADIOLOGY_UPLOAD_STALE_HOURS", 72, minimum=1)
# Rendering and frame limits (apps/radiology/dicomweb/pixels.py), checked from the stored
# header before any pixel is decoded. Decoded bytes one request may decode (rows x columns x
# samples x bytes per sample x frames asked for; over it: 422 image_too_large_to_render).
# Default 64 MiB: a 4096 x 5120 16-bit mammogram (40 MiB) and the largest single-frame
# images in use (4800 x 6000 16-bit FFDM, 55 MiB; 4096 x 5120 RGB photos, 60 MiB) fit.
# Measured peak memory above idle for an image just under it (63 MiB, 5632 x 5900 16-bit):
# ~100 MiB uncompressed, ~160 MiB RLE (the decoder holds its input and two copies of its
# output); a 16384 x 16384 16-bit image (512 MiB) or a 65535 x 65535 bomb never gets near.
RADIOLOGY_MAX_DECODED_BYTES = env_int("RADIOLOGY_MAX_DECODED_BYTES", 64 * 1024**2, minimum=1)
# Largest side of a rendered image or thumbnail (?viewport= above it: 400 viewport_too_large).
RADIOLOGY_MAX_RENDER_SIDE = env_int("RADIOLOGY_MAX_RENDER_SIDE", 2048, minimum=1)
# Distinct frames one WADO-RS frames request may list (above it: 400 too_many_frames).
RADIOLOGY_MAX_FRAMES_PER_REQUEST = env_int("RADIOLOGY_MAX_FRAMES_PER_REQUEST", 1000, minimum=1)
# The self-hosted OHIF viewer; empty selects the built-in lightweight viewer (seed: None).
OHIF_VIEWER_URL = env_str("OHIF_VIEWER_URL", "http://127.0.0.1:3000/viewer")
# Where `make viewer` unpacks the pinned @ohif/app dist.
OHIF_DIST_DIR = Path(env_str("OHIF_DIST_DIR") or VAR_DIR / "ohif" / "dist")
# Absolute base of links handed out (signed image URLs); empty means "from the request".
PACS_PUBLIC_URL = (env_str("PACS_PUBLIC_URL") or "").rstrip("/")


# CORS for the viewer's origin on DICOMweb only (OHIF runs on its own origin and sends
# Authorization: Bearer, which needs a preflight answered without credentials).
def _origin_of(url: str | None) -> list[str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url or "")
    return [f"{parts.scheme}://{parts.netloc}"] if parts.scheme and parts.netloc else []


CORS_ALLOWED_ORIGINS = env_list("RADIOLOGY_CORS_ORIGINS", _origin_of(OHIF_VIEWER_URL))
CORS_URLS_REGEX = r"^/api/v1/radiology/dicomweb/.*$"
CORS_ALLOW_CREDENTIALS = False
CORS_ALLOW_METHODS = ["GET", "OPTIONS", "POST"]
CORS_EXPOSE_HEADERS = ["Content-Type", "Content-Length", "Content-Location"]
CORS_PREFLIGHT_MAX_AGE = 86400

# Rendered images and thumbnails (apps/radiology/dicomweb/render_cache.py): a file cache shared by the
# workers of one host; it only ever holds derived, re-creatable bytes.
CACHES = {
    # Shared by the workers of one host (the token endpoint's throttle counts live here).
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(VAR_DIR / "cache"),
    },
    # Not FileBasedCache: it lists the whole directory on every write (see RenderFileCache).
    "renders": {
        "BACKEND": "apps.radiology.dicomweb.render_cache.RenderFileCache",
        "LOCATION": str(Path(env_str("RADIOLOGY_RENDER_CACHE_DIR") or VAR_DIR / "render-cache")),
        "OPTIONS": {
            "MAX_ENTRIES": env_int("RADIOLOGY_RENDER_CACHE_ENTRIES", 20000, minimum=100),
            # Bytes the render cache may hold (oldest renders removed first); default 1 GiB.
            "MAX_BYTES": env_int("RADIOLOGY_RENDER_CACHE_MAX_BYTES", 1024**3, minimum=1024**2),
        },
    },
}

# A series of 1,000 instances or more has its WADO-RS metadata built into the render cache once no
# image has joined it for this many seconds, so a viewer's first request reads it rather than
# 1,000s of rows (apps/radiology/dicomweb/metadata_warming.py). 0: only built on request.
RADIOLOGY_METADATA_PREBUILD_SECONDS: float | None = env_int("RADIOLOGY_METADATA_PREBUILD_SECONDS", 10) or None

# Only behind a proxy that appends to it: the audit trail then records X-Forwarded-For's last hop.
RADIOLOGY_TRUST_X_FORWARDED_FOR = env_bool("RADIOLOGY_TRUST_X_FORWARDED_FOR", False)
# The same, for requests that carry this key in X-PACS-Proxy-Key: `make run`'s nginx in front of the
# app servers on both ports (config/front_proxy.py) sends it, while another proxy on the same box
# (a clinic's TLS proxy) would pass on an X-Forwarded-For that is its client's own claim.
# scripts/serve.sh makes a new one at every start; empty: no such proxy.
RADIOLOGY_VIEWER_PROXY_KEY = env_str("RADIOLOGY_VIEWER_PROXY_KEY", "") or ""
# Request events are written in groups, one commit per this many milliseconds and process
# (apps/radiology/access/audit_writer.py: a WAL flush per frame was a quarter of a worker's
# time); 0 writes each at once. A SIGKILL or power cut loses at most this interval's events.
RADIOLOGY_AUDIT_FLUSH_MS = env_int("RADIOLOGY_AUDIT_FLUSH_MS", 100, minimum=0)

# --- Login protection (django-axes; apps/radiology/access/login_protection.py) -----------------------
# Failed logins counted per username AND client address together, on the token endpoint and
# /admin/login/: one account guessed at from a clinic's NAT locks out that account from that
# address only. RADIOLOGY_LOGIN_FAILURE_LIMIT failures lock it for RADIOLOGY_LOGIN_COOLOFF_MINUTES
# (then it unlocks by itself); `manage.py axes_reset_username <name>` unlocks at once.
AXES_ENABLED = env_bool("RADIOLOGY_LOGIN_PROTECTION", True)
AXES_FAILURE_LIMIT = env_int("RADIOLOGY_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env_int("RADIOLOGY_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The address the audit trail records (REMOTE_ADDR, or the trusted proxy's hop).
AXES_CLIENT_IP_CALLABLE = "apps.radiology.access.audit.client_address"
AXES_LOCKOUT_CALLABLE = "apps.radiology.access.login_protection.lockout_response"
# The audit trail (AuditEvent) is the one record of logins; axes keeps only its counters.
AXES_DISABLE_ACCESS_LOG = True
AXES_ENABLE_ACCESS_FAILURE_LOG = False

# Every POST to the token endpoint from one client address, whatever the username tried: one
# address spraying a few passwords over every account gets a 429 (never a lockout) past this.
RADIOLOGY_TOKEN_RATE_PER_ADDRESS = env_str("RADIOLOGY_TOKEN_RATE_PER_ADDRESS", "60/min")

DEMO_PASSWORD = env_str("DEMO_PASSWORD", "pacs-demo-2026")

REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes anonymous requests 401, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.radiology.access.token_auth.RadiologyTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "EXCEPTION_HANDLER": "apps.radiology.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": None,
    # Attempts on the token endpoint are throttled per username AND client address (never per
    # address alone: a clinic's NAT would share one budget); django-axes locks out failures.
    "DEFAULT_THROTTLE_RATES": {"auth-token": env_str("RADIOLOGY_TOKEN_RATE", "10/min")},
    # Which address that is: unset, DRF counts by the whole X-Forwarded-For header, which a
    # client makes up afresh for every guess. The connection's address, or behind a trusted
    # proxy the hop it added (the address the audit trail records).
    "NUM_PROXIES": 1 if RADIOLOGY_TRUST_X_FORWARDED_FOR else 0,
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
}

SPECTACULAR_SETTINGS = {
    # Swagger UI from the pinned drf-spectacular-sidecar package under STATIC_URL, not a CDN:
    # no third-party script runs on the admin's origin (issue 14).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # validatorUrl off: Swagger UI would otherwise load a badge from validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "TITLE": "PACS-lite API",
    "DESCRIPTION": "Radiology image store of the EMR: studies, series, images, signed URLs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # 3.1 schemas are plain JSON Schema, so tests validate real responses with jsonschema.
    "OAS_VERSION": "3.1.0",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Log records never carry patient names, ids or file contents: only database ids and UIDs.
# Link tokens, signatures and Authorization credentials are redacted from every line by one
# filter (config/log_redaction.py) on every handler; the app server's own handlers (granian's)
# get it from config/app_server.py. Django's defaults put unfiltered handlers on "django"
# (console, mail_admins with the full request) and "django.server" (runserver's request lines):
# both replaced here, "django" now reaching the console through the root logger.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "config.log_redaction.RedactSecrets"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "django.server": {
            "()": "django.utils.log.ServerFormatter",
            "format": "[{server_time}] {message}",
            "style": "{",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_secrets"]},
        "django.server": {
            "class": "logging.StreamHandler",
            "formatter": "django.server",
            "filters": ["redact_secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": ["django.server"], "level": "INFO", "propagate": False},
        # pynetdicom logs every DIMSE message at INFO (and dumps PDUs at DEBUG): lines per
        # instance that cost a retrieve ~13% of its time. Its warnings and errors still show.
        "pynetdicom": {"handlers": [], "level": "WARNING", "propagate": True},
    },
}
