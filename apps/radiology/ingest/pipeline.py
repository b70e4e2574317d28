"""The one ingest path: `ingest_images` (and `ingest_image`, a batch of one) takes files from every way in.

Order of work, and why (each stage has its module):
1. spool.py: the incoming stream is spooled to a temporary file while it is hashed, so nothing
   holds the whole file in memory and the checksum is the server's own; the bytes say what the
   file is (DICOM preamble or JPEG signature);
2. the header gives the UIDs and fields (imagefiles/dicom.py, on two cores for a big batch:
   parse_helper.py), and resolve.py checks where the file belongs: everything is validated
   before anything is written;
3. commit.py writes the file to the store *outside* any database transaction (a slow upload
   to S3 must not hold locks), at a key no one else can take (see storage), then creates
   study, series and image rows in one transaction; if that fails, the file is removed, so
   there is never a file without its row nor a row without its file;
4. cleanup.py removes the files of ingests killed between the two (SIGKILL, out of memory,
   power cut), once they are older than any ingest still under way.

Beside the UIDs, identity.py compares the file's PatientID with the order's patient before
anything is written (a file naming another patient is refused unless a tech confirmed it).
A file that comes with no order at all (bulk import by accession, the DICOM network) takes
the same first two stages and is then held for a tech in the unmatched inbox (holding.py).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import IO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from apps.radiology import storage
from apps.radiology.errors import ImageConflict, RadiologyError
from apps.radiology.imagefiles import stored_header
from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.imagefiles.dicom import ParsedImage
from apps.radiology.ingest import holding, parse_helper
from apps.radiology.ingest.commit import commit
from apps.radiology.ingest.holding import Arrival
from apps.radiology.ingest.identity import IdentityVerdict, KnownPatients, MismatchConfirmation
from apps.radiology.ingest.outcomes import HeldResult, IngestResult
from apps.radiology.ingest.resolve import KnownOrders, KnownStudies, ResolvedUIDs, resolve_uids
from apps.radiology.ingest.spool import Spooled, StagedFile, new_spool_file, spool, take_staged
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyImage, RadiologyOrder

logger = logging.getLogger(__name__)

__all__ = [
    "Arrival",
    "HeldResult",
    "IngestItem",
    "IngestResult",
    "MismatchConfirmation",
    "StagedFile",
    "ingest_image",
    "ingest_images",
]


@dataclass(frozen=True)
class IngestItem:
    """One file to ingest and what its sender says about it (see `ingest_image`)."""

    # None: the file came with no order (a way in with no person at hand); a DICOM file is then
    # held in the unmatched inbox (holding.py) for a tech to assign.
    order: RadiologyOrder | None
    # None only when `staged` is set: ingest then reads the staged file itself.
    stream: IO[bytes] | None
    # None: the file is named after its image UID (a STOW-RS part has no name of its own).
    filename: str | None
    declared: DeclaredImage = field(default_factory=DeclaredImage)
    expected_size: int | None = None
    expected_checksum: str | None = None
    # Set for a file already received into the staging directory (a STOW-RS part).
    staged: StagedFile | None = None
    # A tech's confirmation that this file belongs to `order` though it names another patient.
    confirmation: MismatchConfirmation | None = None
    # The forwarding clinic that sent it (on a regional server), "" otherwise: recorded on the
    # study it creates (or joins, if that study has none yet) and on the unmatched row it is held as.
    source_clinic: str = ""


@dataclass
class Prepared:
    """An item spooled, parsed and given its UIDs: everything checked that needs no database."""

    index: int
    item: IngestItem
    # None for a staged item: its file is opened only while it is read (see commit.spool_reader).
    spool_file: IO[bytes] | None
    spooled: Spooled
    parsed: ParsedImage
    uids: ResolvedUIDs
    stored_key: str | None = None
    image: RadiologyImage | None = None
    identity: IdentityVerdict | None = None
    # Set by _placed when its order's study already held its series: commit.py then reads both in one query.
    series_known: bool = False

    @property
    def order(self) -> RadiologyOrder:
        """The order of an entry that has one (every entry but those held as unmatched)."""
        if self.item.order is None:
            raise ValueError("an unmatched file has no order")
        return self.item.order

    @property
    def filename(self) -> str:
        if self.item.filename is not None:
            return self.item.filename
        return f"{self.uids.image_uid}{'.dcm' if self.spooled.mime_type == DICOM_MIME_TYPE else '.jpg'}"


def ingest_image(
    *,
    order: RadiologyOrder,
    stream: IO[bytes],
    filename: str,
    uploaded_by: AbstractBaseUser | None,
    declared: DeclaredImage | None = None,
    expected_size: int | None = None,
    expected_checksum: str | None = None,
    confirmation: MismatchConfirmation | None = None,
    source_clinic: str = "",
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
        confirmation=confirmation,
        source_clinic=source_clinic,
    )
    (outcome,) = ingest_images([item], uploaded_by=uploaded_by)
    if isinstance(outcome, RadiologyError):
        raise outcome
    if not isinstance(outcome, IngestResult):  # an order was given: nothing is held
        raise TypeError("an ingest with an order returned no image")
    return outcome


def ingest_images(
    items: list[IngestItem], *, uploaded_by: AbstractBaseUser | None, arrival: Arrival | None = None
) -> list[IngestResult | HeldResult | RadiologyError]:
    """Store several files (one STOW-RS request); one outcome per item, in order.

    Each item is checked exactly as `ingest_image` checks one, and a bad item never stops
    the others. What a batch shares is the database work: one query finds the images
    already stored, three check studies and series, and the rows of all new images
    commit in one transaction (with the files written before it, as for one). If that
    transaction fails (a concurrent ingest took a UID, two items disagree about a
    study), its files are removed and the items are committed one by one, each then
    getting its own outcome. Items with no order are held as unmatched (HeldResult); `arrival`
    says how they came, for the audit trail.
    """
    outcomes: list[IngestResult | HeldResult | RadiologyError | None] = [None] * len(items)
    if any(item.staged is None for item in items):
        # Spool files are made there; a staged file is already in it (no mkdir per DICOM instance).
        settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as spools:
        prepared = _prepare(items, spools, outcomes)
        orphans = [entry for entry in prepared if entry.item.order is None]
        if orphans:
            holding.hold(orphans, outcomes, received_by=uploaded_by, arrival=arrival or Arrival(""))
            prepared = [entry for entry in prepared if entry.item.order is not None]
        fresh, repeats = _sort_out_stored(prepared, outcomes)
        checked, refused = _placed(fresh)
        for entry, error in refused:
            outcomes[entry.index] = error
        if len(checked) > 1:
            try:
                commit(checked, uploaded_by)
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


def _prepare(
    items: list[IngestItem],
    spools: contextlib.ExitStack,
    outcomes: list[IngestResult | HeldResult | RadiologyError | None],
) -> list[Prepared]:
    """Spool, check and parse each item and give it its UIDs; record the refusals in `outcomes`.

    The files of a big batch are parsed on two cores (parse_helper.py).
    """
    spooled_items: list[tuple[int, IngestItem, IO[bytes] | None, Spooled]] = []
    for index, item in enumerate(items):
        try:
            if item.filename is not None:
                storage.safe_filename(item.filename)  # refuse an unusable name before reading any bytes
            if item.staged is not None:
                spool_file = None
                spooled = take_staged(
                    item.staged, expected_size=item.expected_size, expected_checksum=item.expected_checksum
                )
            else:
                # Closed with the batch's other spools, when ingest_images leaves its ExitStack.
                spool_file = spools.enter_context(new_spool_file())
                if item.stream is None:
                    raise ValueError("an IngestItem needs a stream or a staged file")
                spooled = spool(
                    item.stream, spool_file, expected_size=item.expected_size, expected_checksum=item.expected_checksum
                )
        except RadiologyError as error:
            outcomes[index] = error
            continue
        spooled_items.append((index, item, spool_file, spooled))
    parsed_files = parse_helper.parse_files([(spooled.path, spooled.mime_type) for *_, spooled in spooled_items])
    prepared: list[Prepared] = []
    for (index, item, spool_file, spooled), parsed in zip(spooled_items, parsed_files, strict=True):
        try:
            if isinstance(parsed, RadiologyError):
                raise parsed
            if item.order is None and parsed.mime_type != DICOM_MIME_TYPE:
                raise RadiologyError("A photo must come with the order it belongs to.")
            uids = resolve_uids(parsed, item.declared, order=item.order, checksum=spooled.checksum)
        except RadiologyError as error:
            outcomes[index] = error
            continue
        prepared.append(Prepared(index, item, spool_file, spooled, parsed, uids))
    return prepared


def _placed(entries: list[Prepared]) -> tuple[list[Prepared], list[tuple[Prepared, RadiologyError]]]:
    """(the entries that may join their order, the others with their refusal): an entry may if
    the study and series it names are the order's (or new), and the file's patient is the
    order's (or a tech confirmed it belongs there)."""
    orders = KnownOrders.of(entry.order for entry in entries)
    known = KnownStudies.of(((entry.order, entry.uids) for entry in entries), orders)
    identities = [stored_header.file_identity(entry.parsed) for entry in entries]
    patients = KnownPatients.of(
        ((entry.order, entry.spooled.mime_type, identity) for entry, identity in zip(entries, identities, strict=True)),
        orders.patient_ids,
    )
    placed: list[Prepared] = []
    refused: list[tuple[Prepared, RadiologyError]] = []
    for entry, identity in zip(entries, identities, strict=True):
        try:
            known.check(entry.order, entry.uids)
            entry.identity = patients.verdict(entry.order, entry.spooled.mime_type, identity, entry.item.confirmation)
        except RadiologyError as error:
            refused.append((entry, error))
            continue
        entry.series_known = known.series_in_order_study(entry.order, entry.uids)
        placed.append(entry)
    return placed, refused


def _sort_out_stored(
    prepared: list[Prepared], outcomes: list[IngestResult | HeldResult | RadiologyError | None]
) -> tuple[list[Prepared], list[tuple[Prepared, Prepared]]]:
    """Answer the items already stored; return the new ones, and the repeats within the batch
    (an item whose image UID an earlier item of the batch also has).

    One query asks which image UIDs are stored, reading the UIDs alone; only when some are is a
    second one made for their rows (with series and study). Most files are new: the first
    query is then the only one, and a far cheaper one than reading whole rows with their joins.
    """
    image_uids = {entry.uids.image_uid for entry in prepared}
    if not image_uids:
        return [], []
    # No ORDER BY: image UIDs are unique, and they are read into a set.
    found = set(RadiologyImage.objects.filter(image_uid__in=image_uids).order_by().values_list("image_uid", flat=True))
    stored = (
        {
            image.image_uid: image
            for image in RadiologyImage.objects.select_related("series__study").filter(image_uid__in=found)
        }
        if found
        else {}
    )
    fresh: list[Prepared] = []
    repeats: list[tuple[Prepared, Prepared]] = []
    first_of: dict[str, Prepared] = {}
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


def _same_image(existing: RadiologyImage, entry: Prepared) -> RadiologyImage:
    """The stored image, if it is this exact file under this order; else ImageConflict."""
    if existing.checksum != entry.spooled.checksum:
        raise ImageConflict()
    if existing.series.study.radiology_order_id != entry.order.pk:
        raise ImageConflict("An image with this UID is already stored under another order.")
    return existing


def _as_stored(existing: RadiologyImage, entry: Prepared) -> IngestResult | RadiologyError:
    """The outcome of an item whose image UID is already stored: that image, or ImageConflict."""
    try:
        return IngestResult(image=_same_image(existing, entry), created=False)
    except RadiologyError as conflict:
        return conflict


def _stored_image(image_uid: str) -> RadiologyImage | None:
    return RadiologyImage.objects.select_related("series__study").filter(image_uid=image_uid).first()


def _repeat_outcome(
    entry: Prepared,
    first: Prepared,
    first_outcome: IngestResult | HeldResult | RadiologyError | None,
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
    _placed_entries, refused = _placed([entry])
    if refused:
        return refused[0][1]
    return _commit_one(entry, uploaded_by)


def _commit_one(entry: Prepared, uploaded_by: AbstractBaseUser | None) -> IngestResult | RadiologyError:
    """Commit one entry on its own: its image, the stored image if a concurrent ingest of its
    UID won the race, or the refusal."""
    try:
        commit([entry], uploaded_by)
    except Exception as failure:
        existing = _stored_image(entry.uids.image_uid)
        if existing is None:
            if isinstance(failure, RadiologyError):
                return failure
            raise
        return _as_stored(existing, entry)  # a concurrent ingest of this UID won the race
    return IngestResult(image=entry.image, created=True)  # type: ignore[arg-type]
