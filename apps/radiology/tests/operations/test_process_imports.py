"""What each long-running process of `make run` imports at start: memory of every process.

Issue 19 put the total RSS of the served processes (supervisord, the app server, nginx, the
DICOM listener, the forwarder) under 600 MiB. Part of it was keeping heavy libraries out of the
processes that never use them: boto3/botocore/django-storages' S3 backend (~16 MiB) out of
every process on the filesystem store (the default), and pydicom with numpy and Pillow
(~24 MiB) out of the forwarder. One module-level import anywhere on the way brings them back,
so these tests start a fresh interpreter, as supervisord does, and list what it loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

REPO = Path(settings.BASE_DIR)

S3_LIBRARIES = ("boto3", "botocore", "s3transfer", "storages.backends.s3")
PIXEL_LIBRARIES = ("pydicom", "numpy", "PIL.Image")


def _loaded_after(code: str, tmp_path: Path, **environment: str) -> dict[str, object]:
    """Run `code` after django.setup() in a fresh interpreter on the filesystem store; it prints JSON."""
    script = "import json, sys\nimport django\ndjango.setup()\n" + code
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "MINIO_", "RADIOLOGY_"))},
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "RADIOLOGY_STORAGE": "filesystem",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "PACS_VAR_DIR": str(tmp_path / "var"),
        **environment,
    }
    result = subprocess.run(  # noqa: S603 (this interpreter, fixed code)
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _which_loaded(setup: str, names: tuple[str, ...], tmp_path: Path) -> dict[str, bool]:
    """Whether each module of `names` is loaded after `setup` ran in a fresh interpreter."""
    return _loaded_after(setup + f"print(json.dumps({{name: name in sys.modules for name in {names!r}}}))\n", tmp_path)


VIEW_MODULES = ("config.urls", "config.viewer_urls", "apps.radiology.dicomweb.views", "apps.radiology.api.views")


def test_a_web_worker_loads_its_views_before_its_first_request_and_never_the_s3_backend(tmp_path: Path) -> None:
    """An app server worker serving the API's and the viewer's origins, once config.wsgi is loaded (as
    granian loads it before the worker takes a request): both URLconfs and their views are
    imported (the first request pays no import), and on the filesystem store no S3 library."""
    names = VIEW_MODULES + S3_LIBRARIES
    assert _which_loaded("from config.wsgi import application\n", names, tmp_path) == {
        **dict.fromkeys(VIEW_MODULES, True),
        **dict.fromkeys(S3_LIBRARIES, False),
    }


def test_the_forwarder_starts_without_the_s3_backend_or_pydicom(tmp_path: Path) -> None:
    """`manage.py run_forwarder --skip-checks` as supervisord starts it: settings, apps, admin, the command."""
    names = S3_LIBRARIES + PIXEL_LIBRARIES
    assert _which_loaded(
        "from django.core.management import load_command_class\n"
        "load_command_class('apps.radiology', 'run_forwarder')\n",
        names,
        tmp_path,
    ) == dict.fromkeys(names, False)


def test_the_dicom_listener_starts_without_the_s3_backend(tmp_path: Path) -> None:
    assert _which_loaded(
        "from django.core.management import load_command_class\n"
        "load_command_class('apps.radiology', 'run_dicom_listener')\n",
        S3_LIBRARIES,
        tmp_path,
    ) == dict.fromkeys(S3_LIBRARIES, False)


def test_the_filesystem_store_works_without_botocore_loaded(tmp_path: Path) -> None:
    """The store's error handling names botocore's errors only once botocore is loaded: before, a
    missing object, a full disk and the S3 test all answer as they did, and nothing loads it."""
    loaded = _loaded_after(
        "import errno\n"
        "from apps.radiology import storage\n"
        "from apps.radiology.errors import StoredObjectMissing\n"
        "key = 'radiology/1.2/1.2.3/1.2.3.4/a.dcm'\n"
        "answers = {'is_s3': storage.is_s3(), 'exists': storage.object_exists(key),\n"
        "    'size': storage.object_size(key), 'sizes': storage.object_sizes([key, key + 'x']),\n"
        "    'modified': storage.object_modified_time(key), 'opened': storage.open_object(key),\n"
        "    'full': storage.is_out_of_space(OSError(errno.ENOSPC, 'full')),\n"
        "    'other': storage.is_out_of_space(ValueError('not a write'))}\n"
        "try:\n"
        "    storage.read_object_range(key, 0, 4)\n"
        "except StoredObjectMissing:\n"
        "    answers['range'] = 'missing'\n"
        "storage.save_new_object(key, __import__('io').BytesIO(b'DICM'), content_type='application/dicom')\n"
        "answers['read'] = storage.read_object_range(key, 1, 2).decode()\n"
        "answers['path'] = storage.filesystem_path(key) is not None\n"
        "answers['botocore'] = 'botocore' in sys.modules\n"
        "print(json.dumps(answers))\n",
        tmp_path,
    )
    assert loaded == {
        "is_s3": False,
        "exists": False,
        "size": None,
        "sizes": {"radiology/1.2/1.2.3/1.2.3.4/a.dcm": None, "radiology/1.2/1.2.3/1.2.3.4/a.dcmx": None},
        "modified": None,
        "opened": None,
        "full": True,
        "other": False,
        "range": "missing",
        "read": "IC",
        "path": True,
        "botocore": False,
    }


def test_an_s3_store_is_one_from_the_first_question(tmp_path: Path) -> None:
    """is_s3() in a process that has not touched the store yet: making it loads the backend first."""
    loaded = _loaded_after(
        "from apps.radiology import storage\n"
        "before = 'botocore' in sys.modules\n"
        "print(json.dumps({'before': before, 'is_s3': storage.is_s3(), 'after': 'botocore' in sys.modules}))\n",
        tmp_path,
        RADIOLOGY_STORAGE="s3",
        AWS_STORAGE_BUCKET_NAME="scans",
        AWS_S3_ENDPOINT_URL="http://127.0.0.1:9",
    )
    assert loaded == {"before": False, "is_s3": True, "after": True}


def test_the_s3_backend_stays_reachable_by_its_settings_name() -> None:
    """STORAGES names apps.radiology.storage.RadiologyS3Storage; the class now lives in storage/s3.py."""
    from django.utils.module_loading import import_string

    from apps.radiology.storage.s3 import RadiologyS3Storage

    assert import_string("apps.radiology.storage.RadiologyS3Storage") is RadiologyS3Storage
    assert settings.S3_BACKEND == "apps.radiology.storage.RadiologyS3Storage"
