"""Store and forward end to end: a clinic's PACS-lite forwards to a regional one over a bad link.

Two real servers (the app server, each with its own database, store and staging directory), the
clinic's forwarder process, and the fault-injecting proxy between them (two_servers.py,
fault_proxy.py). Images go into the clinic by STOW-RS and by the upload sync protocol (a
multi-frame instance of several MiB written by large_dicom.py); orders with the same accession
numbers and patients are on both sides, except one the regional EMR does not know.

- The link drops connections at random offsets, stalls, resets everything, refuses
  connections for a while and swallows them for a while: at the end every image is on the
  regional side exactly once, byte-identical, under the order with its accession and with the
  clinic's name, the unknown order's images held in the unmatched inbox with the clinic's
  name, every clinic delivery delivered n of n, and nothing left in either staging area.
- The forwarder, the regional server and the clinic server are SIGKILLed at seeded random
  points (and started again): the same end state.
- A conflict (the regional side holds that image UID with other bytes) fails the delivery
  with image_conflict, shown by the clinic's API, is not retried by itself, and a tech's
  retry requeues it.

Everything is read from each server's own database with a plain connection, or its API. No
assertion is about time: every wait is a poll with a generous deadline. Backoff is 1-2 s and
the forwarder's timeout 5 s, so minutes of outage are seconds here.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apps.radiology.tests.forwarding.two_servers import (
    CLINIC_NAME,
    DESTINATION,
    OrderSpec,
    StudyFiles,
    TwoServers,
    sop_instance_uid,
    two_servers,
)
from apps.radiology.tests.upload_helpers import sha256_hex

SEED = 20260120
DEADLINE = 150  # seconds for a whole delivery to settle, faults included
LARGE_FRAMES = 16  # x 512 x 512 x 2 bytes: an 8 MiB multi-frame instance
KNOWN = [
    OrderSpec(accession="FWDA0001", patient_id="IKJ-1001", first_name="Amaka", last_name="Obi"),
    OrderSpec(accession="FWDA0002", patient_id="IKJ-1002", first_name="Tunde", last_name="Bello"),
]
UNKNOWN = OrderSpec(accession="FWDA0099", patient_id="IKJ-1099", first_name="Ngozi", last_name="Eze")

REGIONAL_IMAGES = """
SELECT i.image_uid, i.checksum, i.file_key, s.study_uid, s.source_clinic, o.accession_number
FROM radiology_radiologyimage i
JOIN radiology_radiologyseries se ON se.id = i.series_id
JOIN radiology_radiologystudy s ON s.id = se.study_id
JOIN radiology_radiologyorder o ON o.id = s.radiology_order_id
"""
REGIONAL_HELD = """
SELECT image_uid, checksum, file_key, source, source_clinic, accession_number, status FROM radiology_unmatchedimage
"""
CLINIC_IMAGES = "SELECT image_uid, checksum, file_key FROM radiology_radiologyimage"
CLINIC_DELIVERIES = """
SELECT s.study_uid, d.destination, d.state, d.images_sent, d.images_total, d.error_code
FROM radiology_studydelivery d JOIN radiology_radiologystudy s ON s.id = d.study_id
"""
CLINIC_TASKS = "SELECT state, COUNT(*) FROM radiology_forwardtask GROUP BY state"


@dataclass(frozen=True)
class SentImage:
    image_uid: str
    sha256: str
    accession: str
    study_uid: str
    held: bool  # the regional EMR has no order with its accession


@dataclass
class Shipment:
    """Every image put into the clinic, and where it must end up."""

    two: TwoServers
    images: list[SentImage] = field(default_factory=list)

    def stow(self, study: StudyFiles, instances: list[bytes], *, held: bool = False) -> None:
        self.two.clinic.stow(instances)
        self.images += [
            SentImage(sop_instance_uid(data), sha256_hex(data), study.order.accession, study.study_uid, held)
            for data in instances
        ]

    def upload_large(self, study: StudyFiles, path: Path) -> None:
        checksum = study.large_instance(path, frames=LARGE_FRAMES)
        body = self.two.clinic.upload(path, accession=study.order.accession, checksum=checksum)
        self.images.append(
            SentImage(body["image"]["image_uid"], checksum, study.order.accession, study.study_uid, held=False)
        )

    def studies(self) -> Counter[str]:
        return Counter(image.study_uid for image in self.images)

    # --- Waiting and checking -----------------------------------------------------------

    def delivered(self) -> bool:
        rows = self.two.clinic.query(CLINIC_DELIVERIES)
        return sorted((row[0], row[2]) for row in rows) == sorted((uid, "delivered") for uid in self.studies())

    def wait_delivered(self) -> None:
        self.two.wait_for(self.delivered, "every study delivered", seconds=DEADLINE)

    def assert_all_on_the_regional_side(self) -> None:
        """Each image exactly once, byte-identical, under its order with the clinic's name (or held)."""
        two = self.two
        stored = two.regional.query(REGIONAL_IMAGES)
        held = two.regional.query(REGIONAL_HELD)
        expected_stored = [image for image in self.images if not image.held]
        # The held rows in the message: an image missing here was once found held (a race, resolve.py).
        assert sorted(row[0] for row in stored) == sorted(image.image_uid for image in expected_stored), held
        by_uid = {row[0]: row for row in stored}
        for image in expected_stored:
            _uid, checksum, file_key, study_uid, source_clinic, accession = by_uid[image.image_uid]
            assert (checksum, study_uid, source_clinic, accession) == (
                image.sha256,
                image.study_uid,
                CLINIC_NAME,
                image.accession,
            )
            assert two.regional.stored_sha256(file_key) == image.sha256

        expected_held = [image for image in self.images if image.held]
        assert sorted(row[0] for row in held) == sorted(image.image_uid for image in expected_held)
        held_by_uid = {row[0]: row for row in held}
        for image in expected_held:
            _uid, checksum, file_key, source, source_clinic, accession, status = held_by_uid[image.image_uid]
            assert (checksum, source, source_clinic, accession, status) == (
                image.sha256,
                "upload",
                CLINIC_NAME,
                image.accession,
                "pending",
            )
            assert two.regional.stored_sha256(file_key) == image.sha256

    def assert_clinic_delivered_everything(self) -> None:
        two = self.two
        clinic_images = {uid: (checksum, key) for uid, checksum, key in two.clinic.query(CLINIC_IMAGES)}
        assert sorted(clinic_images) == sorted(image.image_uid for image in self.images)
        for image in self.images:
            checksum, file_key = clinic_images[image.image_uid]
            assert checksum == image.sha256
            assert two.clinic.stored_sha256(file_key) == image.sha256
        deliveries = sorted(two.clinic.query(CLINIC_DELIVERIES))
        assert deliveries == sorted(
            (study_uid, DESTINATION, "delivered", count, count, "") for study_uid, count in self.studies().items()
        )
        assert two.clinic.query(CLINIC_TASKS) == [("sent", len(self.images))]

    def assert_nothing_staged(self) -> None:
        assert self.two.clinic.leftover_files() == []
        assert self.two.regional.leftover_files() == []


@pytest.fixture
def two(tmp_path: Path) -> Iterator[TwoServers]:
    with two_servers(tmp_path, seed=SEED) as started:
        started.seed_orders(KNOWN)
        started.seed_orders([UNKNOWN], regional_too=False)
        yield started


def regional_images(two: TwoServers) -> int:
    """Images the regional side has, stored or held."""
    return len(two.regional.query("SELECT id FROM radiology_radiologyimage")) + len(
        two.regional.query("SELECT id FROM radiology_unmatchedimage")
    )


def latest_error_at(two: TwoServers) -> object:
    """When the clinic's forwarder last recorded a failed attempt (None before any)."""
    return two.clinic.query("SELECT MAX(error_at) FROM radiology_forwardtask")[0][0]


def wait_for_progress(two: TwoServers) -> None:
    """Until one more image reached the regional side (or every one has)."""
    before = regional_images(two)
    total = len(two.clinic.query("SELECT id FROM radiology_forwardtask"))
    two.wait_for(
        lambda: regional_images(two) >= min(before + 1, total), "an image more on the regional side", seconds=DEADLINE
    )


def test_every_image_arrives_once_and_intact_through_drops_stalls_resets_and_outages(
    two: TwoServers, tmp_path: Path
) -> None:
    proxy = two.proxy
    proxy.set_bandwidth(3_000_000)  # bytes/s each way: the 8 MiB instance is a few seconds on the wire
    proxy.cut_at_random(2_000, 400_000, probability=0.35)
    first, second = StudyFiles(KNOWN[0]), StudyFiles(KNOWN[1])
    unknown = StudyFiles(UNKNOWN)
    shipment = Shipment(two)
    shipment.stow(first, first.ct_instances(10))
    shipment.upload_large(second, tmp_path / "large.dcm")
    shipment.stow(unknown, unknown.ct_instances(3), held=True)

    two.wait_for(lambda: regional_images(two) >= 3, "the first images through", seconds=DEADLINE)
    proxy.stall(3)  # nothing moves, nothing closes: the forwarder's timeout must notice
    wait_for_progress(two)
    shipment.stow(second, second.ct_instances(6, series_number=2))
    proxy.drop_all()
    last_error = latest_error_at(two)
    proxy.go_down()  # connections refused: the forwarder backs off and tries again
    two.wait_for(lambda: latest_error_at(two) != last_error, "the forwarder noticing the link down", seconds=DEADLINE)
    proxy.come_up()
    wait_for_progress(two)
    proxy.go_down(refuse=False)  # a black hole: connections accepted, never answered
    shipment.stow(first, first.ct_instances(4, series_number=3, first_number=11))
    connections = proxy.counters().connections
    two.wait_for(
        lambda: proxy.counters().connections >= connections + 2,
        "the forwarder giving up on a swallowed connection and trying another",
        seconds=DEADLINE,
    )
    proxy.come_up()

    shipment.wait_delivered()
    counters = proxy.counters()
    assert counters.resets > 0
    shipment.assert_all_on_the_regional_side()
    shipment.assert_clinic_delivered_everything()
    shipment.assert_nothing_staged()


def test_sigkill_of_the_forwarder_and_of_either_server_at_random_points(two: TwoServers, tmp_path: Path) -> None:
    """The random points are counted in bytes through the link: each kill comes a seeded-random
    100-500 KB after the last, so it lands in the middle of a request (the large instance is
    about 4 MB on the wire at 400 KB/s)."""
    rng = random.Random(SEED)  # noqa: S311 (chaos, not crypto)
    two.proxy.set_bandwidth(400_000)
    first, second = StudyFiles(KNOWN[0]), StudyFiles(KNOWN[1])
    unknown = StudyFiles(UNKNOWN)
    shipment = Shipment(two)
    shipment.stow(first, first.ct_instances(12))
    shipment.stow(unknown, unknown.ct_instances(2), held=True)
    shipment.upload_large(second, tmp_path / "large.dcm")

    def kill_point() -> None:
        """Until a seeded-random number of bytes more went through (or nothing is left to send)."""
        target = two.proxy.counters().upstream + rng.randint(100_000, 500_000)
        two.wait_for(
            lambda: two.proxy.counters().upstream >= target or shipment.delivered(),
            f"{target} bytes through the link",
            seconds=DEADLINE,
        )

    kill_point()
    two.forwarder.kill()
    two.forwarder.start()
    kill_point()
    two.regional.server.kill()
    two.regional.server.start()
    kill_point()
    two.clinic.server.kill()
    two.clinic.server.start()
    shipment.stow(second, second.ct_instances(5, series_number=2))
    kill_point()
    two.forwarder.kill()
    two.regional.server.kill()
    two.regional.server.start()
    two.forwarder.start()
    kill_point()
    two.regional.server.kill()
    two.regional.server.start()

    shipment.wait_delivered()
    # Ingests killed mid-way leave a spool or stored file without its row: the documented clean-up.
    for side in (two.clinic, two.regional):
        side.server.manage("purge_interrupted_ingests", "--older-than-minutes", "0")
    shipment.assert_all_on_the_regional_side()
    shipment.assert_clinic_delivered_everything()
    shipment.assert_nothing_staged()


def test_a_conflict_fails_the_delivery_for_good_until_a_tech_retries(two: TwoServers) -> None:
    study = StudyFiles(KNOWN[0])
    ours, good_one, good_two = study.ct_instances(3)
    conflicting_uid = sop_instance_uid(ours)
    # The regional side already holds that UID with other bytes (another series and instance number).
    (theirs,) = study.ct_instances(1, first_number=7, instance_uids=[conflicting_uid])
    assert theirs != ours
    two.regional.stow([theirs])

    two.clinic.stow([ours, good_one, good_two])
    conflict_task = """
        SELECT t.state, t.error_code FROM radiology_forwardtask t
        JOIN radiology_radiologyimage i ON i.id = t.image_id WHERE i.image_uid = %s
    """
    two.wait_for(
        lambda: sorted(two.clinic.query(CLINIC_TASKS)) == [("failed", 1), ("sent", 2)],
        "the conflict failed and the rest sent",
        seconds=DEADLINE,
    )
    assert two.clinic.query(conflict_task, (conflicting_uid,)) == [("failed", "image_conflict")]
    assert two.clinic.query(CLINIC_DELIVERIES) == [(study.study_uid, DESTINATION, "failed", 2, 3, "image_conflict")]
    regional_uploads = "SELECT status, error_code FROM radiology_radiologyupload WHERE image_uid = %s"
    assert two.regional.query(regional_uploads, (conflicting_uid,)) == [("failed", "image_conflict")]
    # The regional side kept its own file: the clinic's never replaced it.
    (row,) = [row for row in two.regional.query(REGIONAL_IMAGES) if row[0] == conflicting_uid]
    assert row[1] == sha256_hex(theirs)

    # The clinic's API shows why.
    (study_id,) = two.clinic.query("SELECT id FROM radiology_radiologystudy WHERE study_uid = %s", (study.study_uid,))[
        0
    ]
    session = two.clinic.session()
    detail = session.get(f"{two.clinic.url}/api/v1/radiology/studies/{study_id}/", timeout=30)
    assert detail.status_code == 200, detail.text
    (delivery,) = detail.json()["deliveries"]
    ((error_detail,),) = two.clinic.query("SELECT error_detail FROM radiology_studydelivery")
    assert {key: value for key, value in delivery.items() if key != "summary"} == {
        "destination": DESTINATION,
        "state": "failed",
        "images_sent": 2,
        "images_total": 3,
        "delivered_at": None,
        "error": {"code": "image_conflict", "detail": error_detail},
    }

    # A tech's retry requeues it (the forwarder is stopped so the queued state can be seen).
    two.forwarder.kill()
    retried = session.post(f"{two.clinic.url}/api/v1/radiology/studies/{study_id}/forward/", json={}, timeout=30)
    assert retried.status_code == 202, retried.text
    assert {key: retried.json()[key] for key in ("destination", "state", "images_sent", "images_total", "error")} == {
        "destination": DESTINATION,
        "state": "sending",
        "images_sent": 2,
        "images_total": 3,
        "error": None,
    }
    assert sorted(two.clinic.query(CLINIC_TASKS)) == [("pending", 1), ("sent", 2)]
    assert two.clinic.query(conflict_task, (conflicting_uid,)) == [("pending", "image_conflict")]
    two.forwarder.start()
    two.wait_for(
        lambda: two.clinic.query(conflict_task, (conflicting_uid,)) == [("failed", "image_conflict")],
        "the retried conflict failed again",
        seconds=DEADLINE,
    )
    assert two.clinic.query(CLINIC_DELIVERIES) == [(study.study_uid, DESTINATION, "failed", 2, 3, "image_conflict")]
    assert two.regional.query(regional_uploads, (conflicting_uid,)) == [("failed", "image_conflict")]
