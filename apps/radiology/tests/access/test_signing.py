"""Signed image URLs and viewer tokens, unit by unit (the HTTP side is in test_file_views.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.core import signing as django_signing
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.radiology.access import signing
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologyStudy, ViewerToken
from apps.radiology.tests.api_fixtures import (
    FROZEN_NOW,
    freeze_signing_time,
    make_image_row,
    make_series,
    make_study,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(order: RadiologyOrder) -> RadiologyStudy:
    return make_study(order)


@pytest.fixture
def images(study: RadiologyStudy) -> list[RadiologyImage]:
    series = make_series(study, series_number=1)
    return [make_image_row(series, instance_number=number) for number in (1, 2)]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    return freeze_signing_time(monkeypatch)


def _parts(url: str) -> tuple[str, str, str, str]:
    """(base, filename, expires, token) of a signed image URL."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, strict_parsing=True)
    return f"{parts.scheme}://{parts.netloc}", parts.path.rsplit("/", 1)[-1], query["expires"][0], query["token"][0]


# --- Image URLs --------------------------------------------------------------------------


def test_image_url_signs_id_checksum_filename_and_expiry(images: list[RadiologyImage], clock: Any) -> None:
    image = images[0]
    filename = image.file_key.rsplit("/", 1)[-1]
    expires_at = FROZEN_NOW + 300
    expected_token = django_signing.Signer(salt="pacs-lite.image-url.v1").signature(
        f"{image.pk}/{image.checksum}/{filename}/{expires_at}"
    )

    url = signing.image_url(image=image, expires_in=300, base_url="http://pacs.local:8000/")

    assert url == (
        f"http://pacs.local:8000/api/v1/radiology/files/{image.pk}/{filename}"
        f"?{urlencode({'expires': expires_at, 'token': expected_token})}"
    )
    signing.verify_image_url(image=image, filename=filename, expires=str(expires_at), token=expected_token)


def test_image_url_default_lifetime_is_the_setting(images: list[RadiologyImage], clock: Any, settings: Any) -> None:
    settings.RADIOLOGY_URL_EXPIRES = 90

    _base, _filename, expires, _token = _parts(signing.image_url(image=images[0], base_url="http://x"))

    assert expires == str(FROZEN_NOW + 90)


def test_pacs_public_url_wins_over_the_request_base(images: list[RadiologyImage], clock: Any, settings: Any) -> None:
    settings.PACS_PUBLIC_URL = "https://pacs.example.org"

    base, *_rest = _parts(signing.image_url(image=images[0], base_url="http://internal:8000"))

    assert base == "https://pacs.example.org"


def test_a_signed_url_is_valid_until_its_expiry_second_inclusive(images: list[RadiologyImage], clock: Any) -> None:
    image = images[0]
    _base, filename, expires, token = _parts(signing.image_url(image=image, expires_in=10, base_url="http://x"))

    clock(FROZEN_NOW + 10)
    signing.verify_image_url(image=image, filename=filename, expires=expires, token=token)
    clock(FROZEN_NOW + 10.001)
    with pytest.raises(signing.SignatureRejected, match="expired"):
        signing.verify_image_url(image=image, filename=filename, expires=expires, token=token)


def test_an_expired_url_with_a_later_expiry_written_in_is_refused(images: list[RadiologyImage], clock: Any) -> None:
    image = images[0]
    _base, filename, expires, token = _parts(signing.image_url(image=image, expires_in=10, base_url="http://x"))
    clock(FROZEN_NOW + 11)

    with pytest.raises(signing.SignatureRejected, match="bad signature"):
        signing.verify_image_url(image=image, filename=filename, expires=str(int(expires) + 3600), token=token)


@pytest.mark.parametrize("field", ["pk", "checksum"])
def test_the_signature_is_bound_to_the_image_id_and_checksum(
    images: list[RadiologyImage], clock: Any, field: str
) -> None:
    image = images[0]
    _base, filename, expires, token = _parts(signing.image_url(image=image, base_url="http://x"))
    other = RadiologyImage(pk=image.pk, checksum=image.checksum, file_key=image.file_key)
    setattr(other, field, images[1].pk if field == "pk" else "0" * 64)

    with pytest.raises(signing.SignatureRejected, match="bad signature"):
        signing.verify_image_url(image=other, filename=filename, expires=expires, token=token)


def test_the_signature_is_bound_to_the_filename(images: list[RadiologyImage], clock: Any) -> None:
    image = images[0]
    _base, _filename, expires, token = _parts(signing.image_url(image=image, base_url="http://x"))

    with pytest.raises(signing.SignatureRejected, match="bad signature"):
        signing.verify_image_url(image=image, filename="other.dcm", expires=expires, token=token)


@pytest.mark.parametrize("shape", ["+{n}", "0{n}", " {n}", "{n} ", "{n}.0", "", "abc", "1e9"])
def test_an_expiry_not_written_as_the_signer_wrote_it_is_malformed(
    images: list[RadiologyImage], clock: Any, shape: str
) -> None:
    image = images[0]
    _base, filename, expires, token = _parts(signing.image_url(image=image, base_url="http://x"))

    with pytest.raises(signing.SignatureRejected, match="malformed expiry"):
        signing.verify_image_url(image=image, filename=filename, expires=shape.format(n=expires), token=token)


def test_every_single_character_change_of_the_token_is_refused(images: list[RadiologyImage], clock: Any) -> None:
    image = images[0]
    _base, filename, expires, token = _parts(signing.image_url(image=image, base_url="http://x"))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    refused = 0

    for position, character in enumerate(token):
        replacement = alphabet[(alphabet.index(character) + 1) % len(alphabet)]
        altered = token[:position] + replacement + token[position + 1 :]
        with pytest.raises(signing.SignatureRejected, match="bad signature"):
            signing.verify_image_url(image=image, filename=filename, expires=expires, token=altered)
        refused += 1

    assert refused == len(token) == 43  # base64 of a SHA-256 HMAC, unpadded
    for missing in ("", token[:-1], token + "A"):
        with pytest.raises(signing.SignatureRejected):
            signing.verify_image_url(image=image, filename=filename, expires=expires, token=missing)


def test_a_token_of_another_kind_or_key_is_refused(images: list[RadiologyImage], clock: Any, settings: Any) -> None:
    image = images[0]
    filename = image.file_key.rsplit("/", 1)[-1]
    expires = str(FROZEN_NOW + 60)
    message = f"{image.pk}/{image.checksum}/{filename}/{expires}"
    viewer_salted = django_signing.Signer(salt=signing.VIEWER_TOKEN_SALT).signature(message)
    unsalted = django_signing.Signer().signature(message)
    other_key = django_signing.Signer(key="another-secret", salt=signing.IMAGE_URL_SALT).signature(message)

    for token in (viewer_salted, unsalted, other_key):
        with pytest.raises(signing.SignatureRejected, match="bad signature"):
            signing.verify_image_url(image=image, filename=filename, expires=expires, token=token)
    right = django_signing.Signer(salt=signing.IMAGE_URL_SALT).signature(message)
    signing.verify_image_url(image=image, filename=filename, expires=expires, token=right)


# --- Image URLs made for a user: the issuer is signed in ------------------------------------------


def test_an_image_url_for_a_user_signs_issuer_and_issue_time(
    images: list[RadiologyImage], clock: Any, doctor: Any
) -> None:
    image = images[0]
    filename = image.file_key.rsplit("/", 1)[-1]
    expires_at = FROZEN_NOW + 300
    signature = django_signing.Signer(salt="pacs-lite.image-url.v1").signature(
        f"{image.pk}/{image.checksum}/{filename}/{expires_at}/{doctor.pk}/{FROZEN_NOW}/-"
    )

    url = signing.image_url(image=image, user=doctor, expires_in=300, base_url="http://pacs.local")

    assert url == (
        f"http://pacs.local/api/v1/radiology/files/{image.pk}/{filename}"
        f"?{urlencode({'expires': expires_at, 'token': f'{doctor.pk}.{FROZEN_NOW}.-.{signature}'})}"
    )
    link = signing.verify_image_url(
        image=image, filename=filename, expires=str(expires_at), token=url.rsplit("=", 1)[1]
    )
    assert (link.issuer_id, link.issued_at, link.via_token_id) == (doctor.pk, FROZEN_NOW, None)


def test_an_image_url_through_a_viewer_token_names_the_token(
    images: list[RadiologyImage], clock: Any, doctor: Any, study: RadiologyStudy
) -> None:
    from apps.radiology.dicomweb.auth import ViewerTokenPrincipal

    grant = signing.ViewerGrant(
        token_id=uuid.uuid4(), study_id=study.pk, study_uid=study.study_uid, issuer_id=doctor.pk
    )
    _base, filename, expires, token = _parts(
        signing.image_url(image=images[0], user=ViewerTokenPrincipal(grant), base_url="http://x")
    )

    link = signing.verify_image_url(image=images[0], filename=filename, expires=expires, token=token)
    assert token.startswith(f"{doctor.pk}.{FROZEN_NOW}.{grant.token_id.hex}.")
    assert (link.issuer_id, link.via_token_id) == (doctor.pk, grant.token_id)


@pytest.mark.parametrize(
    "change",
    [
        lambda parts: [str(int(parts[0]) + 1), *parts[1:]],  # another issuer
        lambda parts: [parts[0], str(int(parts[1]) + 10), *parts[2:]],  # issued later (after a cut-off)
        lambda parts: [parts[0], parts[1], uuid.uuid4().hex, parts[3]],  # through some token
        lambda parts: [parts[3]],  # issuer dropped: the old, issuer-less form
    ],
    ids=["issuer", "issued-at", "via-token", "issuer-dropped"],
)
def test_the_issuer_fields_are_signed(images: list[RadiologyImage], clock: Any, doctor: Any, change: Any) -> None:
    _base, filename, expires, token = _parts(signing.image_url(image=images[0], user=doctor, base_url="http://x"))

    with pytest.raises(signing.SignatureRejected, match="bad signature"):
        signing.verify_image_url(
            image=images[0], filename=filename, expires=expires, token=".".join(change(token.split(".")))
        )


@pytest.mark.parametrize(
    "token",
    ["1.2.-", "1.2.-.sig.x", "x.2.-.sig", "1.y.-.sig", "1.2.nothex.sig", "².2.-.sig", "9" * 30 + ".2.-.s", "1.2.3.s"],
)
def test_a_malformed_issuer_token_is_refused_before_any_query(token: str, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(0), pytest.raises(signing.SignatureRejected, match="malformed link"):
        signing.parse_image_link(expires=str(FROZEN_NOW), token=token)


# --- Viewer tokens -----------------------------------------------------------------------


def test_a_viewer_token_records_who_may_open_which_study_until_when(study: RadiologyStudy, doctor: Any) -> None:
    before = timezone.now()

    token = signing.issue_viewer_token(study=study, user=doctor, expires_in=120)

    record = ViewerToken.objects.get()
    assert (record.study_id, record.issued_to_id, record.revoked_at) == (study.pk, doctor.pk, None)
    assert before + dt.timedelta(seconds=120) <= record.expires_at <= timezone.now() + dt.timedelta(seconds=120)
    grant = signing.verify_viewer_token(token)
    assert grant == signing.ViewerGrant(token_id=record.id, study_id=study.pk, study_uid=study.study_uid)
    assert grant.issuer_id == doctor.pk
    payload = django_signing.loads(token, salt=signing.VIEWER_TOKEN_SALT)
    assert payload == {"t": record.id.hex, "s": study.study_uid, "e": int(record.expires_at.timestamp())}


def test_a_viewer_token_is_checked_by_one_query_compiled_once(study: RadiologyStudy, doctor: Any) -> None:
    """OHIF sends its token with every frame: the check is one statement, compiled on first use only."""
    token = signing.issue_viewer_token(study=study, user=doctor)
    grants, statements = [], []
    for _ in range(2):
        with CaptureQueriesContext(connection) as queries:
            grants.append(signing.verify_viewer_token(token))
        statements.append([query["sql"] for query in queries.captured_queries])
    compiled = signing._VIEWER_TOKEN._local.compiled

    assert (
        grants[0]
        == grants[1]
        == signing.ViewerGrant(token_id=ViewerToken.objects.get().pk, study_id=study.pk, study_uid=study.study_uid)
    )
    assert [len(sql) for sql in statements] == [1, 1]
    assert statements[0] == statements[1]
    if connection.vendor == "postgresql":  # the prepared statement (fastpaths/prepared.py)
        assert statements[0][0].startswith("EXECUTE pacs_lite_lookup_")
    signing.verify_viewer_token(token)
    assert signing._VIEWER_TOKEN._local.compiled is compiled


def test_a_viewer_token_for_nobody_records_no_user(study: RadiologyStudy) -> None:
    signing.issue_viewer_token(study=study, user=None)

    record = ViewerToken.objects.get()
    assert record.issued_to_id is None
    assert abs((record.expires_at - timezone.now()).total_seconds() - 3600) < 5


def test_a_viewer_token_expires(study: RadiologyStudy, doctor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    token = signing.issue_viewer_token(study=study, user=doctor, expires_in=30)
    expires_at = int(ViewerToken.objects.get().expires_at.timestamp())
    clock = freeze_signing_time(monkeypatch, expires_at)

    assert signing.verify_viewer_token(token).study_id == study.pk
    clock(expires_at + 1)
    with pytest.raises(signing.SignatureRejected, match="expired"):
        signing.verify_viewer_token(token)


def test_a_revoked_viewer_token_is_refused(study: RadiologyStudy, doctor: Any) -> None:
    token = signing.issue_viewer_token(study=study, user=doctor)
    other = signing.issue_viewer_token(study=study, user=doctor)
    grant = signing.verify_viewer_token(token)

    assert signing.revoke_viewer_token(grant.token_id) is True

    with pytest.raises(signing.SignatureRejected, match="revoked"):
        signing.verify_viewer_token(token)
    assert signing.verify_viewer_token(other).study_id == study.pk  # only that one
    assert signing.revoke_viewer_token(grant.token_id) is False
    assert signing.revoke_viewer_token(uuid.uuid4()) is False


def test_every_single_character_change_of_a_viewer_token_is_refused(study: RadiologyStudy, doctor: Any) -> None:
    token = signing.issue_viewer_token(study=study, user=doctor)

    for position, character in enumerate(token):
        replacement = "B" if character == "A" else "A"
        altered = token[:position] + replacement + token[position + 1 :]
        with pytest.raises(signing.SignatureRejected, match="bad token"):
            signing.verify_viewer_token(altered)
    for broken in ("", "not-a-token", token[:-1], token + "A", token.replace(":", "", 1)):
        with pytest.raises(signing.SignatureRejected, match="bad token"):
            signing.verify_viewer_token(broken)
    assert signing.verify_viewer_token(token).study_uid == study.study_uid


def test_a_viewer_token_is_bound_to_its_study_and_record(study: RadiologyStudy, doctor: Any, make_order: Any) -> None:
    """Even a correctly signed token (someone with the key) names a record and its study."""
    other_study = make_study(make_order())
    token = signing.issue_viewer_token(study=study, user=doctor)
    payload = django_signing.loads(token, salt=signing.VIEWER_TOKEN_SALT)
    moved = django_signing.dumps({**payload, "s": other_study.study_uid}, salt=signing.VIEWER_TOKEN_SALT)
    unknown = django_signing.dumps({**payload, "t": uuid.uuid4().hex}, salt=signing.VIEWER_TOKEN_SALT)

    for forged in (moved, unknown):
        with pytest.raises(signing.SignatureRejected, match="revoked"):
            signing.verify_viewer_token(forged)


@pytest.mark.parametrize(
    "payload",
    [{"s": "1.2.3", "e": 9999999999}, {"t": "not-hex", "s": "1.2.3", "e": 9999999999}, {"t": "", "e": "x"}, "text"],
    ids=["no-record", "bad-record", "bad-expiry", "not-a-dict"],
)
def test_a_malformed_viewer_payload_is_refused(payload: Any) -> None:
    token = django_signing.dumps(payload, salt=signing.VIEWER_TOKEN_SALT)

    with pytest.raises(signing.SignatureRejected, match="bad token"):
        signing.verify_viewer_token(token)


def test_an_image_url_token_is_not_a_viewer_token(study: RadiologyStudy, doctor: Any) -> None:
    token = signing.issue_viewer_token(study=study, user=doctor)
    payload = django_signing.loads(token, salt=signing.VIEWER_TOKEN_SALT)

    wrong_salt = django_signing.dumps(payload, salt=signing.IMAGE_URL_SALT)

    with pytest.raises(signing.SignatureRejected, match="bad token"):
        signing.verify_viewer_token(wrong_salt)


@pytest.mark.parametrize(
    ("base", "prefix"),
    [
        ("http://localhost:3000/viewer", "http://localhost:3000/viewer?"),
        ("https://ohif.example.org/viewer?datasources=pacs", "https://ohif.example.org/viewer?datasources=pacs&"),
        ("", "/api/v1/radiology/viewer/?"),
    ],
    ids=["plain", "with-query", "unset-means-the-built-in-viewer"],
)
def test_viewer_url_puts_the_study_and_token_in_the_query(
    study: RadiologyStudy, doctor: Any, settings: Any, base: str, prefix: str
) -> None:
    settings.OHIF_VIEWER_URL = base

    url = signing.viewer_url(study=study, user=doctor, expires_in=60)

    token = parse_qs(urlsplit(url).query)["token"][0]
    assert url == prefix + urlencode({"StudyInstanceUIDs": study.study_uid, "token": token})
    assert signing.verify_viewer_token(token).study_uid == study.study_uid
