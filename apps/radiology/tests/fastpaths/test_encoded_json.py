"""EncodedJSON: a header's JSON encoded once, written as is to image_metadata and metadata_text."""

from __future__ import annotations

import json
import pickle
from io import BytesIO
from typing import Any

import pydicom
import pytest

from apps.radiology.dicomweb.dicom_json import instance_metadata
from apps.radiology.fastpaths.encoded_json import EncodedJSON, EncodedJSONEncoder, encode
from apps.radiology.imagefiles.stored_header import metadata_text
from apps.radiology.models import RadiologyImage
from apps.radiology.tests.factories import dataset_bytes, edited_sample

HEADER = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}, "00100010": {"vr": "PN"}}


def test_its_text_is_the_compact_json_of_the_dict() -> None:
    encoded = EncodedJSON(HEADER)
    assert encoded == HEADER
    assert encoded.text == '{"00080016":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]},"00100010":{"vr":"PN"}}'
    assert json.loads(encoded.text) == HEADER


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"vr": "PN", "Value": [{"Alphabetic": "Adéolá^Ṣadé"}]}, '{"vr":"PN","Value":[{"Alphabetic":"Adéolá^Ṣadé"}]}'),
        ({"vr": "FD", "Value": [1e-05, 1e16, -0.0, None]}, '{"vr":"FD","Value":[0.00001,1e+16,-0.0,null]}'),
        # Beyond orjson (a 65-bit integer from a header pydicom read, a float subclass): json.dumps.
        ({"vr": "IS", "Value": [2**64]}, '{"vr":"IS","Value":[18446744073709551616]}'),
        ({"vr": "DS", "Value": [pydicom.valuerep.DSfloat("2.5")]}, '{"vr":"DS","Value":[2.5]}'),
    ],
    ids=["non-ASCII as UTF-8", "floats", "beyond 64 bits", "float subclass"],
)
def test_encode_writes_compact_json_of_the_same_value(value: dict[str, Any], text: str) -> None:
    assert encode(value) == text
    assert json.loads(text) == value


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.__setitem__("x", 1),
        lambda d: d.__delitem__("00100010"),
        lambda d: d.update(x=1),
        lambda d: d.pop("00100010"),
        lambda d: d.popitem(),
        lambda d: d.setdefault("x", 1),
        lambda d: d.clear(),
        lambda d: d.__ior__({"x": 1}),
    ],
)
def test_it_cannot_change_so_its_text_cannot_go_stale(change: Any) -> None:
    encoded = EncodedJSON(HEADER)
    with pytest.raises(TypeError, match="read-only"):
        change(encoded)
    assert encoded == HEADER
    assert encoded.text == encode(HEADER)


def _with_text(value: dict[str, Any], text: str) -> EncodedJSON:
    """An EncodedJSON whose text differs from its dict: shows where the text, not the dict, is used."""
    encoded = EncodedJSON(value)
    encoded.text = text
    return encoded


def test_a_pickled_copy_keeps_the_dict_and_the_text_it_came_with() -> None:
    encoded = EncodedJSON(HEADER, cut_before=["00090010"])
    encoded.text = '{"made":"elsewhere"}'
    copy = pickle.loads(pickle.dumps(encoded))  # noqa: S301 (our own bytes)
    assert type(copy) is EncodedJSON
    assert copy == HEADER
    assert (copy.text, copy.pieces, copy.cuts) == ('{"made":"elsewhere"}', encoded.pieces, ("00090010",))
    with pytest.raises(TypeError, match="read-only"):
        copy["x"] = 1


def test_the_field_encoder_writes_the_text_as_is_and_encodes_anything_else() -> None:
    assert json.dumps(_with_text(HEADER, '{"as":"is"}'), cls=EncodedJSONEncoder) == '{"as":"is"}'
    assert json.dumps({"a": [1, 2]}, cls=EncodedJSONEncoder) == '{"a": [1, 2]}'
    assert json.dumps([EncodedJSON(HEADER)], cls=EncodedJSONEncoder) == json.dumps([HEADER])


@pytest.mark.django_db
def test_the_image_metadata_column_gets_the_text_made_at_parse(
    order: Any, ingest_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class ParsedWithMarkedText(EncodedJSON):
        """The header as parse makes it; the header ingest fills in with the patient identity is marked."""

        def filled(self, members: dict[str, Any]) -> EncodedJSON:
            served = super().filled(members)
            served.text = '{"written":"as is"}'
            return served

    monkeypatch.setattr("apps.radiology.imagefiles.stored_header.EncodedJSON", ParsedWithMarkedText)
    image = ingest_file(order, "CT_small.dcm").image
    assert RadiologyImage.objects.values_list("image_metadata", flat=True).get(pk=image.pk) == {"written": "as is"}


def _reloaded(image: RadiologyImage) -> RadiologyImage:
    return RadiologyImage.objects.only("pk", "mime_type", "image_metadata", "pixel_data", "bulk_data").get(pk=image.pk)


@pytest.mark.django_db
def test_ingest_stores_the_header_and_the_metadata_text_the_general_path_writes(order: Any, ingest_file: Any) -> None:
    image = ingest_file(order, "CT_small.dcm").image
    assert isinstance(image.image_metadata, EncodedJSON)
    stored = RadiologyImage.objects.values_list("image_metadata", "metadata_text").get(pk=image.pk)
    reloaded = _reloaded(image)
    assert type(reloaded.image_metadata) is dict
    assert stored[0] == dict(image.image_metadata)
    assert stored[1] == encode(instance_metadata(reloaded, study=None, series=None, instance_url=""))
    assert stored[1] == metadata_text(reloaded)
    assert stored[1].endswith(',"7FE00010":{"vr":"OW","BulkDataURI":"/bulk/7FE00010"}}')
    # CT_small has a bulk private element among its other elements: the text was cut there.
    assert image.image_metadata.cuts == ("00431029", "7FE00010")


@pytest.mark.django_db
def test_bulk_elements_anywhere_in_the_header_go_in_tag_order(order: Any, ingest_file: Any) -> None:
    header = pydicom.dcmread(BytesIO(edited_sample("CT_small.dcm")))
    header.add_new(0x00191010, "OB", b"\x01" * 4000)  # before every other bulk element
    image = ingest_file(order, dataset_bytes(header)).image
    assert set(image.bulk_data) == {"00191010", "00431029"}
    text = RadiologyImage.objects.values_list("metadata_text", flat=True).get(pk=image.pk)
    assert text == encode(instance_metadata(_reloaded(image), study=None, series=None, instance_url=""))
    tags = list(json.loads(text))
    assert tags == sorted(tags)
    assert json.loads(text)["00191010"] == {"vr": "OB", "BulkDataURI": "/bulk/00191010"}


def test_spliced_puts_members_between_the_pieces_it_was_cut_in() -> None:
    header = {"0008": 1, "0010": [2], "0030": {"a": "b"}}
    encoded = EncodedJSON(header, cut_before=["0040", "0020", "0001"])
    assert encoded.text == encode(header)
    assert encoded.pieces == ("", '"0008":1,"0010":[2]', '"0030":{"a":"b"}', "")
    spliced = encoded.spliced({"0020": '"x"', "0001": "[]", "0040": "null"})
    assert spliced == encode(dict(sorted({**header, "0020": "x", "0001": [], "0040": None}.items())))
    assert EncodedJSON({}, cut_before=["0001"]).spliced({"0001": "1"}) == '{"0001":1}'


@pytest.mark.parametrize(
    ("header", "cuts", "members"),
    [
        ({"0010": 1, "0008": 2}, ["0020"], {"0020": "3"}),  # its own keys out of order
        ({"0008": 1, "0020": 2}, ["0020"], {"0020": "3"}),  # a cut at a key it has
        ({"0008": 1}, ["0020"], {"0030": "3"}),  # other members than its cuts
        ({"0008": 1}, ["0020"], {}),
        ({"0008": 1}, [], {"0020": "3"}),
    ],
)
def test_spliced_refuses_what_it_cannot_place_in_order(
    header: dict[str, Any], cuts: list[str], members: dict[str, str]
) -> None:
    encoded = EncodedJSON(header, cut_before=cuts)
    assert encoded.text == encode(header)
    assert encoded.spliced(members) is None


def test_held_members_are_taken_out_and_filled_in_their_place_with_only_the_members_encoded() -> None:
    header = {"0001": 1, "0010": {"vr": "PN"}, "0020": "b", "0030": 3, "0040": "d"}
    encoded = EncodedJSON(header, cut_before=["0035"], hold=["0010", "0030", "0099"])
    assert dict(encoded) == {"0001": 1, "0020": "b", "0040": "d"}
    assert encoded.held == {"0010": {"vr": "PN"}, "0030": 3}

    filled = encoded.filled({"0010": "x", "0030": [1], "0099": None})

    expected = {"0001": 1, "0010": "x", "0020": "b", "0030": [1], "0040": "d", "0099": None}
    assert dict(filled) == expected
    assert list(filled) == sorted(expected)
    assert filled.text == encode(expected)
    assert filled.cuts == ("0035",)  # still cut where a bulk member goes
    assert filled.spliced({"0035": '"bulk"'}) == encode(dict(sorted({**expected, "0035": "bulk"}.items())))


def test_filling_a_member_it_was_not_cut_before_encodes_the_whole_object() -> None:
    encoded = EncodedJSON({"0001": 1, "0040": 4}, cut_before=["0035"], hold=["0010"])
    filled = encoded.filled({"0002": 2})
    assert filled.text == encode({"0001": 1, "0002": 2, "0040": 4})
    assert filled.cuts == ("0010", "0035")


def test_held_members_survive_pickling_for_the_parse_helper() -> None:
    import pickle

    encoded = EncodedJSON({"0001": 1, "0010": 2}, hold=["0010"])
    copy = pickle.loads(pickle.dumps(encoded))  # noqa: S301 (our own object)
    assert copy.held == {"0010": 2}
    assert copy.filled({"0010": 3}).text == '{"0001":1,"0010":3}'
