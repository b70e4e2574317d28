"""RADIOLOGY_DICOM_NODES: the node list's format, its refusals at start, and who it lets in."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.radiology.access.principals import DicomNodeRole
from apps.radiology.dimse.nodes import DicomNode, NodeList, demo_local_role, parse_nodes


def test_entries_give_ae_title_address_role_and_move_port() -> None:
    nodes = parse_nodes(" CT_SCANNER@192.168.1.20:modality , RADIANT@[fd00::5]:workstation:11113,")
    assert nodes == (
        DicomNode("CT_SCANNER", "192.168.1.20", DicomNodeRole.MODALITY),
        DicomNode("RADIANT", "fd00::5", DicomNodeRole.WORKSTATION, 11113),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("CT_SCANNER", "'CT_SCANNER' is not AE_TITLE@ADDRESS:ROLE[:MOVE_PORT]"),
        ("CT@ct.example.org:modality", "'ct.example.org' is not an IP address"),
        ("CT@10.0.0.1:printer", "the role must be modality or workstation"),
        ("CT@10.0.0.1:modality:104", "only a workstation has a C-MOVE port"),
        ("WS@10.0.0.1:workstation:70000", "70000 is not a TCP port"),
        ("A_TITLE_LONGER_THAN_16@10.0.0.1:modality", "an AE title is 1 to 16 characters"),
        ("CT@10.0.0.1:modality,CT@10.0.0.1:modality", "lists an AE title and address already listed"),
    ],
)
def test_a_malformed_list_is_refused_naming_the_setting_and_entry(value: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^RADIOLOGY_DICOM_NODES: ") as refused:
        parse_nodes(value)
    assert message in str(refused.value)


def test_only_the_listed_pair_of_ae_title_and_address_is_let_in() -> None:
    nodes = NodeList(parse_nodes("CT@10.0.0.1:modality"))
    assert nodes.node_for("CT", "10.0.0.1") == DicomNode("CT", "10.0.0.1", DicomNodeRole.MODALITY)
    assert nodes.node_for("CT  ", "::ffff:10.0.0.1") is not None  # padded title, IPv4-mapped address
    assert nodes.node_for("CT", "10.0.0.2") is None
    assert nodes.node_for("MR", "10.0.0.1") is None
    assert nodes.node_for("CT", "127.0.0.1") is None


def test_the_demo_switch_admits_loopback_callers_with_its_role_only() -> None:
    nodes = NodeList(parse_nodes("WS@127.0.0.1:workstation"), local_role=demo_local_role("modality"))
    assert nodes.node_for("ANY", "127.0.0.1") == DicomNode("ANY", "127.0.0.1", DicomNodeRole.MODALITY)
    assert nodes.node_for("ANY", "::1") == DicomNode("ANY", "::1", DicomNodeRole.MODALITY)
    assert nodes.node_for("WS", "127.0.0.1").role == DicomNodeRole.WORKSTATION  # a listed node keeps its role
    assert nodes.node_for("ANY", "10.0.0.1") is None
    with pytest.raises(ImproperlyConfigured, match="RADIOLOGY_DICOM_DEMO_LOCAL_ROLE must be empty"):
        demo_local_role("admin")
