"""The radiology admin: changelists with search and filters; images read-only and never deletable."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from apps.radiology.access.permissions import DOCTOR_GROUP, RADIOLOGY_TECH_GROUP
from apps.radiology.models import RadiologyImage, RadiologyOrder, ViewerToken
from apps.radiology.tests.conftest import PASSWORD, IngestFile, MakeOrder, make_user


@pytest.fixture
def admin_client_logged_in(superuser: Any) -> Client:
    client = Client()
    assert client.login(username=superuser.username, password=PASSWORD)
    return client


@pytest.fixture
def image(make_order: MakeOrder, ingest_file: IngestFile, radtech: Any) -> RadiologyImage:
    make_order(modality="MR", exam_requested="MRI Lumbar spine")  # an order that stays empty
    return ingest_file(make_order(), "CT_small.dcm", user=radtech).image


def _changelist(model: str) -> str:
    return reverse(f"admin:radiology_{model}_changelist")


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["radiologyorder", "radiologystudy", "radiologyseries", "radiologyimage"])
def test_changelists_load(admin_client_logged_in: Client, image: RadiologyImage, model: str) -> None:
    response = admin_client_logged_in.get(_changelist(model))
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "expected"),
    [("radiologystudy", 1), ("radiologyseries", 1), ("radiologyimage", 1)],
)
def test_search_by_study_uid(admin_client_logged_in: Client, image: RadiologyImage, model: str, expected: int) -> None:
    study_uid = image.series.study.study_uid

    found = admin_client_logged_in.get(_changelist(model), {"q": study_uid})
    missing = admin_client_logged_in.get(_changelist(model), {"q": "9.9.9.9"})

    assert found.status_code == 200
    assert found.context["cl"].result_count == expected
    assert missing.status_code == 200
    assert missing.context["cl"].result_count == 0


@pytest.mark.django_db
def test_order_search_and_filters(admin_client_logged_in: Client, image: RadiologyImage) -> None:
    order = image.series.study.radiology_order
    url = _changelist("radiologyorder")

    by_accession = admin_client_logged_in.get(url, {"q": order.accession_number})
    by_patient = admin_client_logged_in.get(url, {"q": order.visit.patient.hospital_number})
    by_modality = admin_client_logged_in.get(url, {"modality": "MR"})
    by_status = admin_client_logged_in.get(url, {"status": RadiologyOrder.Status.COMPLETED})

    assert [o.pk for o in by_accession.context["cl"].result_list] == [order.pk]
    assert [o.pk for o in by_patient.context["cl"].result_list] == [order.pk]
    assert [o.exam_requested for o in by_modality.context["cl"].result_list] == ["MRI Lumbar spine"]
    assert by_status.context["cl"].result_count == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "params", "expected"),
    [
        ("radiologystudy", {"modality": "CT"}, 1),
        ("radiologystudy", {"modality": "MR"}, 0),
        ("radiologystudy", {"study_date__year": "2004"}, 1),
        ("radiologyseries", {"modality": "CT"}, 1),
        ("radiologyimage", {"mime_type": "application/dicom"}, 1),
        ("radiologyimage", {"mime_type": "image/jpeg"}, 0),
        ("radiologyimage", {"series__modality": "CT"}, 1),
    ],
)
def test_changelist_filters(
    admin_client_logged_in: Client, image: RadiologyImage, model: str, params: dict[str, str], expected: int
) -> None:
    response = admin_client_logged_in.get(_changelist(model), params)
    assert response.status_code == 200
    assert response.context["cl"].result_count == expected


@pytest.mark.django_db
def test_image_change_page_is_read_only(admin_client_logged_in: Client, image: RadiologyImage) -> None:
    response = admin_client_logged_in.get(reverse("admin:radiology_radiologyimage_change", args=[image.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    assert image.checksum in html
    assert image.file_key in html
    for field in ("checksum", "file_key", "image_uid", "file_size", "filename", "mime_type"):
        assert f'name="{field}"' not in html
    assert 'type="submit"' not in html.split('id="content-main"', 1)[1]


@pytest.mark.django_db
def test_image_post_to_change_page_changes_nothing(admin_client_logged_in: Client, image: RadiologyImage) -> None:
    response = admin_client_logged_in.post(
        reverse("admin:radiology_radiologyimage_change", args=[image.pk]), {"checksum": "0" * 64}
    )
    assert response.status_code == 403
    assert RadiologyImage.objects.get(pk=image.pk).checksum == image.checksum


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model",
    ["radiologyimage", "radiologyseries", "radiologystudy", "radiologyorder"],
)
def test_nothing_radiological_can_be_deleted_from_admin(
    admin_client_logged_in: Client, image: RadiologyImage, model: str
) -> None:
    objects = {
        "radiologyimage": image,
        "radiologyseries": image.series,
        "radiologystudy": image.series.study,
        "radiologyorder": image.series.study.radiology_order,
    }
    url = reverse(f"admin:radiology_{model}_delete", args=[objects[model].pk])

    assert admin_client_logged_in.get(url).status_code == 403
    assert admin_client_logged_in.post(url, {"post": "yes"}).status_code == 403
    assert type(objects[model]).objects.filter(pk=objects[model].pk).exists()


@pytest.mark.django_db
def test_bulk_delete_action_is_not_offered_for_images(admin_client_logged_in: Client, image: RadiologyImage) -> None:
    response = admin_client_logged_in.get(_changelist("radiologyimage"))
    assert "delete_selected" not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["radiologyimage", "radiologyseries", "radiologystudy"])
def test_no_add_page_for_ingested_rows(admin_client_logged_in: Client, model: str) -> None:
    assert admin_client_logged_in.get(reverse(f"admin:radiology_{model}_add")).status_code == 403


@pytest.mark.django_db
def test_study_change_page_lists_its_series_inline(admin_client_logged_in: Client, image: RadiologyImage) -> None:
    response = admin_client_logged_in.get(
        reverse("admin:radiology_radiologystudy_change", args=[image.series.study.pk])
    )
    assert response.status_code == 200
    assert image.series.series_uid in response.content.decode()


@pytest.mark.django_db
def test_non_staff_users_are_sent_to_the_login_page(client: Client, doctor: Any, image: RadiologyImage) -> None:
    client.login(username=doctor.username, password=PASSWORD)
    response = client.get(_changelist("radiologyimage"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


# --- only users who may see radiology data -------------------------------------------------------------

RADIOLOGY_MODELS = [
    "radiologyorder",
    "radiologystudy",
    "radiologyseries",
    "radiologyimage",
    "viewertoken",
    "auditevent",
]


@pytest.fixture
def clerk(db: None) -> Any:
    """Staff of another part of the EMR, in no radiology group, even granted every radiology view permission."""
    user = make_user("clerk-erin")
    user.is_staff = True
    user.save()
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="radiology"))
    return user


@pytest.fixture
def clerk_client(clerk: Any) -> Client:
    client = Client()
    client.force_login(clerk)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("model", RADIOLOGY_MODELS)
def test_staff_without_a_radiology_role_gets_no_changelist(
    clerk_client: Client, image: RadiologyImage, model: str
) -> None:
    assert clerk_client.get(_changelist(model)).status_code == 403


@pytest.mark.django_db
def test_staff_without_a_radiology_role_cannot_open_any_change_page(
    clerk_client: Client, image: RadiologyImage
) -> None:
    study = image.series.study
    pages = {
        "radiologyimage": image.pk,
        "radiologyseries": image.series.pk,
        "radiologystudy": study.pk,
        "radiologyorder": study.radiology_order.pk,
    }

    responses = {
        model: clerk_client.get(reverse(f"admin:radiology_{model}_change", args=[pk])) for model, pk in pages.items()
    }
    history = clerk_client.get(reverse("admin:radiology_radiologyimage_history", args=[image.pk]))
    viewer = clerk_client.get(reverse("admin:radiology_radiologystudy_viewer", args=[study.pk]))

    assert {model: response.status_code for model, response in responses.items()} == dict.fromkeys(pages, 403)
    assert history.status_code == 403
    assert viewer.status_code == 403
    for response in (*responses.values(), history, viewer):
        assert image.file_key not in response.content.decode()
        assert study.patient_id not in response.content.decode()
    assert not ViewerToken.objects.exists()


@pytest.mark.django_db
def test_staff_without_a_radiology_role_sees_no_radiology_app(clerk_client: Client, image: RadiologyImage) -> None:
    index = clerk_client.get(reverse("admin:index"))
    app = clerk_client.get(reverse("admin:app_list", args=["radiology"]))

    assert index.status_code == 200
    assert "Radiology (PACS-lite)" not in index.content.decode()
    assert app.status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("group", [DOCTOR_GROUP, RADIOLOGY_TECH_GROUP])
def test_staff_in_a_radiology_group_reads_the_image_page(
    clerk: Any, clerk_client: Client, image: RadiologyImage, group: str
) -> None:
    clerk.groups.add(Group.objects.get_or_create(name=group)[0])

    response = clerk_client.get(reverse("admin:radiology_radiologyimage_change", args=[image.pk]))

    assert response.status_code == 200
    assert image.file_key in response.content.decode()
