"""The S3/MinIO backend of the image store, in a module of its own so that only a process whose
STORAGES names it imports boto3, botocore and cryptography (~16 MiB of RSS together): on the
filesystem store (the default) no process does. STORAGES names it as
apps.radiology.storage.RadiologyS3Storage, which the package resolves to this class on first use."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from storages.backends.s3 import S3Storage

from apps.radiology.errors import StorageFailure
from apps.radiology.storage import _s3_key


class RadiologyS3Storage(S3Storage):
    """S3/MinIO backend that refuses to overwrite: each write is a conditional PUT.

    django-storages checks existence and then uploads, which leaves a window in which two
    writers of one key both succeed and the later bytes replace the earlier. S3, MinIO and
    moto honour `If-None-Match: *` on PUT, so the store itself arbitrates. s3transfer's
    managed upload does not pass that header, hence a single streamed put_object (objects
    here are far below S3's 5 GB single-PUT limit).
    """

    max_attempts = 5

    def _save(self, name: str, content: Any) -> str:
        # The backend's own upload parameters (ContentType, ACL, AWS_S3_OBJECT_PARAMETERS): its
        # private _get_write_parameters(name, content), checked against django-storages 1.14.6
        # (tests/fastpaths/test_private_api_versions.py fails if it changes).
        params = self._get_write_parameters(name, content)
        for _attempt in range(self.max_attempts):
            if hasattr(content, "seek"):
                content.seek(0)
            try:
                self.connection.meta.client.put_object(
                    Bucket=self.bucket_name,
                    Key=_s3_key(self, name),
                    Body=content,
                    IfNoneMatch="*",
                    **params,
                )
                return name
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status not in (409, 412):
                    raise
                name = self.get_available_name(name)
        raise StorageFailure("Could not find a free key for the object.")
