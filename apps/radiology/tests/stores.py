"""The radiology store in tests: the S3 options of moto's server, and switching a test to them.

One place for what the root conftest's `radiology_store` fixture and the tests that pick their
own bucket (a missing one, a second one) need; moto accepts any credentials ("testing").
"""

from __future__ import annotations

from typing import Any

import boto3

S3_BACKEND = "apps.radiology.storage.RadiologyS3Storage"
FILESYSTEM_BACKEND = "django.core.files.storage.FileSystemStorage"
_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def s3_options(endpoint: str, bucket: str) -> dict[str, Any]:
    """STORAGES["radiology"]["OPTIONS"] for a bucket on moto's server."""
    return {
        "access_key": _CREDENTIALS["aws_access_key_id"],
        "secret_key": _CREDENTIALS["aws_secret_access_key"],
        "bucket_name": bucket,
        "region_name": _CREDENTIALS["region_name"],
        "endpoint_url": endpoint,
        "signature_version": "s3v4",
        "addressing_style": "path",
        "default_acl": None,
        "querystring_auth": True,
        "file_overwrite": False,
    }


def use_s3_store(settings: Any, endpoint: str, bucket: str) -> None:
    """Point the radiology store of this test (pytest-django's `settings`) at a bucket."""
    settings.STORAGES = {
        **settings.STORAGES,
        "radiology": {"BACKEND": S3_BACKEND, "OPTIONS": s3_options(endpoint, bucket)},
    }


def s3_client(endpoint: str) -> Any:
    """A boto3 client of moto's server, to make buckets and list what a test stored."""
    return boto3.client("s3", endpoint_url=endpoint, **_CREDENTIALS)
