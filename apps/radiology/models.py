"""PACS-lite's records: the EMR's radiology order, and the Study / Series / Image it stores.

Policy: image bytes live in STORAGES["radiology"] (filesystem, S3 or MinIO), never in the
database; a row only names its file by `file_key`. Images are immutable once stored:
their file, checksum and UIDs cannot change (guarded here and by database triggers) and
nothing deletes them: every foreign key to them PROTECTs. Patient name and id on a study
are a snapshot taken when the study was created, not a link the EMR can rewrite.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.radiology.errors import ImmutableImage, ImmutableRecord
from apps.radiology.fastpaths.encoded_json import EncodedJSONEncoder
from apps.radiology.imagefiles.declared import DECLARED_FIELDS, Declared

DICOM_MIME_TYPE = "application/dicom"
JPEG_MIME_TYPE = "image/jpeg"
UID_MAX_LENGTH = 64


class Modality(models.TextChoices):
    CR = "CR", "Computed radiography"
    DX = "DX", "Digital radiography"
    CT = "CT", "Computed tomography"
    MR = "MR", "Magnetic resonance"
    US = "US", "Ultrasound"
    MG = "MG", "Mammography"
    XA = "XA", "X-ray angiography"
    NM = "NM", "Nuclear medicine"
    PT = "PT", "PET"
    OT = "OT", "Other"


def generate_accession_number() -> str:
    """Make an accession number that fits DICOM's 16-character SH value."""
    return f"R{uuid.uuid4().hex[:12].upper()}"


class RadiologyOrder(models.Model):
    """The EMR's request for an imaging exam; its images form exactly one study."""

    class Status(models.TextChoices):
        ORDERED = "ordered", "Ordered"
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        CANCELLED = "cancelled", "Cancelled"

    visit = models.ForeignKey("emr.Visit", on_delete=models.PROTECT, related_name="radiology_orders")
    modality = models.CharField(max_length=16, choices=Modality.choices)
    exam_requested = models.CharField(max_length=255)
    clinical_notes = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ORDERED, db_index=True)
    ordering_doctor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="radiology_orders"
    )
    accession_number = models.CharField(max_length=16, unique=True, default=generate_accession_number)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Order {self.pk} ({self.modality} {self.exam_requested})"


class RadiologyStudy(models.Model):
    """One study per order, keyed by its DICOM StudyInstanceUID (or a generated 2.25 UID)."""

    radiology_order = models.OneToOneField(RadiologyOrder, on_delete=models.PROTECT, related_name="study")
    study_uid = models.CharField(max_length=UID_MAX_LENGTH, unique=True)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    study_description = models.CharField(max_length=255, blank=True)
    modality = models.CharField(max_length=16, blank=True)
    accession_number = models.CharField(max_length=16, blank=True)
    referring_physician_name = models.CharField(max_length=255, blank=True)
    patient_name = models.CharField(max_length=255, blank=True)
    # The same snapshot in DICOM Person Name form (Family^Given), for DICOMweb answers.
    patient_dicom_name = models.CharField(max_length=255, blank=True)
    patient_id = models.CharField(max_length=64, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    # On a regional server: the forwarding clinic that sent the study (its account's name), "" otherwise.
    source_clinic = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "radiology studies"
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["-created_at", "-id"], name="rad_study_newest"),
            models.Index(fields=["patient_id"], name="rad_study_patient"),
            models.Index(fields=["modality"], name="rad_study_modality"),
            models.Index(fields=["study_date"], name="rad_study_date"),
            models.Index(fields=["accession_number"], name="rad_study_accession"),
        ]

    def __str__(self) -> str:
        return self.study_uid


class RadiologySeries(models.Model):
    """A series within a study, keyed by its DICOM SeriesInstanceUID (or a generated 2.25 UID)."""

    study = models.ForeignKey(RadiologyStudy, on_delete=models.PROTECT, related_name="series")
    series_uid = models.CharField(max_length=UID_MAX_LENGTH, unique=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_description = models.CharField(max_length=255, blank=True)
    modality = models.CharField(max_length=16, blank=True)
    series_date = models.DateField(null=True, blank=True)
    series_time = models.TimeField(null=True, blank=True)
    body_part_examined = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["series_number", "id"]
        verbose_name_plural = "radiology series"
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["study", "series_number"], name="rad_series_study_number"),
            models.Index(fields=["modality"], name="rad_series_modality"),
        ]

    def __str__(self) -> str:
        return self.series_uid


class WriteOnceQuerySet(models.QuerySet[Any]):
    """Bulk updates and deletes are refused: these rows are written once."""

    def update(self, **kwargs: Any) -> int:
        raise self.model.immutable_error()

    def delete(self) -> tuple[int, dict[str, int]]:
        raise self.model.immutable_error()


class WriteOnceModel(models.Model):
    """A row written once: saving it again, or deleting it, raises `immutable_error`."""

    immutable_error: ClassVar[type[ImmutableRecord]] = ImmutableRecord

    objects = WriteOnceQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise self.immutable_error()
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise self.immutable_error()


class _ImageManager(models.Manager.from_queryset(WriteOnceQuerySet)):  # type: ignore[misc]
    """Images come without metadata_text (kilobytes each) unless a query names it: only the
    series and study metadata answers read it, through values_list."""

    def get_queryset(self) -> WriteOnceQuerySet:
        return super().get_queryset().defer("metadata_text")


class PatientIdentityCheck(models.TextChoices):
    """What ingest found comparing a file's own PatientID with its order's patient (see
    imagefiles/patient_identity.py): the image's record of a discrepancy."""

    NOT_CHECKED = "not_checked", "Not checked (stored before identity checks)"
    MATCHED = "matched", "The file's PatientID is the order's patient's hospital number"
    MISSING_IN_FILE = "missing_in_file", "The file has no PatientID"
    UNKNOWN_TO_EMR = "unknown_to_emr", "The file's PatientID is no EMR patient's hospital number"
    CONFIRMED_OTHER_PATIENT = "confirmed_other_patient", "The file's PatientID is another patient's; a tech confirmed"
    NOT_APPLICABLE = "not_applicable", "A photo (JPEG): no patient identity in the file"


# Longest DICOM Person Name: three component groups of at most 64 characters each, with "=".
PERSON_NAME_MAX_LENGTH = 194


class RadiologyImage(WriteOnceModel):
    """One stored file (a DICOM instance or a JPEG), immutable once created."""

    immutable_error = ImmutableImage

    # Fields no one may change once the row exists; database triggers guard them too
    # (migration 0002), so even raw SQL or a bulk update from a shell cannot.
    IMMUTABLE_FIELDS: ClassVar[tuple[str, ...]] = ("series_id", "image_uid", "file_key", "file_size", "checksum")

    series = models.ForeignKey(RadiologySeries, on_delete=models.PROTECT, related_name="images")
    image_uid = models.CharField(max_length=UID_MAX_LENGTH, unique=True)
    sop_class_uid = models.CharField(max_length=UID_MAX_LENGTH, blank=True)
    transfer_syntax_uid = models.CharField(max_length=UID_MAX_LENGTH, blank=True)
    instance_number = models.IntegerField(null=True, blank=True)
    number_of_frames = models.PositiveIntegerField(default=1)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    file_key = models.CharField(max_length=1024, unique=True)
    filename = models.CharField(max_length=255)
    file_size = models.BigIntegerField()
    mime_type = models.CharField(max_length=64)
    checksum = models.CharField(max_length=64, help_text="SHA-256 of the stored bytes, hex, computed server-side")
    # The stored header (imagefiles/stored_header.py writes and reads it, with metadata_text and
    # pixel_data["header"]). Its encoder writes the JSON text made at parse (fastpaths/encoded_json.py),
    # not a new one.
    image_metadata = models.JSONField(default=dict, blank=True, encoder=EncodedJSONEncoder)
    # Where the pixel data, each frame and other bulk elements lie in the stored file (from
    # ingest), so DICOMweb serves frames and bulk data by byte range without re-parsing; beside
    # them, pixel_data["header"]: the header's pixel description (see stored_header.py).
    pixel_data = models.JSONField(default=dict, blank=True)
    bulk_data = models.JSONField(default=dict, blank=True)
    # A DICOM instance's whole WADO-RS metadata as JSON text, bulk data as BulkDataURIs relative
    # to the instance ("/bulk/<tag>"), written once at ingest: a series' metadata is then its
    # rows' text joined, with no JSON parsed or written per request. Empty for a JPEG (its
    # Secondary Capture view takes fields from study and series rows, which may be edited).
    metadata_text = models.TextField(blank=True, default="", editable=False)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="radiology_images"
    )
    # The file's own patient identity, kept because every reader is shown the study's (the EMR's)
    # instead; `patient_identity` says how the two compared at ingest, and
    # `patient_identity_reason` is the tech's reason for storing a file that names another patient.
    patient_identity = models.CharField(
        max_length=32, choices=PatientIdentityCheck.choices, default=PatientIdentityCheck.NOT_CHECKED
    )
    file_patient_id = models.CharField(max_length=64, blank=True)
    file_patient_name = models.CharField(max_length=PERSON_NAME_MAX_LENGTH, blank=True)
    patient_identity_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = _ImageManager()

    class Meta:
        ordering = ["instance_number", "id"]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["series", "instance_number"], name="rad_image_series_number"),
        ]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.CheckConstraint(condition=Q(file_size__gt=0), name="rad_image_file_size_positive"),
            models.CheckConstraint(
                condition=Q(mime_type__in=[DICOM_MIME_TYPE, JPEG_MIME_TYPE]), name="rad_image_mime_type_known"
            ),
        ]

    def __str__(self) -> str:
        return self.image_uid

    @property
    def is_dicom(self) -> bool:
        return self.mime_type == DICOM_MIME_TYPE


class ViewerToken(models.Model):
    """The record of one viewer token: which study it opens, for whom, until when.

    The token itself (a signed string in the viewer URL) is never stored; its id is, so a
    token can be revoked and its use audited.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey(RadiologyStudy, on_delete=models.PROTECT, related_name="viewer_tokens")
    issued_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    issued_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-issued_at"]

    def __str__(self) -> str:
        return str(self.id)


def _declared_column(spec: Declared) -> models.Field:
    """The upload column of one declared field: blank (or null) when the device said nothing."""
    if spec.kind == "int32":
        return models.IntegerField(null=True, blank=True, help_text=spec.help_text)
    if spec.kind == "flag":
        return models.BooleanField(default=False, help_text=spec.help_text)
    return models.CharField(max_length=spec.max_length, blank=True, help_text=spec.help_text)


# One column per DeclaredImage field, derived from its one definition in declared.py (built with
# type() rather than a class body because the names come from there).
DeclaredImageColumns = type(
    "DeclaredImageColumns",
    (models.Model,),
    {
        "__module__": __name__,
        "__doc__": "What a device declared about the image it uploads: one column per DeclaredImage field.",
        "Meta": type("Meta", (), {"abstract": True}),
        **{name: _declared_column(spec) for name, spec in DECLARED_FIELDS.items()},
    },
)


class RadiologyUpload(DeclaredImageColumns):
    """One file a device is sending: its metadata first, then its bytes, possibly in chunks.

    `client_upload_id` is the device's idempotency key (unique per user). Chunks are staged as
    objects under `staging/uploads/{id}/` in the radiology store (shared by every app server),
    and `chunk_offsets` lists the start of each one in order; `received_bytes` is where the
    next chunk must start. When the last byte arrives the file goes through the one ingest path.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    client_upload_id = models.UUIDField()
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # None: the upload names an accession number instead (a forwarding clinic's upload): the file
    # goes to the order with that accession, or is held in the unmatched inbox (`unmatched`).
    radiology_order = models.ForeignKey(
        RadiologyOrder, on_delete=models.PROTECT, null=True, blank=True, related_name="uploads"
    )
    accession_number = models.CharField(max_length=16, blank=True)
    filename = models.CharField(max_length=255)
    file_size = models.BigIntegerField()
    mime_type = models.CharField(max_length=64)
    checksum = models.CharField(max_length=64)
    # What the device declared about the image: the columns of DeclaredImageColumns (declared.py).
    # A tech's reason for storing the file though its PatientID is another patient's ("": not confirmed).
    patient_mismatch_reason = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    received_bytes = models.BigIntegerField(default=0)
    chunk_offsets = models.JSONField(default=list, blank=True)
    image = models.ForeignKey(RadiologyImage, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    # A completed upload by accession whose file was held for a tech instead of stored under an order.
    unmatched = models.ForeignKey("UnmatchedImage", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    error_code = models.CharField(max_length=64, blank=True)
    error_detail = models.CharField(max_length=255, blank=True)
    error_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["uploaded_by", "client_upload_id"], name="rad_upload_client_id_per_user"),
            models.CheckConstraint(
                condition=Q(radiology_order__isnull=False) | ~Q(accession_number=""),
                name="rad_upload_order_or_accession",
            ),
            models.CheckConstraint(condition=Q(file_size__gt=0), name="rad_upload_file_size_positive"),
            models.CheckConstraint(
                condition=Q(received_bytes__gte=0) & Q(received_bytes__lte=models.F("file_size")),
                name="rad_upload_received_within_size",
            ),
        ]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["status", "updated_at"], name="rad_upload_status_updated"),
            # What a forwarding clinic delivered of a study (ingest/upload_sync.delivered_images).
            models.Index(fields=["uploaded_by", "study_uid"], name="rad_upload_user_study"),
        ]

    def __str__(self) -> str:
        return f"Upload {self.pk} ({self.status})"


def now() -> dt.datetime:
    """timezone.now(), looked up when called: a field default bound to timezone.now itself would
    keep the function of import time, and tests set the clock by replacing timezone.now."""
    return timezone.now()


class AuditEvent(WriteOnceModel):
    """One read or write of clinical data: who, in what role, what, how, when, from where, outcome.

    Append-only: the model refuses changes and deletes, a database trigger refuses updates,
    and admin shows it read-only. Never holds file contents, tokens or search values.
    """

    class IdentityAction(models.TextChoices):
        """The actions beside read and write: a tech's decisions about whose image a file is."""

        CONFIRM_MISMATCH = "confirm_mismatch", "Stored a file naming another patient, on a tech's word"
        HOLD = "hold", "Held a file that came with no order as unmatched"
        ASSIGN = "assign", "Assigned an unmatched file to an order"
        DISCARD = "discard", "Discarded an unmatched file"

    class Outcome(models.TextChoices):
        ALLOWED = "allowed", "Allowed"
        DENIED = "denied", "Denied"
        NOT_FOUND = "not_found", "Not found"
        REJECTED = "rejected", "Rejected"
        ERROR = "error", "Error"

    # When the request was answered, stamped as the event is made: events are written in groups
    # (access/audit_writer.py), up to RADIOLOGY_AUDIT_FLUSH_MS later, or minutes later after a
    # database outage; auto_now_add would stamp the time of that write instead.
    at = models.DateTimeField(default=now, editable=False, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True)
    role = models.CharField(max_length=32, db_index=True)
    viewer_token_id = models.UUIDField(null=True, blank=True, db_index=True)
    channel = models.CharField(
        max_length=32, db_index=True, help_text="api, dicomweb, signed_url, viewer, admin, import, web"
    )
    action = models.CharField(
        max_length=16, help_text="read, write, or an identity decision: confirm_mismatch, hold, assign, discard"
    )
    route = models.CharField(max_length=100)
    method = models.CharField(max_length=10)
    order_id = models.BigIntegerField(null=True, blank=True)
    study_id = models.BigIntegerField(null=True, blank=True)
    image_id = models.BigIntegerField(null=True, blank=True)
    upload_id = models.BigIntegerField(null=True, blank=True)
    study_uid = models.CharField(max_length=UID_MAX_LENGTH, blank=True, db_index=True)
    series_uid = models.CharField(max_length=UID_MAX_LENGTH, blank=True)
    image_uid = models.CharField(max_length=UID_MAX_LENGTH, blank=True)
    query_keys = models.CharField(max_length=255, blank=True, help_text="names of query parameters, never values")
    unmatched_id = models.BigIntegerField(null=True, blank=True)
    reason = models.CharField(
        max_length=255, blank=True, help_text="a tech's reason: for storing a file naming another patient, or a discard"
    )
    client_address = models.GenericIPAddressField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or self.role} {self.method} {self.route} {self.outcome}"


class LinkRevocation(models.Model):
    """A user's cut-off for the links they issued: every signed image URL and viewer token they
    made at or before `links_valid_after` is refused.

    Signed image URLs are not stored (only their signature exists), so revoking "every link a
    user made" needs a per-user time, checked inside the lookup each link already makes
    (signing.py). Viewer tokens are also revoked row by row, so admin shows them revoked.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="radiology_link_revocation"
    )
    links_valid_after = models.DateTimeField()
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    def __str__(self) -> str:
        return f"links of user {self.user_id} valid after {self.links_valid_after:%Y-%m-%d %H:%M:%S}"


class UnmatchedImage(models.Model):
    """A DICOM file that came with no order to go to, held byte-exact until a tech decides.

    Ways in with no person at hand (bulk import by accession number, the DICOM network) cannot
    ask which order a file belongs to. Its bytes are kept in the store under `unmatched/` and
    this row lists what its header says (identity, UIDs, accession) so a tech can assign it (or
    its whole study) to an order, through the same ingest as any other file, or discard it with
    a reason (ingest/unmatched.py). No read door shows these: doctors see nothing until assigned.
    The row stays after either, as the record of who decided what.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a tech"
        ASSIGNED = "assigned", "Assigned to an order"
        DISCARDED = "discarded", "Discarded"

    file_key = models.CharField(max_length=1024, unique=True)
    filename = models.CharField(max_length=255)
    file_size = models.BigIntegerField()
    checksum = models.CharField(max_length=64)
    source = models.CharField(max_length=32, help_text="the way in: import, dicom, upload")
    # The forwarding clinic that sent it (see RadiologyStudy.source_clinic); it goes with the file when assigned.
    source_clinic = models.CharField(max_length=150, blank=True)
    study_uid = models.CharField(max_length=UID_MAX_LENGTH, db_index=True)
    series_uid = models.CharField(max_length=UID_MAX_LENGTH)
    image_uid = models.CharField(max_length=UID_MAX_LENGTH, db_index=True)
    sop_class_uid = models.CharField(max_length=UID_MAX_LENGTH, blank=True)
    accession_number = models.CharField(max_length=16, blank=True)
    modality = models.CharField(max_length=16, blank=True)
    study_date = models.DateField(null=True, blank=True)
    study_description = models.CharField(max_length=255, blank=True)
    series_description = models.CharField(max_length=255, blank=True)
    instance_number = models.IntegerField(null=True, blank=True)
    patient_id = models.CharField(max_length=64, blank=True, help_text="the file's own PatientID")
    patient_name = models.CharField(max_length=PERSON_NAME_MAX_LENGTH, blank=True, help_text="the file's own")
    patient_birth_date = models.CharField(max_length=8, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    received_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    received_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    handled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    handled_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=255, blank=True)
    radiology_order = models.ForeignKey(
        RadiologyOrder, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    image = models.ForeignKey(RadiologyImage, on_delete=models.PROTECT, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(
                fields=["image_uid"], condition=Q(status="pending"), name="rad_unmatched_one_pending_per_uid"
            ),
            models.CheckConstraint(condition=Q(file_size__gt=0), name="rad_unmatched_file_size_positive"),
        ]

    def __str__(self) -> str:
        return f"Unmatched {self.image_uid} ({self.status})"


class DicomListenerHeartbeat(models.Model):
    """The last sign of life of one DICOM listener (ae_title, host, port), for /healthz.

    The listener runs in a process of its own (supervisord's `dicom` program, docker-compose's
    `dicom` service), apart from the app server that answers /healthz; the database is the one
    thing every process of both deployments shares. So the listener writes this row every
    `heartbeat_seconds` (dimse/heartbeat.py) and once more, with `stopped_at`, when it stops
    cleanly; /healthz reads the most recent row. A listener that stops beating without
    `stopped_at` (killed, hung, its machine gone) is "not responding". Runtime state, not
    clinical data: a restart of the same listener overwrites its row.
    """

    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=255, help_text="the address it listens on, as given to --host")
    port = models.PositiveIntegerField()
    pid = models.PositiveIntegerField(help_text="its process id, on the machine it runs on")
    heartbeat_seconds = models.PositiveIntegerField(
        help_text="its RADIOLOGY_DICOM_HEARTBEAT_SECONDS, by which /healthz judges its silence"
    )
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)
    active_associations = models.PositiveIntegerField(default=0)
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="set by a clean stop; empty while it runs")

    class Meta:
        verbose_name = "DICOM listener heartbeat"
        ordering = ["-beat_at"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["ae_title", "host", "port"], name="rad_dicom_heartbeat_one_per_listener"),
        ]

    def __str__(self) -> str:
        return f"DICOM listener {self.ae_title} on {self.host}:{self.port}"


class ForwardTask(models.Model):
    """The outbox: one stored image to hand to one forwarding destination (apps/radiology/forwarding/).

    Recorded in the transaction that creates the image row (outbox/record.py, called by
    ingest/commit.py), so an image stored by any way in has its task: if the row exists, the
    task exists. The forwarder process claims a task by setting `lease_until` (a killed
    forwarder's claims lapse on their own), pushes the file with the far side's upload sync
    (`remote_upload_id` is the far side's upload, so a restart resumes it), and marks it sent;
    a refusal that no resend can change (a conflict, an auth failure) marks it failed until a
    tech retries. `state` counts toward the study's StudyDelivery in the same transactions.
    """

    class State(models.TextChoices):
        PENDING = "pending", "To send"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    destination = models.CharField(max_length=64)
    image = models.ForeignKey(RadiologyImage, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(RadiologyStudy, on_delete=models.PROTECT, related_name="forward_tasks")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="failed attempts since the last success or retry")
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True, help_text="a forwarder holds it until then")
    remote_upload_id = models.BigIntegerField(null=True, blank=True, help_text="the far side's upload id")
    # How many times the far side's check found the image missing after it was sent: part of the
    # upload's client_upload_id, so a resend is a new upload there and a repeat of one is not.
    resends = models.PositiveIntegerField(default=0)
    wire_bytes = models.BigIntegerField(default=0, help_text="request body bytes sent, compressed, resends included")
    sent_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True, help_text="the last error (kept after a success)")
    error_detail = models.CharField(max_length=255, blank=True)
    error_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["destination", "image"], name="rad_forward_one_task_per_image"),
        ]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["state", "next_attempt_at"], name="rad_forward_due"),
            models.Index(fields=["study", "destination"], name="rad_forward_study"),
            models.Index(fields=["destination", "sent_at"], name="rad_forward_sent"),
            models.Index(fields=["destination", "error_at"], name="rad_forward_error"),
        ]

    def __str__(self) -> str:
        return f"Forward image {self.image_id} to {self.destination} ({self.state})"


class StudyDelivery(models.Model):
    """One study's delivery to one forwarding destination: what the front door, API and admin show.

    `images_sent` of `images_total` are sent ("sending n of m"); the study is `delivered` once
    the far side confirmed every image's checksum in one answer for the study (forwarding/
    verify); `failed` when a task failed for good, with why, until a tech retries. New images
    of a delivered study put it back to `sending`. The counters move in the transactions that
    create the tasks and mark them sent, so they are never read off by a list page's query.
    """

    class State(models.TextChoices):
        SENDING = "sending", "Sending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    study = models.ForeignKey(RadiologyStudy, on_delete=models.PROTECT, related_name="deliveries")
    destination = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.SENDING)
    images_total = models.PositiveIntegerField(default=0)
    images_sent = models.PositiveIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    delivered_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_detail = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "study deliveries"
        ordering = ["-updated_at", "-id"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["study", "destination"], name="rad_delivery_one_per_destination"),
            models.CheckConstraint(
                condition=Q(images_sent__lte=models.F("images_total")), name="rad_delivery_sent_within_total"
            ),
        ]

    def __str__(self) -> str:
        return f"Delivery of study {self.study_id} to {self.destination} ({self.state})"

    @property
    def summary(self) -> str:
        """What the front door, the API and admin say: "sending 3 of 10", "confirming", "delivered", "failed: why"."""
        if self.state == self.State.DELIVERED:
            return "delivered"
        if self.state == self.State.FAILED:
            return f"failed: {self.error_detail or self.error_code}"
        if self.images_total and self.images_sent == self.images_total:
            return f"confirming {self.images_total} of {self.images_total}"
        return f"sending {self.images_sent} of {self.images_total}"
