"""PACSLiteService: the seed's documented service calls, each handing over to the module that does the work.

`from apps.radiology.pacs_lite_service import PACSLiteService` is how the seed (and the EMR's
code written against it) reaches PACS-lite, so the class keeps exactly its static methods and
signatures. The work lives elsewhere: ingest (spooling, checking, study and series creation,
storing, cleaning up) in apps/radiology/ingest/, whose pipeline every way in goes through;
signed links in apps/radiology/access/signing.py; object keys in apps/radiology/storage.
New code calls those modules directly.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from apps.radiology import storage
from apps.radiology.access import signing
from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.ingest import cleanup, commit, pipeline, resolve
from apps.radiology.ingest.pipeline import IngestItem, IngestResult, StagedFile
from apps.radiology.models import RadiologyStudy

# Names importable from here before ingest had its own package; new code imports them from
# imagefiles.declared and ingest.pipeline.
__all__ = ["DeclaredImage", "IngestItem", "IngestResult", "PACSLiteService", "StagedFile"]


class PACSLiteService:
    """The seed's service: study and series creation, storage, URLs, and ingest.

    Each call is the function that does the work, under the seed's name (the signatures are
    the seed's; the docstrings are the functions' own), so the facade cannot drift from it.
    """

    create_study_for_order = staticmethod(resolve.create_study_for_order)
    create_series_for_study = staticmethod(resolve.create_series_for_study)
    generate_file_key = staticmethod(storage.build_file_key)
    store_image = staticmethod(commit.store_new_object)
    generate_image_url = staticmethod(signing.image_url)
    revoke_viewer_token = staticmethod(signing.revoke_viewer_token)
    purge_interrupted_ingests = staticmethod(cleanup.purge_interrupted_ingests)
    ingest_image = staticmethod(pipeline.ingest_image)
    ingest_images = staticmethod(pipeline.ingest_images)

    @staticmethod
    def generate_viewer_url(
        *, study_uid: str, user: AbstractBaseUser, expires_in: int | None = None, base_url: str = ""
    ) -> str:
        """A viewer URL carrying a signed token that grants read of this one study."""
        study = RadiologyStudy.objects.get(study_uid=study_uid)
        return signing.viewer_url(study=study, user=user, expires_in=expires_in, base_url=base_url)
