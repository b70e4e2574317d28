"""PACSLiteService: the seed's service calls, and the one ingest path every way in uses.

Upload sync, DICOMweb STOW-RS and bulk import all end in `PACSLiteService.ingest_image`.
Order of work in ingest, and why:
1. the incoming stream is spooled to a temporary file while it is hashed, so nothing
   holds the whole file in memory and the checksum is the server's own;
2. the bytes say what the file is (DICOM preamble or JPEG signature) and the header
   gives the UIDs and fields; everything is validated before anything is written;
3. the file is written to the store *outside* any database transaction (a slow upload
   to S3 must not hold locks), at a key no one else can take (see storage.py);
4. study, series and image rows are created in one transaction; if that fails, the file
   written in step 3 is removed, so there is never a file without its row nor a row
   without its file. A process killed between 3 and 4 (SIGKILL, out of memory, power cut)
   cannot remove it: `purge_interrupted_ingests` (run by the management command of that
   name) removes such files once they are older than any ingest still under way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.access import signing
from apps.radiology.dicomweb.dicom_json import metadata_text
from apps.radiology.errors import (
    ChecksumMismatch,
    EmptyFile,
    FileTooLarge,
    ImageConflict,
    MissingUID,
    RadiologyError,
    SeriesConflict,
    SizeMismatch,
    StudyConflict,
    StudyMismatch,
    UIDMismatch,
)
from apps.radiology.fastpaths import bulk_insert
from apps.radiology.imagefiles.declared import DeclaredImage  # defined there, also importable from here
from apps.radiology.imagefiles.dicom import SNIFF_LENGTH, ParsedImage, sniff_mime_type
from apps.radiology.imagefiles.uids import generate_uid, uid_from_name, validate_uid
from apps.radiology.ingest import parse_helper
from apps.radiology.models import (
    DICOM_MIME_TYPE,
    RadiologyImage,
    RadiologyOrder,
    RadiologySeries,
    RadiologyStudy,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    image: RadiologyImage
    created: bool


@dataclass(frozen=True)
class _Spooled:
    path: Path
    size: int
    checksum: str
    mime_type: str


@dataclass(frozen=True)
class _ResolvedUIDs:
    study_uid: str
    series_uid: str
    image_uid: str


class PACSLiteService:
    """The seed's service: study and series creation, storage, URLs, and ingest."""

    # --- The seed's calls ---------------------------------------------------------------

    @staticmethod
    def create_study_for_order(
        *,
        radiology_order: RadiologyOrder,
        study_uid: str | None = None,
        study_description: str = "",
        modality: str = "",
        study_date: dt.date | None = None,
        **extra: Any,
    ) -> RadiologyStudy:
        """Return the order's study, creating it (with a patient snapshot) on first use.

        An order has exactly one study: asking for another study UID is StudyMismatch, and
        a study UID that already belongs to another order is StudyConflict.
        """
        if study_uid is not None:
            validate_uid(study_uid, field="study_uid")
        existing = RadiologyStudy.objects.filter(radiology_order=radiology_order).first()
        if existing is not None:
            if study_uid is not None and existing.study_uid != study_uid:
                raise StudyMismatch()
            return existing
        study_uid = study_uid or generate_uid()
        if RadiologyStudy.objects.filter(study_uid=study_uid).exists():
            raise StudyConflict()
        patient = radiology_order.visit.patient
        try:
            with transaction.atomic():
                return RadiologyStudy.objects.create(
                    radiology_order=radiology_order,
                    study_uid=study_uid,
                    study_description=study_description or radiology_order.exam_requested,
                    modality=modality or radiology_order.modality,
                    study_date=study_date or timezone.localdate(),
                    accession_number=extra.pop("accession_number", "") or radiology_order.accession_number,
                    patient_name=patient.full_name,
                    patient_dicom_name=patient.dicom_name,
                    patient_id=patient.hospital_number,
                    patient_birth_date=patient.date_of_birth,
                    patient_sex=patient.sex,
                    **extra,
                )
        except IntegrityError:
            # Another request created the order's study (or took the UID) a moment ago.
            existing = RadiologyStudy.objects.filter(radiology_order=radiology_order).first()
            if existing is not None and existing.study_uid == study_uid:
                return existing
            if existing is not None:
                raise StudyMismatch() from None
            raise StudyConflict() from None

    @staticmethod
    def create_series_for_study(
        *,
        study: RadiologyStudy,
        series_uid: str | None = None,
        series_number: int | None = None,
        series_description: str = "",
        modality: str = "",
        **extra: Any,
    ) -> RadiologySeries:
        """Return the series with this UID in the study, creating it if new.

        A series UID already used by another study is SeriesConflict: a series never
        moves between studies (that would move a patient's images to another patient).
        """
        if series_uid is not None:
            validate_uid(series_uid, field="series_uid")
        else:
            series_uid = generate_uid()
        try:
            with transaction.atomic():
                series, _created = RadiologySeries.objects.get_or_create(
                    series_uid=series_uid,
                    defaults={
                        "study": study,
                        "series_number": series_number,
                        "series_description": series_description,
                        "modality": modality or study.modality,
                        **extra,
                    },
                )
        except IntegrityError:
            series = RadiologySeries.objects.get(series_uid=series_uid)
        if series.study_id != study.pk:
            raise SeriesConflict()
        return series

    @staticmethod
    def generate_file_key(*, study_uid: str, series_uid: str, image_uid: str, filename: str) -> str:
        """radiology/{study_uid}/{series_uid}/{image_uid}/{safe base name of filename}."""
        return storage.build_file_key(
            study_uid=study_uid, series_uid=series_uid, image_uid=image_uid, filename=filename
        )

    @staticmethod
    def store_image(*, file_content: bytes | IO[bytes], file_key: str, content_type: str) -> str:
        """Write bytes (or a readable stream) to a new object; return the key actually used.

        Never overwrites: if `file_key` is taken the store picks a free key beside it.
        """
        if isinstance(file_content, bytes | bytearray):
            with tempfile.SpooledTemporaryFile(max_size=storage.STREAM_CHUNK_SIZE) as buffer:
                buffer.write(file_content)
                buffer.seek(0)
                return storage.save_new_object(file_key, buffer, content_type=content_type)
        return storage.save_new_object(file_key, file_content, content_type=content_type)

    @staticmethod
    def generate_viewer_url(
        *, study_uid: str, user: AbstractBaseUser, expires_in: int | None = None, base_url: str = ""
    ) -> str:
        """A viewer URL carrying a signed token that grants read of this one study."""
        study = RadiologyStudy.objects.get(study_uid=study_uid)
        return signing.viewer_url(study=study, user=user, expires_in=expires_in, base_url=base_url)

    @staticmethod
    def generate_image_url(
        *, image: RadiologyImage, user: AbstractBaseUser, expires_in: int | None = None, base_url: str = ""
    ) -> str:
        """A signed, expiring URL that serves exactly this image's stored bytes, refused once `user` loses access."""
        return signing.image_url(image=image, user=user, expires_in=expires_in, base_url=base_url)

    @staticmethod
    def revoke_viewer_token(*, token_id: Any) -> bool:
        """Revoke a viewer token at once (its next request is 401); True if it was active."""
        return signing.revoke_viewer_token(token_id)

    @staticmethod
    def purge_interrupted_ingests(*, older_than: dt.timedelta) -> list[str]:
        """Remove the files killed ingests left without their rows, and their spool files; return the keys removed.

        Only what is untouched for `older_than` goes: a younger file may belong to an ingest
        still under way whose rows are about to commit. Each key is looked up again just
        before its file is deleted.
        """
        cutoff = timezone.now() - older_than
        removed: list[str] = []
        keys = storage.iter_keys(f"{storage.KEY_PREFIX}/")
        while batch := list(itertools.islice(keys, 500)):
            referenced = set(RadiologyImage.objects.filter(file_key__in=batch).values_list("file_key", flat=True))
            for key in batch:
                if key in referenced:
                    continue
                modified = storage.object_modified_time(key)
                if modified is None or modified > cutoff or RadiologyImage.objects.filter(file_key=key).exists():
                    continue
                storage.delete_object(key)
                logger.warning("removed %s: written by an ingest that never committed its rows", key)
                removed.append(key)
        staging = Path(settings.RADIOLOGY_STAGING_DIR)
        for spool in staging.glob("ingest-*") if staging.exists() else ():
            with contextlib.suppress(FileNotFoundError):
                if dt.datetime.fromtimestamp(spool.stat().st_mtime, tz=dt.UTC) <= cutoff:
                    spool.unlink()
        return removed

    # --- The one ingest path ------------------------------------------------------------

    @staticmethod
    def ingest_image(
        *,
        order: RadiologyOrder,
        stream: IO[bytes],
        filename: str,
        uploaded_by: AbstractBaseUser | None,
        declared: DeclaredImage | None = None,
        expected_size: int | None = None,
        expected_checksum: str | None = None,
    ) -> IngestResult:
        """Store one DICOM or JPEG file under `order`; see the module docstring for the order of work.

        Idempotent: the same image UID with the same bytes returns the stored image
        (created=False); with other bytes it is ImageConflict and the stored file is untouched.
        `expected_size` / `expected_checksum` (what a client declared) are checked against the
        bytes actually received before anything is parsed or stored. A batch of one of
        `ingest_images`, so both take exactly the same path.
        """
        item = IngestItem(
            order=order,
            stream=stream,
            filename=filename,
            declared=declared or DeclaredImage(),
            expected_size=expected_size,
            expected_checksum=expected_checksum,
        )
        (outcome,) = PACSLiteService.ingest_images([item], uploaded_by=uploaded_by)
        if isinstance(outcome, RadiologyError):
            raise outcome
        return outcome

    @staticmethod
    def ingest_images(
        items: list[IngestItem], *, uploaded_by: AbstractBaseUser | None
    ) -> list[IngestResult | RadiologyError]:
        """Store several files (one STOW-RS request); one outcome per item, in order.

        Each item is checked exactly as `ingest_image` checks one, and a bad item never stops
        the others. What a batch shares is the database work: one query finds the images
        already stored, three check studies and series, and the rows of all new images
        commit in one transaction (with the files written before it, as for one). If that
        transaction fails (a concurrent ingest took a UID, two items disagree about a
        study), its files are removed and the items are committed one by one, each then
        getting its own outcome.
        """
        outcomes: list[IngestResult | RadiologyError | None] = [None] * len(items)
        settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as spools:
            prepared = _prepare(items, spools, outcomes)
            fresh, repeats = _sort_out_stored(prepared, outcomes)
            known = _KnownStudies.of(fresh)
            checked: list[_Prepared] = []
            for entry in fresh:
                try:
                    known.check(entry.item.order, entry.uids)
                except RadiologyError as error:
                    outcomes[entry.index] = error
                    continue
                checked.append(entry)
            if len(checked) > 1:
                try:
                    _commit(checked, uploaded_by)
                except Exception:  # any failure: one by one below, each with its own outcome
                    logger.info("a batch of %d images is committed one by one", len(checked))
                else:
                    for entry in checked:
                        outcomes[entry.index] = IngestResult(image=entry.image, created=True)  # type: ignore[arg-type]
                    checked = []
            for entry in checked:
                outcomes[entry.index] = _commit_one(entry, uploaded_by)
            # Inside the ExitStack: a repeat may still need its spooled bytes (see _repeat_outcome).
            for entry, first in repeats:
                outcomes[entry.index] = _repeat_outcome(entry, first, outcomes[first.index], uploaded_by)
        return outcomes  # type: ignore[return-value]


@dataclass(frozen=True)
class StagedFile:
    """A file already received into RADIOLOGY_STAGING_DIR, with the size and SHA-256 taken as it
    arrived. Nothing may write to it again: ingest takes it over as its spool (no copy, no
    second hash), and the filesystem store links it in. Ingest opens it only while it reads
    it (a STOW-RS batch of thousands of parts must not hold thousands of open files); its
    owner still removes it."""

    path: Path
    size: int
    checksum: str


@dataclass(frozen=True)
class IngestItem:
    """One file to ingest and what its sender says about it (see `ingest_image`)."""

    order: RadiologyOrder
    # None only when `staged` is set: ingest then reads the staged file itself.
    stream: IO[bytes] | None
    # None: the file is named after its image UID (a STOW-RS part has no name of its own).
    filename: str | None
    declared: DeclaredImage = field(default_factory=DeclaredImage)
    expected_size: int | None = None
    expected_checksum: str | None = None
    # Set for a file already received into the staging directory (a STOW-RS part).
    staged: StagedFile | None = None


@dataclass
class _Prepared:
    """An item spooled, parsed and given its UIDs: everything checked that needs no database."""

    index: int
    item: IngestItem
    # None for a staged item: its file is opened only while it is read (see _spool_reader).
    spool_file: IO[bytes] | None
    spooled: _Spooled
    parsed: ParsedImage
    uids: _ResolvedUIDs
    stored_key: str | None = None
    image: RadiologyImage | None = None

    @property
    def filename(self) -> str:
        if self.item.filename is not None:
            return self.item.filename
        return f"{self.uids.image_uid}{'.dcm' if self.spooled.mime_type == DICOM_MIME_TYPE else '.jpg'}"


def _prepare(
    items: list[IngestItem], spools: contextlib.ExitStack, outcomes: list[IngestResult | RadiologyError | None]
) -> list[_Prepared]:
    """Spool, check and parse each item and give it its UIDs; record the refusals in `outcomes`.

    The files of a big batch are parsed on two cores (parse_helper.py).
    """
    spooled_items: list[tuple[int, IngestItem, IO[bytes] | None, _Spooled]] = []
    for index, item in enumerate(items):
        try:
            if item.filename is not None:
                storage.safe_filename(item.filename)  # refuse an unusable name before reading any bytes
            if item.staged is not None:
                spool_file, spooled = None, _staged(item, item.staged)
            else:
                # Closed with the batch's other spools, when ingest_images leaves its ExitStack.
                spool_file = spools.enter_context(
                    tempfile.NamedTemporaryFile(dir=settings.RADIOLOGY_STAGING_DIR, prefix="ingest-")  # noqa: SIM115
                )
                if item.stream is None:
                    raise ValueError("an IngestItem needs a stream or a staged file")
                spooled = _spool(
                    item.stream, spool_file, expected_size=item.expected_size, expected_checksum=item.expected_checksum
                )
        except RadiologyError as error:
            outcomes[index] = error
            continue
        spooled_items.append((index, item, spool_file, spooled))
    parsed_files = parse_helper.parse_files([(spooled.path, spooled.mime_type) for *_, spooled in spooled_items])
    prepared: list[_Prepared] = []
    for (index, item, spool_file, spooled), parsed in zip(spooled_items, parsed_files, strict=True):
        try:
            if isinstance(parsed, RadiologyError):
                raise parsed
            uids = _resolve_uids(parsed, item.declared, order=item.order, checksum=spooled.checksum)
        except RadiologyError as error:
            outcomes[index] = error
            continue
        prepared.append(_Prepared(index, item, spool_file, spooled, parsed, uids))
    return prepared


def _sort_out_stored(
    prepared: list[_Prepared], outcomes: list[IngestResult | RadiologyError | None]
) -> tuple[list[_Prepared], list[tuple[_Prepared, _Prepared]]]:
    """Answer the items already stored (one query); return the new ones, and the repeats
    within the batch (an item whose image UID an earlier item of the batch also has)."""
    stored = {
        image.image_uid: image
        for image in RadiologyImage.objects.select_related("series__study").filter(
            image_uid__in={entry.uids.image_uid for entry in prepared}
        )
    }
    fresh: list[_Prepared] = []
    repeats: list[tuple[_Prepared, _Prepared]] = []
    first_of: dict[str, _Prepared] = {}
    for entry in prepared:
        existing = stored.get(entry.uids.image_uid)
        if existing is not None:
            outcomes[entry.index] = _as_stored(existing, entry)
        elif entry.uids.image_uid in first_of:
            repeats.append((entry, first_of[entry.uids.image_uid]))
        else:
            first_of[entry.uids.image_uid] = entry
            fresh.append(entry)
    return fresh, repeats


def _same_image(existing: RadiologyImage, entry: _Prepared) -> RadiologyImage:
    """The stored image, if it is this exact file under this order; else ImageConflict."""
    if existing.checksum != entry.spooled.checksum:
        raise ImageConflict()
    if existing.series.study.radiology_order_id != entry.item.order.pk:
        raise ImageConflict("An image with this UID is already stored under another order.")
    return existing


def _as_stored(existing: RadiologyImage, entry: _Prepared) -> IngestResult | RadiologyError:
    """The outcome of an item whose image UID is already stored: that image, or ImageConflict."""
    try:
        return IngestResult(image=_same_image(existing, entry), created=False)
    except RadiologyError as conflict:
        return conflict


def _stored_image(image_uid: str) -> RadiologyImage | None:
    return RadiologyImage.objects.select_related("series__study").filter(image_uid=image_uid).first()


def _repeat_outcome(
    entry: _Prepared,
    first: _Prepared,
    first_outcome: IngestResult | RadiologyError | None,
    uploaded_by: AbstractBaseUser | None,
) -> IngestResult | RadiologyError:
    """An item repeating an earlier item's image UID: as if it came just after that one."""
    if isinstance(first_outcome, IngestResult):
        return _as_stored(first_outcome.image, entry)
    # The first copy was refused: this one is judged against what is stored now.
    found = _stored_image(entry.uids.image_uid)
    if found is not None:
        return _as_stored(found, entry)
    if entry.spooled.checksum == first.spooled.checksum:
        return first_outcome if isinstance(first_outcome, RadiologyError) else ImageConflict()
    # Other bytes (say, the first copy corrected): nothing holds the UID, so it stands on its own.
    try:
        _KnownStudies.of([entry]).check(entry.item.order, entry.uids)
    except RadiologyError as error:
        return error
    return _commit_one(entry, uploaded_by)


class _KnownStudies:
    """What the database says about the batch's orders, studies and series (three queries)."""

    def __init__(
        self, order_studies: dict[int, str], taken_study_uids: set[str], series_studies: dict[str, str]
    ) -> None:
        self.order_studies = order_studies
        self.taken_study_uids = taken_study_uids
        self.series_studies = series_studies

    @classmethod
    def of(cls, entries: list[_Prepared]) -> _KnownStudies:
        if not entries:
            return cls({}, set(), {})
        orders = {entry.item.order.pk for entry in entries}
        study_uids = {entry.uids.study_uid for entry in entries}
        series_uids = {entry.uids.series_uid for entry in entries}
        return cls(
            dict(
                RadiologyStudy.objects.filter(radiology_order__in=orders).values_list("radiology_order_id", "study_uid")
            ),
            set(RadiologyStudy.objects.filter(study_uid__in=study_uids).values_list("study_uid", flat=True)),
            dict(
                RadiologySeries.objects.filter(series_uid__in=series_uids).values_list("series_uid", "study__study_uid")
            ),
        )

    def check(self, order: RadiologyOrder, uids: _ResolvedUIDs) -> None:
        """Refuse, before any byte is written, an image that belongs to another study or order."""
        order_study_uid = self.order_studies.get(order.pk)
        if order_study_uid is not None and order_study_uid != uids.study_uid:
            raise StudyMismatch()
        if order_study_uid is None and uids.study_uid in self.taken_study_uids:
            raise StudyConflict()
        series_study_uid = self.series_studies.get(uids.series_uid)
        if series_study_uid is not None and series_study_uid != uids.study_uid:
            raise SeriesConflict()


def _commit(entries: list[_Prepared], uploaded_by: AbstractBaseUser | None) -> None:
    """Write the entries' files, then all their rows in one transaction; on any failure
    remove every file written here that has no row, and raise."""
    try:
        for entry in entries:
            file_key = storage.build_file_key(
                study_uid=entry.uids.study_uid,
                series_uid=entry.uids.series_uid,
                image_uid=entry.uids.image_uid,
                filename=entry.filename,
            )
            with _spool_reader(entry) as spool_file:
                entry.stored_key = storage.save_new_object(
                    file_key, spool_file, content_type=entry.spooled.mime_type, local_path=entry.spooled.path
                )
        _create_rows(entries, uploaded_by)
    except BaseException:
        # The rows did not commit: take the files back out so no file lingers without its row.
        written = [entry.stored_key for entry in entries if entry.stored_key is not None]
        kept = set(RadiologyImage.objects.filter(file_key__in=written).values_list("file_key", flat=True))
        for key in written:
            if key not in kept:
                storage.delete_object(key)
        for entry in entries:
            entry.stored_key, entry.image = None, None
        raise
    for entry in entries:
        logger.info("radiology image %s stored in study %s", entry.image.pk, entry.uids.study_uid)  # type: ignore[union-attr]


@contextlib.contextmanager
def _spool_reader(entry: _Prepared) -> Iterator[IO[bytes]]:
    """The entry's spooled bytes from their start: its open spool, or its staged file opened just for this."""
    if entry.spool_file is not None:
        entry.spool_file.seek(0)
        yield entry.spool_file
        return
    with entry.spooled.path.open("rb") as handle:
        yield handle


def _commit_one(entry: _Prepared, uploaded_by: AbstractBaseUser | None) -> IngestResult | RadiologyError:
    try:
        _commit([entry], uploaded_by)
    except Exception as failure:
        existing = _stored_image(entry.uids.image_uid)
        if existing is None:
            if isinstance(failure, RadiologyError):
                return failure
            raise
        return _as_stored(existing, entry)  # a concurrent ingest of this UID won the race
    return IngestResult(image=entry.image, created=True)  # type: ignore[arg-type]


def _spool(
    stream: IO[bytes], spool_file: IO[bytes], *, expected_size: int | None, expected_checksum: str | None
) -> _Spooled:
    """Copy the stream to disk in chunks, hashing as it goes; then check it against what was declared.

    Order of refusals: more bytes than declared (stop reading at once), fewer, another
    checksum; then an empty file; then a type that is neither DICOM nor JPEG.
    """
    digest = hashlib.sha256()
    size = 0
    head = b""
    while chunk := stream.read(storage.STREAM_CHUNK_SIZE):
        size += len(chunk)
        _check_size_so_far(size, expected_size)
        if len(head) < SNIFF_LENGTH:
            head += chunk[: SNIFF_LENGTH - len(head)]
        digest.update(chunk)
        spool_file.write(chunk)
    spool_file.flush()
    return _checked(
        Path(spool_file.name),
        size,
        digest.hexdigest(),
        head,
        expected_size=expected_size,
        expected_checksum=expected_checksum,
    )


def _staged(item: IngestItem, staged: StagedFile) -> _Spooled:
    """A staged file (see StagedFile) checked as _spool checks the bytes it copies."""
    _check_size_so_far(staged.size, item.expected_size)
    with staged.path.open("rb") as handle:
        head = handle.read(SNIFF_LENGTH)
    return _checked(
        staged.path,
        staged.size,
        staged.checksum,
        head,
        expected_size=item.expected_size,
        expected_checksum=item.expected_checksum,
    )


def _check_size_so_far(size: int, expected_size: int | None) -> None:
    if expected_size is not None and size > expected_size:
        raise SizeMismatch()
    if size > settings.RADIOLOGY_MAX_UPLOAD_SIZE:
        raise FileTooLarge()


def _checked(
    path: Path, size: int, checksum: str, head: bytes, *, expected_size: int | None, expected_checksum: str | None
) -> _Spooled:
    """The received file, if it is what was declared and of a type ingest takes."""
    if expected_size is not None and size != expected_size:
        raise SizeMismatch()
    if expected_checksum is not None and checksum != expected_checksum.lower():
        raise ChecksumMismatch()
    if size == 0:
        raise EmptyFile()
    return _Spooled(path=path, size=size, checksum=checksum, mime_type=sniff_mime_type(head))


def _resolve_uids(
    parsed: ParsedImage, declared: DeclaredImage, *, order: RadiologyOrder, checksum: str
) -> _ResolvedUIDs:
    """The file's UIDs for DICOM (declared ones must agree); declared or derived for JPEG.

    A JPEG's missing UIDs are derived from the order and the bytes (its study is the order's
    study if it has one), so the same photo sent twice to one order is one image.
    """
    resolved: dict[str, str] = {}
    derived: dict[str, str] = {}
    if parsed.mime_type != DICOM_MIME_TYPE:
        # Only a JPEG needs the order's study UID: a DICOM file's ingest skips this query.
        order_study_uid = (
            RadiologyStudy.objects.filter(radiology_order=order).values_list("study_uid", flat=True).first()
        )
        derived = {
            "study_uid": order_study_uid or uid_from_name(f"order:{order.pk}:study"),
            "series_uid": uid_from_name(f"order:{order.pk}:jpeg:{checksum}:series"),
            "image_uid": uid_from_name(f"order:{order.pk}:jpeg:{checksum}:image"),
        }
    for name in ("study_uid", "series_uid", "image_uid"):
        from_file = getattr(parsed, name)
        from_client = getattr(declared, name)
        if from_client is not None:
            validate_uid(from_client, field=name)
        if parsed.mime_type == DICOM_MIME_TYPE:
            if from_file is None:
                raise MissingUID(f"The DICOM file has no {name}.")
            validate_uid(from_file, field=name)
            if from_client is not None and from_client != from_file:
                raise UIDMismatch(f"{name} sent does not match the file's.")
            resolved[name] = from_file
        else:
            resolved[name] = from_client or derived[name]
    return _ResolvedUIDs(**resolved)


def _create_rows(entries: list[_Prepared], uploaded_by: AbstractBaseUser | None) -> None:
    """Create or reuse each entry's study and series and create the image rows, in one transaction."""
    with transaction.atomic():
        # Lock the orders (in one order, so two batches cannot deadlock) so two first images
        # of one order cannot both create its study.
        order_ids = sorted({entry.item.order.pk for entry in entries})
        list(RadiologyOrder.objects.select_for_update().filter(pk__in=order_ids).order_by("pk").values_list("pk"))
        studies: dict[int, RadiologyStudy] = {}
        series_by_uid: dict[str, RadiologySeries] = {}
        added_to_series: dict[int, int] = {}
        images: list[RadiologyImage] = []
        for entry in entries:
            order, parsed, declared, uids = entry.item.order, entry.parsed, entry.item.declared, entry.uids
            modality = parsed.modality or declared.modality
            study = studies.get(order.pk)
            if study is None:
                study = studies[order.pk] = PACSLiteService.create_study_for_order(
                    radiology_order=order,
                    study_uid=uids.study_uid,
                    study_description=parsed.study_description or declared.study_description,
                    modality=modality,
                    study_date=parsed.study_date,
                    study_time=parsed.study_time,
                    accession_number=parsed.accession_number,
                    referring_physician_name=parsed.referring_physician_name,
                )
            elif study.study_uid != uids.study_uid:
                raise StudyMismatch()
            series = series_by_uid.get(uids.series_uid)
            if series is not None and series.study_id != study.pk:
                # An earlier item of this batch made the series in another order's study.
                raise SeriesConflict()
            if series is None:
                series_number = parsed.series_number if parsed.series_number is not None else declared.series_number
                if series_number is None and parsed.mime_type != DICOM_MIME_TYPE:
                    # A photo with no number of its own goes after the study's series (viewers sort by it).
                    top = RadiologySeries.objects.filter(study=study).aggregate(top=Max("series_number"))["top"]
                    series_number = (top or 0) + 1
                series = series_by_uid[uids.series_uid] = PACSLiteService.create_series_for_study(
                    study=study,
                    series_uid=uids.series_uid,
                    series_number=series_number,
                    series_description=parsed.series_description or declared.series_description,
                    modality=modality,
                    series_date=parsed.series_date,
                    series_time=parsed.series_time,
                    body_part_examined=parsed.body_part_examined,
                )
                series.study = study  # the same row (create_series_for_study checked): no lazy query later
            instance_number = parsed.instance_number if parsed.instance_number is not None else declared.instance_number
            if instance_number is None:
                # After the series' stored images and those of this batch before it.
                instance_number = (
                    RadiologyImage.objects.filter(series=series).count() + added_to_series.get(series.pk, 0) + 1
                )
            added_to_series[series.pk] = added_to_series.get(series.pk, 0) + 1
            entry.image = RadiologyImage(
                series=series,
                image_uid=uids.image_uid,
                sop_class_uid=parsed.sop_class_uid,
                transfer_syntax_uid=parsed.transfer_syntax_uid,
                instance_number=instance_number,
                number_of_frames=parsed.number_of_frames,
                rows=parsed.rows,
                columns=parsed.columns,
                file_key=entry.stored_key,
                filename=storage.original_filename(entry.filename),
                file_size=entry.spooled.size,
                mime_type=entry.spooled.mime_type,
                checksum=entry.spooled.checksum,
                image_metadata=_image_metadata(parsed, declared),
                pixel_data=parsed.pixel_data,
                bulk_data=parsed.bulk_data,
                uploaded_by=uploaded_by,
            )
            entry.image.metadata_text = metadata_text(entry.image)
            images.append(entry.image)
        # One INSERT (COPY on PostgreSQL) for the batch; rows are new, so WriteOnceModel.save's
        # only check does not apply.
        bulk_insert.insert_new(images)


def _image_metadata(parsed: ParsedImage, declared: DeclaredImage) -> dict[str, Any]:
    """The header JSON of a DICOM file; for a JPEG, its EXIF plus how it was made (ConversionType)."""
    if parsed.mime_type == DICOM_MIME_TYPE:
        return parsed.metadata
    return {**parsed.metadata, "conversion_type": "DF" if declared.photographed_film else "SI"}
