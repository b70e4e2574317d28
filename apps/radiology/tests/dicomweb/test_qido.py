"""QIDO-RS: searches for studies, series and instances (application/dicom+json).

Three studies of three patients, each made through the one ingest path from re-labelled
pydicom samples, with known dates, descriptions and names:
  A  Balogun^Ngozi  2024-01-10  CT series (2 instances) + MR series (1)
  B  Okafor^Chidi   2024-02-15  MR series (1)
  C  Smith^John     2023-12-31  CT series (1)
created in that order, so the study list (newest first) is C, B, A. Answers are compared
as exact DICOM JSON; every search runs in a fixed number of queries.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client

from apps.radiology.models import RadiologyStudy

from .conftest import API, PHOTO, Put, Stored, World, patient_order
from .helpers import QUIET_UID_WARNINGS, count_queries, error, json_of

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
INVALID_DATE = error("StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD.", "invalid_query")


@pytest.fixture
def world(put: Put, make_order: Any) -> World:
    a = patient_order(make_order, "Ngozi", "Balogun", dt.date(1980, 5, 17))
    b = patient_order(make_order, "Chidi", "Okafor", None)
    c = patient_order(make_order, "John", "Smith", dt.date(1955, 1, 2))
    study = {
        "StudyDate": "20240110",
        "StudyTime": "093000",
        "StudyDescription": "CT head",
        "ReferringPhysicianName": "Adeyemi^Tunde",
    }
    ct = {**study, "SeriesNumber": 1, "SeriesDescription": "Axial", "SeriesDate": "20240110", "SeriesTime": "093500"}
    a_ct1 = put("CT_small.dcm", order=a, instance_number=1, **ct)
    a_ct2 = put("CT_small.dcm", order=a, series_uid=a_ct1.series_uid, instance_number=2, **ct)
    a_mr = put(
        "MR_small.dcm", order=a, SeriesNumber=2, SeriesDescription="Sagittal T1", BodyPartExamined="HEAD", **study
    )
    b_mr = put(
        "MR_small.dcm",
        order=b,
        StudyDate="20240215",
        StudyTime="141516.25",
        StudyDescription="MR knee",
        ReferringPhysicianName="",
        SeriesNumber=1,
        SeriesDescription="",
    )
    c_ct = put("CT_small.dcm", order=c, StudyDate="20231231", StudyDescription="CT chest", SeriesNumber=1)
    return World(a_ct1, a_ct2, a_mr, b_mr, c_ct)


def search(client: Client, path: str, **params: str | list[str]) -> list[dict[str, Any]]:
    response = client.get(f"{API}/{path}", params, headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    return json_of(response)  # type: ignore[no-any-return]


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [item[tag]["Value"][0] for item in results]


def value(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def person(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def study_json(
    stored: Stored,
    *,
    date: str,
    time: str | None,
    description: str,
    referring: str,
    name: str,
    birth: str | None,
    modalities: list[str],
    series: int,
    instances: int,
) -> dict[str, Any]:
    order = stored.study.radiology_order
    accession = order.accession_number
    return {
        "00080005": value("CS", "ISO_IR 192"),
        "00080020": value("DA", date),
        "00080030": value("TM", time) if time else value("TM"),
        "00080050": value("SH", accession),
        "00080056": value("CS", "ONLINE"),
        "00080061": value("CS", *modalities),
        "00080090": person(referring),
        "00081030": value("LO", description),
        "00081190": value("UR", f"http://testserver{API}/studies/{stored.study_uid}"),
        "00100010": person(name),
        "00100020": value("LO", order.visit.patient.hospital_number),
        "00100030": value("DA", birth) if birth else value("DA"),
        "00100040": value("CS", "F"),
        "0020000D": value("UI", stored.study_uid),
        "00200010": value("SH", accession),
        "00201206": value("IS", series),
        "00201208": value("IS", instances),
    }


def study_a(world: World) -> dict[str, Any]:
    return study_json(
        world.a_ct1,
        date="20240110",
        time="093000",
        description="CT head",
        referring="Adeyemi^Tunde",
        name="Balogun^Ngozi",
        birth="19800517",
        modalities=["CT", "MR"],
        series=2,
        instances=3,
    )


def study_b(world: World) -> dict[str, Any]:
    return study_json(
        world.b_mr,
        date="20240215",
        time="141516.250000",
        description="MR knee",
        referring="",
        name="Okafor^Chidi",
        birth=None,
        modalities=["MR"],
        series=1,
        instances=1,
    )


def study_c(world: World) -> dict[str, Any]:
    return study_json(
        world.c_ct,
        date="20231231",
        time="072730",
        description="CT chest",
        referring="",
        name="Smith^John",
        birth="19550102",
        modalities=["CT"],
        series=1,
        instances=1,
    )


def series_json(
    stored: Stored,
    *,
    modality: str,
    number: int,
    description: str,
    date: str | None,
    time: str | None,
    body_part: str,
    instances: int,
) -> dict[str, Any]:
    return {
        "00080005": value("CS", "ISO_IR 192"),
        "00080021": value("DA", date) if date else value("DA"),
        "00080031": value("TM", time) if time else value("TM"),
        "00080060": value("CS", modality),
        "0008103E": value("LO", description) if description else value("LO"),
        "00081190": value("UR", f"http://testserver{stored.series_url()}"),
        "00180015": value("CS", body_part) if body_part else value("CS"),
        "0020000D": value("UI", stored.study_uid),
        "0020000E": value("UI", stored.series_uid),
        "00200011": value("IS", number),
        "00201209": value("IS", instances),
    }


def series_a_ct(world: World) -> dict[str, Any]:
    return series_json(
        world.a_ct1,
        modality="CT",
        number=1,
        description="Axial",
        date="20240110",
        time="093500",
        body_part="",
        instances=2,
    )


def series_a_mr(world: World) -> dict[str, Any]:
    # MR_small has no SeriesDate or SeriesTime: present, without a value.
    return series_json(
        world.a_mr,
        modality="MR",
        number=2,
        description="Sagittal T1",
        date=None,
        time=None,
        body_part="HEAD",
        instances=1,
    )


def instance_json(stored: Stored, *, sop_class: str, modality: str, number: int, size: int) -> dict[str, Any]:
    return {
        "00080016": value("UI", sop_class),
        "00080018": value("UI", stored.image_uid),
        "00080060": value("CS", modality),
        "00081190": value("UR", f"http://testserver{stored.url()}"),
        "00083002": value("UI", EXPLICIT_LITTLE),
        "0020000D": value("UI", stored.study_uid),
        "0020000E": value("UI", stored.series_uid),
        "00200013": value("IS", number),
        "00280008": value("IS", 1),
        "00280010": value("US", size),
        "00280011": value("US", size),
    }


# --- studies ------------------------------------------------------------------------------


def test_all_studies_newest_first_with_their_attributes(world: World, doctor_client: Client) -> None:
    assert search(doctor_client, "studies") == [study_c(world), study_b(world), study_a(world)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"StudyInstanceUID": "{a}"}, ["a"]),
        ({"StudyInstanceUID": "{a},{c}"}, ["c", "a"]),
        ({"StudyInstanceUID": ["{a}", "{b}"]}, ["b", "a"]),
        ({"0020000D": "{b}"}, ["b"]),
        ({"StudyInstanceUID": "1.2.3.4"}, []),
        ({"PatientID": "{patient_b}"}, ["b"]),
        ({"00100020": "{patient_c}"}, ["c"]),
        ({"PatientID": "NOBODY"}, []),
        ({"AccessionNumber": "{accession_a}"}, ["a"]),
        ({"00080050": "{accession_c}"}, ["c"]),
        ({"AccessionNumber": "R000000000000"}, []),
        ({"StudyInstanceUID": "{a},{b}", "PatientID": "{patient_b}"}, ["b"]),
    ],
)
def test_studies_by_uid_patient_id_and_accession(
    world: World, doctor_client: Client, params: dict[str, Any], expected: list[str]
) -> None:
    names = {
        "a": world.a,
        "b": world.b,
        "c": world.c,
        "patient_b": world.b_mr.study.patient_id,
        "patient_c": world.c_ct.study.patient_id,
        "accession_a": world.a_ct1.study.accession_number,
        "accession_c": world.c_ct.study.accession_number,
    }
    filled = {
        key: [item.format(**names) for item in raw] if isinstance(raw, list) else raw.format(**names)
        for key, raw in params.items()
    }
    assert uids(search(doctor_client, "studies", **filled)) == [names[item] for item in expected]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("Balogun^Ngozi", ["a"]),
        ("balogun^ngozi", ["a"]),
        ("BALOGUN^NGOZI", ["a"]),
        ("Balogun*", ["a"]),
        ("*ngozi", ["a"]),
        ("*o*", ["c", "b", "a"]),
        ("*", ["c", "b", "a"]),
        ("Bal?gun^Ngoz?", ["a"]),
        ("?kafor*", ["b"]),
        ("S??th^John", ["c"]),
        ("Balogun", []),
        ("Ngozi Balogun", ["a"]),  # the EMR's own form of the name matches too
        ("Smith^J", []),
        ("Smith^J*", ["c"]),
        ("Smi.h*", []),  # a dot is a character, not a pattern
        ("(Smith)*", []),
    ],
)
def test_studies_by_patient_name_with_wildcards(
    world: World, doctor_client: Client, pattern: str, expected: list[str]
) -> None:
    names = {"a": world.a, "b": world.b, "c": world.c}
    for key in ("PatientName", "00100010"):
        assert uids(search(doctor_client, "studies", **{key: pattern})) == [names[item] for item in expected]


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        ("20240110", ["a"]),
        ("20240111", []),
        ("20240101-20240131", ["a"]),
        ("20240110-20240215", ["b", "a"]),
        ("20240111-", ["b"]),
        ("20240110-", ["b", "a"]),
        ("-20240110", ["c", "a"]),
        ("-20231231", ["c"]),
        ("20230101-20241231", ["c", "b", "a"]),
    ],
)
def test_studies_by_study_date_and_ranges(world: World, doctor_client: Client, dates: str, expected: list[str]) -> None:
    names = {"a": world.a, "b": world.b, "c": world.c}
    order = {"c": 0, "b": 1, "a": 2}  # newest first
    wanted = sorted(expected, key=order.__getitem__)
    assert uids(search(doctor_client, "studies", StudyDate=dates)) == [names[item] for item in wanted]
    assert uids(search(doctor_client, "studies", **{"00080020": dates})) == [names[item] for item in wanted]


@pytest.mark.parametrize(
    ("dates", "body"),
    [
        ("2024-01-10", INVALID_DATE),
        ("2024", INVALID_DATE),
        ("yesterday", INVALID_DATE),
        ("20240110-20240215-20240301", INVALID_DATE),
        ("202401101", INVALID_DATE),
        ("20241301", error("StudyDate is not a valid date.", "invalid_query")),
        ("20240230-", error("StudyDate is not a valid date.", "invalid_query")),
        ("-20241232", error("StudyDate is not a valid date.", "invalid_query")),
    ],
)
def test_an_invalid_study_date_is_400(world: World, doctor_client: Client, dates: str, body: dict[str, str]) -> None:
    for path in ("studies", "series", "instances", f"studies/{world.a}/series", f"studies/{world.a}/instances"):
        response = doctor_client.get(f"{API}/{path}", {"StudyDate": dates})
        assert response.status_code == 400, path
        assert json_of(response) == body


def test_studies_by_modalities_in_study_keep_their_full_counts(world: World, doctor_client: Client) -> None:
    assert search(doctor_client, "studies", ModalitiesInStudy="MR") == [study_b(world), study_a(world)]
    assert search(doctor_client, "studies", ModalitiesInStudy="CT") == [study_c(world), study_a(world)]
    assert search(doctor_client, "studies", ModalitiesInStudy="CT,MR") == [
        study_c(world),
        study_b(world),
        study_a(world),
    ]
    assert search(doctor_client, "studies", **{"00080061": "RTDOSE"}) == []


def test_studies_with_limit_and_offset(world: World, doctor_client: Client) -> None:
    assert uids(search(doctor_client, "studies", limit="1")) == [world.c]
    assert uids(search(doctor_client, "studies", limit="2", offset="1")) == [world.b, world.a]
    assert uids(search(doctor_client, "studies", offset="2")) == [world.a]
    assert uids(search(doctor_client, "studies", offset="3")) == []
    assert uids(search(doctor_client, "studies", limit="0")) == []
    assert uids(search(doctor_client, "studies", limit="1", PatientName="*o*", offset="1")) == [world.b]


@pytest.mark.parametrize(
    ("params", "body"),
    [
        ({"limit": "-1"}, error("limit must be a non-negative integer.", "invalid_query")),
        ({"limit": "ten"}, error("limit must be a non-negative integer.", "invalid_query")),
        ({"offset": "1.5"}, error("offset must be a non-negative integer.", "invalid_query")),
        ({"offset": ""}, error("offset must be a non-negative integer.", "invalid_query")),
    ],
)
def test_an_invalid_limit_or_offset_is_400(
    world: World, doctor_client: Client, params: dict[str, str], body: Any
) -> None:
    response = doctor_client.get(f"{API}/studies", params)
    assert response.status_code == 400
    assert json_of(response) == body


def test_includefield_does_not_change_a_study_answer(world: World, doctor_client: Client) -> None:
    expected = [study_c(world), study_b(world), study_a(world)]
    for fields in ("all", "00081030", "PatientAge,00100010", "NoSuchKeyword"):
        assert search(doctor_client, "studies", includefield=fields) == expected


def test_an_empty_search_is_200_and_an_empty_array(world: World, doctor_client: Client) -> None:
    for path in ("studies", "series", "instances", f"studies/{world.a}/series", f"studies/{world.a}/instances"):
        response = doctor_client.get(f"{API}/{path}", {"PatientID": "NOBODY"})
        assert response.status_code == 200
        assert response["Content-Type"] == "application/dicom+json"
        assert response.content == b"[]"


# --- series -------------------------------------------------------------------------------


def test_series_of_a_study(world: World, doctor_client: Client) -> None:
    assert search(doctor_client, f"studies/{world.a}/series") == [series_a_ct(world), series_a_mr(world)]
    assert search(doctor_client, f"studies/{world.a}/series", Modality="MR") == [series_a_mr(world)]
    assert search(doctor_client, f"studies/{world.a}/series", **{"00080060": "CT"}) == [series_a_ct(world)]
    assert search(doctor_client, f"studies/{world.a}/series", SeriesInstanceUID=world.a_mr.series_uid) == [
        series_a_mr(world)
    ]
    assert search(doctor_client, f"studies/{world.a}/series", SeriesNumber="1") == [series_a_ct(world)]
    # Another study's series is not in this study.
    assert search(doctor_client, f"studies/{world.a}/series", SeriesInstanceUID=world.b_mr.series_uid) == []
    assert uids(search(doctor_client, f"studies/{world.b}/series"), "0020000E") == [world.b_mr.series_uid]


def test_series_across_studies(world: World, doctor_client: Client) -> None:
    every = [world.a_ct1.series_uid, world.a_mr.series_uid, world.b_mr.series_uid, world.c_ct.series_uid]
    assert uids(search(doctor_client, "series"), "0020000E") == every
    assert uids(search(doctor_client, "series", Modality="MR"), "0020000E") == [every[1], every[2]]
    assert uids(search(doctor_client, "series", Modality="CT,MR"), "0020000E") == every
    assert uids(search(doctor_client, "series", StudyInstanceUID=world.c), "0020000E") == [every[3]]
    assert uids(search(doctor_client, "series", PatientID=world.b_mr.study.patient_id), "0020000E") == [every[2]]
    assert uids(search(doctor_client, "series", PatientName="balogun*"), "0020000E") == every[:2]
    assert uids(search(doctor_client, "series", StudyDate="20240101-"), "0020000E") == every[:3]
    assert uids(search(doctor_client, "series", ModalitiesInStudy="MR"), "0020000E") == every[:3]
    assert uids(search(doctor_client, "series", limit="2", offset="1"), "0020000E") == every[1:3]
    assert search(doctor_client, "series", SeriesInstanceUID=world.a_ct1.series_uid) == [series_a_ct(world)]


def test_includefield_adds_study_attributes_to_series(world: World, doctor_client: Client) -> None:
    ct = series_a_ct(world)
    study = study_a(world)
    path = f"studies/{world.a}/series"
    [found] = search(doctor_client, path, Modality="CT", includefield="PatientName")
    assert found == {**ct, "00100010": study["00100010"]}
    [found] = search(doctor_client, path, Modality="CT", includefield=["00100020", "StudyDescription"])
    assert found == {**ct, "00100020": study["00100020"], "00081030": study["00081030"]}
    [found] = search(doctor_client, path, Modality="CT", includefield="ModalitiesInStudy")
    assert found == {**ct, "00080061": study["00080061"]}
    [found] = search(doctor_client, path, Modality="CT", includefield="all")
    everything = {tag: attribute for tag, attribute in study.items() if tag not in ("00201206", "00201208")}
    assert found == dict(sorted({**everything, **ct}.items()))
    assert list(found) == sorted(found)


# --- instances ----------------------------------------------------------------------------


def test_instances_of_a_series_and_of_a_study(world: World, doctor_client: Client) -> None:
    ct1 = instance_json(world.a_ct1, sop_class=CT_IMAGE, modality="CT", number=1, size=128)
    ct2 = instance_json(world.a_ct2, sop_class=CT_IMAGE, modality="CT", number=2, size=128)
    mr = instance_json(world.a_mr, sop_class=MR_IMAGE, modality="MR", number=1, size=64)
    assert search(doctor_client, f"studies/{world.a}/series/{world.a_ct1.series_uid}/instances") == [ct1, ct2]
    assert search(doctor_client, f"studies/{world.a}/instances") == [ct1, ct2, mr]
    assert search(doctor_client, f"studies/{world.a}/instances", SOPInstanceUID=world.a_ct2.image_uid) == [ct2]
    assert search(doctor_client, f"studies/{world.a}/instances", Modality="MR") == [mr]
    assert search(doctor_client, f"studies/{world.a}/instances", InstanceNumber="2") == [ct2]
    assert search(doctor_client, f"studies/{world.a}/instances", SOPClassUID=MR_IMAGE) == [mr]
    assert search(doctor_client, f"studies/{world.a}/instances", limit="1", offset="2") == [mr]


def test_instances_across_studies(world: World, doctor_client: Client) -> None:
    # In order of series number, then series, then instance number.
    every = [item.image_uid for item in (world.a_ct1, world.a_ct2, world.b_mr, world.c_ct, world.a_mr)]
    assert uids(search(doctor_client, "instances"), "00080018") == every
    both = f"{world.a_mr.image_uid},{world.c_ct.image_uid}"
    assert uids(search(doctor_client, "instances", SOPInstanceUID=both), "00080018") == [every[3], every[4]]
    assert uids(search(doctor_client, "instances", Modality="MR"), "00080018") == [every[2], every[4]]
    assert uids(search(doctor_client, "instances", PatientID=world.c_ct.study.patient_id), "00080018") == [every[3]]
    assert uids(search(doctor_client, "instances", StudyInstanceUID=world.b), "00080018") == [every[2]]
    assert uids(search(doctor_client, "instances", SeriesInstanceUID=world.a_ct1.series_uid), "00080018") == every[:2]
    # A study with CT and MR matches "CT,MR" once, and so does each of its instances.
    assert uids(search(doctor_client, "instances", ModalitiesInStudy="CT,MR"), "00080018") == every
    assert uids(search(doctor_client, "instances", ModalitiesInStudy="MR"), "00080018") == [*every[:3], every[4]]


def test_includefield_adds_attributes_to_instances(world: World, doctor_client: Client) -> None:
    path = f"studies/{world.a}/series/{world.a_mr.series_uid}/instances"
    plain = instance_json(world.a_mr, sop_class=MR_IMAGE, modality="MR", number=1, size=64)
    [found] = search(doctor_client, path, includefield="PhotometricInterpretation,00280100")
    assert found == {**plain, "00280004": value("CS", "MONOCHROME2"), "00280100": value("US", 16)}
    [found] = search(doctor_client, path, includefield="SeriesDescription")
    assert found == {**plain, "0008103E": value("LO", "Sagittal T1")}
    [everything] = search(doctor_client, path, includefield="all")
    assert {tag: everything[tag] for tag in plain} == plain
    # The study's (the EMR's) patient, the file's own name kept as an Original Attribute.
    study = RadiologyStudy.objects.get(study_uid=world.a)
    assert everything["00100010"] == person(study.patient_dicom_name)
    assert everything["00100020"] == value("LO", study.patient_id)
    [original] = everything["04000561"]["Value"]
    assert original["04000550"]["Value"][0]["00100010"] == person("CompressedSamples^MR1")
    assert everything["00280030"] == value("DS", 0.3125, 0.3125)
    assert "7FE00010" not in everything
    assert not [
        tag for tag, attribute in everything.items() if "BulkDataURI" in attribute or "InlineBinary" in attribute
    ]


# --- errors, scope of a study route, query counts ----------------------------------------


def test_searching_inside_what_is_not_there_is_404(world: World, doctor_client: Client) -> None:
    for path, body in (
        ("studies/1.2.3/series", error("No such study.", "study_not_found")),
        ("studies/1.2.3/instances", error("No such study.", "study_not_found")),
        (f"studies/{world.a}/series/1.2.3/instances", error("No such series.", "series_not_found")),
        (f"studies/{world.a}/series/{world.b_mr.series_uid}/instances", error("No such series.", "series_not_found")),
    ):
        response = doctor_client.get(f"{API}/{path}")
        assert response.status_code == 404
        assert json_of(response) == body


@pytest.mark.parametrize("accept", ["application/dicom+json", "application/json", "*/*", "application/*", ""])
def test_qido_accepts_dicom_json(world: World, doctor_client: Client, accept: str) -> None:
    response = doctor_client.get(f"{API}/studies", headers={"Accept": accept} if accept else {})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom+json"


@pytest.mark.parametrize("accept", ["application/dicom+xml", "text/html", "multipart/related; type=application/dicom"])
def test_qido_refuses_what_it_cannot_produce(world: World, doctor_client: Client, accept: str) -> None:
    response = doctor_client.get(f"{API}/studies", headers={"Accept": accept})
    assert response.status_code == 406
    assert json_of(response) == error(
        "None of the media types in Accept can be produced for this resource.", "not_acceptable"
    )


SEARCHES = [
    ("studies", "", 2),
    ("series", "", 1),
    ("instances", "", 1),
    ("studies/{study}/series", "", 2),
    ("studies/{study}/instances", "", 2),
    ("studies/{study}/series/{series}/instances", "", 2),
    ("series", "includefield=all", 2),
    ("studies/{study}/series", "includefield=all", 3),
    ("instances", "includefield=all", 1),
    ("studies", "ModalitiesInStudy=CT,MR", 2),
]


@pytest.mark.parametrize(("path", "query", "reads"), SEARCHES)
def test_every_search_takes_a_fixed_number_of_queries(
    put: Put,
    make_order: Any,
    doctor_client: Client,
    django_assert_num_queries: Any,
    path: str,
    query: str,
    reads: int,
) -> None:
    """One result, then many (more studies, series and instances): the same queries."""
    first = put("CT_small.dcm")
    url = f"{API}/{path.format(study=first.study_uid, series=first.series_uid)}?{query}"
    total, found, response = count_queries(doctor_client, url)
    assert (response.status_code, len(json_of(response)), found) == (200, 1, reads)
    for number in range(2, 5):
        put("CT_small.dcm", series_uid=first.series_uid, instance_number=number)
        put("MR_small.dcm", instance_number=number)
    for _study in range(3):
        order = make_order()
        other = put("CT_small.dcm", order=order)
        put("MR_small.dcm", order=order, series_uid=other.series_uid, instance_number=2)
    with django_assert_num_queries(total):
        _total, found, response = count_queries(doctor_client, url)
    assert response.status_code == 200
    assert len(json_of(response)) > 1
    assert found == reads


def test_series_and_instances_without_a_number_come_last(put: Put, doctor_client: Client) -> None:
    """The same order on SQLite (NULL first by default) and PostgreSQL (NULL last)."""
    unnumbered = put("MR_small.dcm", SeriesNumber=None)
    numbered = put("CT_small.dcm", SeriesNumber=7)
    photo = put(PHOTO)  # a JPEG without a declared series number
    study = unnumbered.study_uid
    series = [numbered.series_uid, unnumbered.series_uid, photo.series_uid]
    assert uids(search(doctor_client, f"studies/{study}/series"), "0020000E")[:1] == series[:1]
    assert set(uids(search(doctor_client, f"studies/{study}/series"), "0020000E")[1:]) == set(series[1:])
    instances = uids(search(doctor_client, f"studies/{study}/instances"), "00080018")
    assert instances[0] == numbered.image_uid
    metadata = json_of(doctor_client.get(f"{API}/studies/{study}/metadata"))
    assert [item["00080018"]["Value"][0] for item in metadata] == instances


@pytest.mark.parametrize("pattern", ["Ñúñez^José", "ñúñez^josé", "ÑÚÑEZ*", "*josé", "?úñez*"])
def test_patient_names_beyond_ascii_match_without_case(
    put: Put, make_order: Any, doctor_client: Client, pattern: str
) -> None:
    stored = put("CT_small.dcm", order=make_order(first_name="José", last_name="Ñúñez"))
    put("CT_small.dcm", order=make_order(first_name="Jose", last_name="Nunez"))
    assert uids(search(doctor_client, "studies", PatientName=pattern)) == [stored.study_uid]
