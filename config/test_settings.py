"""Settings for the test suite: the real settings with a throwaway key and debug-style hosts.

DATABASE_URL and RADIOLOGY_STORAGE still come from the environment, so .ci/run can run
the same suite against PostgreSQL.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-key-not-a-secret")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
# Tests talk plain HTTP to live servers; the HTTPS defaults are tested on their own.
os.environ.setdefault("PACS_ALLOW_PLAIN_HTTP", "1")
os.environ.setdefault("RADIOLOGY_TOKEN_RATE", "100000/min")
os.environ.setdefault("RADIOLOGY_TOKEN_RATE_PER_ADDRESS", "100000/min")
# Every file parsed in the test process (and in the servers tests start), so a test sees the
# same work whatever ran before it; test_parse_helper.py turns the helper on.
os.environ.setdefault("RADIOLOGY_INGEST_PARSE_HELPER", "0")
# No free-space margin: the suite must pass on a nearly full development disk. The full-disk
# tests (apps/radiology/tests/ingest/test_full_disk.py) set their own.
os.environ.setdefault("RADIOLOGY_MIN_FREE_BYTES", "0")
# Each audit event written at once (in the test and in the servers tests start), so a test reads
# its request's event right after it; test_audit_writer.py tests the grouped writes.
os.environ.setdefault("RADIOLOGY_AUDIT_FLUSH_MS", "0")

from config.settings import *  # noqa: F403

# Fast hashing for the many users the tests create.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Renders cached per test process in memory, never in the developer's var/.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "renders": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "renders"},
}

# No builder thread behind the tests' backs: a series built ahead after its test ended would land in
# the next test's render cache. tests/dicomweb/test_metadata_warming.py turns it on where it tests it.
RADIOLOGY_METADATA_PREBUILD_SECONDS = None

# WhiteNoise serves STATIC_ROOT; tests use the app directories (no collectstatic needed).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405
