"""A stored JPEG photo as a Secondary Capture instance: conformant, honestly labelled, decodable.

Every photo is checked with dicom3tools' dciodvfy (no error; the warnings left are listed
exactly, so a new one shows) and decoded by dcmtk (dcmdump, dcmj2pnm), as WADO-RS retrieves it
and as jpeg_as_part10 writes it. Its transfer syntax follows its JPEG process (the frame
header, SOFn): baseline and extended sequential leave as the JPEG itself; a progressive JPEG
(which no decoder of OHIF or pydicom takes under its retired transfer syntax) leaves as its
decoded pixels in Explicit VR Little Endian. QIDO, the file, the frames and the render agree.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.test import Client
from PIL import Image, TiffImagePlugin, TiffTags

from apps.radiology import storage
from apps.radiology.dicomweb import pixels
from apps.radiology.dicomweb.accept import parse_accept
from apps.radiology.dicomweb.dicom_json import jpeg_as_part10, photo_is_decoded
from apps.radiology.errors import InvalidJpeg
from apps.radiology.imagefiles.dicom import CODESTREAM_HEAD_BYTES, parse_jpeg
from apps.radiology.models import RadiologyImage
from apps.radiology.operations.demo import jpeg_with_exif
from apps.radiology.pacs_lite_service import DeclaredImage

from .conftest import PHOTO, Put, Stored
from .helpers import body_of, dcmdump, json_of, multipart_of

pytestmark = pytest.mark.skipif(
    not (shutil.which("dciodvfy") and shutil.which("dcmj2pnm")),
    reason="needs dicom3tools and dcmtk (scripts/system_packages.sh)",
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
STORED_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OHIF_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
# What dciodvfy still says of every photo's Secondary Capture (warnings; no error): the study's
# time is not known (the order's study has a date only).
# Laterality is empty (a photo's is unknown; absent would be an error of this Type 2C element).
REMAINING_WARNINGS = [
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Time",
    "Warning - is only permitted to be empty when actually unknown; should be absent (not empty) "
    "if an unpaired body part, and have a value if a paired body part - attribute <Laterality>",
]


def gradient(mode: str) -> Image.Image:
    return Image.linear_gradient("L").resize((64, 48)).convert(mode)


def jpeg_bytes(mode: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    gradient(mode).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Camera"  # Make
    exif[0x0132] = "2026:01:15 10:00:00"  # DateTime
    return exif


def extended_sequential(mode: str) -> bytes:
    """A baseline JPEG whose frame header says SOF1: extended sequential is a superset of
    baseline, so the same scan is a valid 8-bit process 2 image."""
    baseline = jpeg_bytes(mode)
    at = baseline.index(b"\xff\xc0")
    return baseline[: at + 1] + b"\xc1" + baseline[at + 2 :]


@dataclass(frozen=True)
class Kind:
    """One kind of photo: its bytes, the JPEG process ingest records, how it is presented."""

    content: bytes
    sof: str
    transfer_syntax: str
    photometric: str

    @property
    def decoded(self) -> bool:
        return self.transfer_syntax == EXPLICIT_LITTLE


KINDS = {
    "baseline colour": Kind(jpeg_bytes("RGB"), "SOF0", JPEG_BASELINE, "YBR_FULL_422"),
    "baseline grey": Kind(jpeg_bytes("L"), "SOF0", JPEG_BASELINE, "MONOCHROME2"),
    "progressive colour": Kind(jpeg_bytes("RGB", progressive=True), "SOF2", EXPLICIT_LITTLE, "RGB"),
    "progressive grey": Kind(jpeg_bytes("L", progressive=True), "SOF2", EXPLICIT_LITTLE, "MONOCHROME2"),
    "EXIF colour": Kind(jpeg_with_exif(), "SOF0", JPEG_BASELINE, "YBR_FULL_422"),
    "EXIF grey": Kind(jpeg_bytes("L", exif=camera_exif()), "SOF0", JPEG_BASELINE, "MONOCHROME2"),
    "extended colour": Kind(extended_sequential("RGB"), "SOF1", JPEG_EXTENDED, "YBR_FULL_422"),
}


def pillow_pixels(content: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(content)) as photo:
        return np.asarray(photo.convert("L" if photo.mode == "L" else "RGB"))


def put_photo(put: Put, kind: Kind) -> Stored:
    return put(PHOTO, content=kind.content, declared=DeclaredImage(series_number=1, instance_number=1, modality="OT"))


def retrieve_stored_syntax(client: Client, stored: Stored) -> tuple[str, bytes]:
    response = client.get(stored.url(), headers={"Accept": STORED_SYNTAX})
    assert response.status_code == 200, response.content
    part_type, parts = multipart_of(response)
    assert part_type == "application/dicom"
    [part] = parts
    return part.content_type, part.content


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's findings (Error and Warning lines) about a file."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False, timeout=60)  # noqa: S603, S607
    lines = (line.strip() for line in (run.stdout + run.stderr).splitlines())
    return [line for line in lines if line.startswith(("Error", "Warning"))]


def dcmj2pnm(path: Path, tmp_path: Path) -> np.ndarray:
    """dcmtk's decode of the file's frame (as PNM), as an array."""
    out = tmp_path / f"{path.stem}.pnm"
    run = subprocess.run(["dcmj2pnm", str(path), str(out)], capture_output=True, text=True, check=False, timeout=60)  # noqa: S603, S607
    assert run.returncode == 0, run.stderr
    with Image.open(out) as decoded:
        return np.asarray(decoded)


def check_file(content: bytes, stored: Stored, kind: Kind, tmp_path: Path, name: str) -> None:
    """The Part 10 file is conformant (dciodvfy), dcmtk reads and decodes it, and it says what it holds."""
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(content)
    assert dciodvfy(path) == REMAINING_WARNINGS
    dump = dcmdump(path)
    assert dump.returncode == 0, dump.stderr
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == kind.transfer_syntax
    assert (dataset.SOPClassUID, dataset.SOPInstanceUID) == (SC_CLASS, stored.image_uid)
    assert dataset.PhotometricInterpretation == kind.photometric
    assert (dataset.StudyID, dataset.AccessionNumber) == (stored.study.accession_number,) * 2
    assert (dataset.Laterality, dataset.PatientOrientation) == ("", "")
    assert "NumberOfFrames" not in dataset
    expected = pillow_pixels(kind.content)
    if kind.decoded:
        assert dataset.PixelData == expected.tobytes() + (b"\x00" if expected.nbytes % 2 else b"")
    else:
        fragments = list(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=1))
        assert fragments == [kind.content + (b"\x00" if len(kind.content) % 2 else b"")]
    # dcmtk's IJG decoder and Pillow's libjpeg-turbo may round a sample differently.
    by_dcmtk = dcmj2pnm(path, tmp_path).astype(int)
    assert by_dcmtk.shape == expected.shape
    assert np.abs(by_dcmtk - expected.astype(int)).mean() < 1


@pytest.mark.parametrize("name", list(KINDS))
def test_the_secondary_capture_of_a_photo_is_conformant_and_dcmtk_decodes_it(
    put: Put, doctor_client: Client, tmp_path: Path, name: str
) -> None:
    kind = KINDS[name]
    stored = put_photo(put, kind)
    # Stored byte-exact; ingest recorded the JPEG process and the transfer syntax it implies.
    assert b"".join(storage.iter_object_chunks(stored.image.file_key)) == kind.content
    assert stored.image.image_metadata["sof"] == kind.sof
    assert stored.image.transfer_syntax_uid == kind.transfer_syntax
    content_type, content = retrieve_stored_syntax(doctor_client, stored)
    assert content_type == f"application/dicom; transfer-syntax={kind.transfer_syntax}"
    check_file(content, stored, kind, tmp_path, "retrieved")
    # The same file as jpeg_as_part10 writes it (what every retrieval of a photo sends).
    image = RadiologyImage.objects.select_related("series__study").get(pk=stored.image.pk)
    length, chunks = jpeg_as_part10(image, study=image.series.study, series=image.series)
    written = b"".join(chunks)
    assert (len(written), written) == (length, content)
    check_file(written, stored, kind, tmp_path, "written")


@pytest.mark.parametrize("name", list(KINDS))
def test_qido_metadata_frames_and_render_agree_on_what_a_photo_is(put: Put, doctor_client: Client, name: str) -> None:
    kind = KINDS[name]
    stored = put_photo(put, kind)
    [entry] = json_of(doctor_client.get(stored.series_url("/instances")))
    assert entry["00083002"] == {"vr": "UI", "Value": [kind.transfer_syntax]}
    [metadata] = json_of(doctor_client.get(stored.url("/metadata")))
    assert metadata["00280004"] == {"vr": "CS", "Value": [kind.photometric]}
    samples = 1 if kind.photometric == "MONOCHROME2" else 3
    assert metadata["00280002"] == {"vr": "US", "Value": [samples]}
    # What OHIF asks for: any transfer syntax, the server's choice named in the part.
    response = doctor_client.get(stored.url("/frames/1"), headers={"Accept": OHIF_FRAMES})
    assert response.status_code == 200, response.content
    _type, [part] = multipart_of(response)
    expected = pillow_pixels(kind.content)
    if kind.decoded:
        assert part.content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}"
        assert part.content == expected.tobytes()
        # It is not handed out as a JPEG under a transfer syntax it is not in.
        jpeg_only = doctor_client.get(
            stored.url("/frames/1"), headers={"Accept": 'multipart/related; type="image/jpeg"'}
        )
        assert jpeg_only.status_code == 406
    else:
        assert part.content_type == f"image/jpeg; transfer-syntax={kind.transfer_syntax}"
        assert part.content == kind.content
    # Its pixel data as bulk data (the metadata's BulkDataURI) is the frame, said the same way.
    assert metadata["7FE00010"] == {"vr": "OB", "BulkDataURI": stored.absolute("/bulk/7FE00010")}
    _type, [bulk] = multipart_of(doctor_client.get(stored.url("/bulk/7FE00010")))
    assert (bulk.content_type, bulk.content) == (part.content_type, part.content)
    # The render shows the same pixels (a photo is drawn as decoded, no window).
    rendered = doctor_client.get(stored.url("/rendered"), headers={"Accept": "image/png"})
    assert rendered.status_code == 200
    with Image.open(io.BytesIO(body_of(rendered))) as png:
        assert np.array_equal(np.asarray(png.convert("L" if samples == 1 else "RGB")), expected)


def test_a_photo_stored_before_its_jpeg_process_was_recorded_stays_jpeg_baseline(put: Put) -> None:
    """Rows from before: no "sof" in the header and JPEG Baseline on the row, even for a
    progressive JPEG. Stored images never change, so such a row is made in memory; it is
    presented as before (a data migration may relabel the progressive ones)."""
    kind = KINDS["progressive colour"]
    image = RadiologyImage.objects.select_related("series__study").get(pk=put_photo(put, kind).image.pk)
    image.transfer_syntax_uid = JPEG_BASELINE
    image.image_metadata = {key: value for key, value in image.image_metadata.items() if key != "sof"}
    assert not photo_is_decoded(image)
    _length, chunks = jpeg_as_part10(image, study=image.series.study, series=image.series)
    dataset = pydicom.dcmread(io.BytesIO(b"".join(chunks)))
    assert (dataset.file_meta.TransferSyntaxUID, dataset.PhotometricInterpretation) == (JPEG_BASELINE, "YBR_FULL_422")
    fragments = list(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=1))
    assert fragments == [kind.content + (b"\x00" if len(kind.content) % 2 else b"")]
    plan = pixels.plan_frames(image, parse_accept(OHIF_FRAMES))
    assert (plan.passthrough, plan.part_content_type) == (True, f"image/jpeg; transfer-syntax={JPEG_BASELINE}")


def test_an_exif_float_that_is_not_a_number_is_left_out_and_the_photo_stored(put: Put) -> None:
    """EXIF's FLOAT and DOUBLE types can hold NaN, which JSON cannot: the photo is stored all the same."""
    directory = TiffImagePlugin.ImageFileDirectory_v2()
    directory[0x010F] = "NaN camera"  # Make
    directory[0xC000], directory.tagtype[0xC000] = float("nan"), TiffTags.DOUBLE  # a private tag
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + directory.tobytes(8)
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(buffer, format="JPEG", exif=exif)

    stored = put(PHOTO, content=buffer.getvalue())

    # Left out, as any EXIF value with nothing to say is.
    exif = RadiologyImage.objects.get(pk=stored.image.pk).image_metadata["exif"]
    assert (exif["Make"], "0xC000" in exif) == ("NaN camera", False)


def test_a_12_bit_jpeg_is_refused_at_ingest(put: Put) -> None:
    """Extended sequential at 12 bits (SOF1, precision 12): Pillow does not read it, so no photo
    of it is stored (a 12-bit image belongs in a DICOM file)."""
    extended = extended_sequential("L")
    at = extended.index(b"\xff\xc1")
    twelve_bit = extended[: at + 4] + b"\x0c" + extended[at + 5 :]
    with pytest.raises(InvalidJpeg):
        put(PHOTO, content=twelve_bit)


@pytest.mark.parametrize("name", list(KINDS))
def test_ingest_reads_the_jpeg_process_from_the_frame_header(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]
    path = tmp_path / "photo.jpg"
    path.write_bytes(kind.content)
    parsed = parse_jpeg(path)
    assert (parsed.metadata["sof"], parsed.transfer_syntax_uid) == (kind.sof, kind.transfer_syntax)
    assert parsed.metadata["progressive"] is (kind.sof == "SOF2")


def test_a_frame_header_past_the_scanned_head_is_presented_decoded(tmp_path: Path) -> None:
    """The frame header is looked for in the first CODESTREAM_HEAD_BYTES only (application data
    comes before it); a photo whose process is thus unknown is presented as its decoded pixels,
    which is true whatever the process."""
    baseline = jpeg_bytes("RGB")
    filler = b"\xff\xef" + (65535).to_bytes(2, "big") + bytes(65533)  # an APP15 segment of 64 KiB
    padded = baseline[:2] + filler * (CODESTREAM_HEAD_BYTES // len(filler) + 1) + baseline[2:]
    path = tmp_path / "photo.jpg"
    path.write_bytes(padded)
    parsed = parse_jpeg(path)
    assert (parsed.metadata["sof"], parsed.transfer_syntax_uid) == ("", EXPLICIT_LITTLE)
