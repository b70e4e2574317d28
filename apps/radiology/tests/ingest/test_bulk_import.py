"""`manage.py import_radiology`: a folder, a zip, or a CD export with DICOMDIR, through the one ingest path.

Each test checks the command's exact output lines (the figures of time and speed by
pattern), the CommandError when a file failed, the rows created, and that the store holds
exactly the stored images' files, byte for byte the files of the source.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.core.management import CommandError, call_command
from pydicom.fileset import FileSet

from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyImage, RadiologyOrder, RadiologyStudy, UnmatchedImage
from apps.radiology.operations.demo import relabelled_dicom
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import read_stored, row_counts, sha256, stored_keys

TRUNCATED = "truncated_file: The file ends before its content does."


@dataclass(frozen=True)
class CommandRun:
    stdout: str
    stderr: str
    error: str | None

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run_import(*args: Any, progress: bool = False) -> CommandRun:
    out, err = io.StringIO(), io.StringIO()
    options = [] if progress else ["--no-progress"]
    try:
        call_command("import_radiology", *[str(arg) for arg in args], *options, stdout=out, stderr=err)
    except CommandError as error:
        return CommandRun(out.getvalue(), err.getvalue(), str(error))
    return CommandRun(out.getvalue(), err.getvalue(), None)


def summary_pattern(*, stored: int, skipped: int, ignored: int, failed: int, megabytes: float) -> str:
    """The first output line; elapsed time and speeds vary, so they are matched as numbers."""
    return (
        rf"Stored {stored}, held 0 unmatched, skipped {skipped} already stored, ignored {ignored} non-DICOM, "
        rf"failed {failed}; "
        rf"{re.escape(f'{megabytes:.1f}')} MB in \d+\.\d s \(\d+\.\d files/s, \d+\.\d MB/s\)"
    )


def study_files(order: RadiologyOrder | None = None, *, accession: str = "", patient_id: str = "") -> dict[str, bytes]:
    """Four files of one study in two series (CT x3, MR x1), relabelled as a modality would."""
    study_uid, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    patient = order.visit.patient if order is not None else None
    common = {
        "study_uid": study_uid,
        "accession_number": accession,
        "patient_id": patient_id or (patient.hospital_number if patient else ""),
    }
    files = {
        f"ct_{number}.dcm": relabelled_dicom("CT_small.dcm", series_uid=ct_series, instance_number=number, **common)
        for number in (1, 2, 3)
    }
    files["mr/mr_1.dcm"] = relabelled_dicom("MR_small.dcm", series_uid=mr_series, instance_number=1, **common)
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def assert_store_holds(files: dict[str, bytes]) -> None:
    """Exactly one image per file, its bytes in the store, and nothing else in the store."""
    images = list(RadiologyImage.objects.all())
    assert len(images) == len(files)
    assert sorted(read_stored(image.file_key) for image in images) == sorted(files.values())
    assert sorted(image.file_key for image in images) == stored_keys()


# --- A folder -----------------------------------------------------------------------------


def test_folder_import_stores_the_dicom_ignores_the_rest_and_reports_the_broken_file(
    order: RadiologyOrder, radiology_store: str, tmp_path: Path
) -> None:
    good = study_files(order)
    folder = write_folder(
        tmp_path / "export",
        {
            **good,
            "README.txt": b"Exported by the clinic's CR reader.\n",
            "broken.dcm": good["ct_1.dcm"][:20000],
        },
    )

    run = run_import(folder, "--order", order.pk)

    megabytes = sum(len(content) for content in good.values()) / 1e6
    assert run.error == "1 file(s) failed to import"
    assert len(run.lines) == 2
    assert re.fullmatch(summary_pattern(stored=4, skipped=0, ignored=1, failed=1, megabytes=megabytes), run.lines[0])
    assert run.lines[1] == f"FAILED broken.dcm: {TRUNCATED}"
    assert run.stderr == ""
    study = RadiologyStudy.objects.get()
    assert study.radiology_order == order
    assert row_counts() == (1, 2, 4)
    assert set(RadiologyImage.objects.values_list("filename", flat=True)) == {
        "ct_1.dcm",
        "ct_2.dcm",
        "ct_3.dcm",
        "mr_1.dcm",
    }
    assert set(RadiologyImage.objects.values_list("mime_type", flat=True)) == {DICOM_MIME_TYPE}
    assert set(RadiologyImage.objects.values_list("uploaded_by", flat=True)) == {None}
    assert_store_holds(good)


def test_reimport_skips_everything_already_stored(order: RadiologyOrder, radiology_store: str, tmp_path: Path) -> None:
    good = study_files(order)
    folder = write_folder(tmp_path / "export", {**good, "notes.txt": b"x", "broken.dcm": good["ct_2.dcm"][:5000]})
    assert run_import(folder, "--order", order.pk).error == "1 file(s) failed to import"
    keys_before = stored_keys()

    again = run_import(folder, "--order", order.pk)

    megabytes = sum(len(content) for content in good.values()) / 1e6
    assert re.fullmatch(summary_pattern(stored=0, skipped=4, ignored=1, failed=1, megabytes=megabytes), again.lines[0])
    assert again.lines[1:] == [f"FAILED broken.dcm: {TRUNCATED}"]
    assert again.error == "1 file(s) failed to import"
    assert row_counts() == (1, 2, 4)
    assert stored_keys() == keys_before
    assert_store_holds(good)


def test_files_of_another_study_than_the_orders_fail_one_by_one(
    order: RadiologyOrder, tmp_path: Path, radiology_store: str
) -> None:
    first = study_files(order)
    other = relabelled_dicom("MR_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), instance_number=1)
    folder = write_folder(tmp_path / "export", {**first, "zz_other_study.dcm": other})

    run = run_import(folder, "--order", order.pk)

    assert run.lines[1:] == [
        "FAILED zz_other_study.dcm: study_mismatch: The image belongs to another study than the one attached to "
        "this order."
    ]
    assert run.error == "1 file(s) failed to import"
    assert_store_holds(first)


def test_uploader_is_recorded_with_user(order: RadiologyOrder, radtech: Any, tmp_path: Path) -> None:
    files = study_files(order)
    folder = write_folder(tmp_path / "export", files)

    run = run_import(folder, "--order", order.pk, "--user", radtech.username)

    assert run.error is None
    assert re.fullmatch(
        summary_pattern(stored=4, skipped=0, ignored=0, failed=0, megabytes=sum(map(len, files.values())) / 1e6),
        run.stdout.rstrip("\n"),
    )
    assert set(RadiologyImage.objects.values_list("uploaded_by", flat=True)) == {radtech.pk}


def test_a_single_file_can_be_imported(order: RadiologyOrder, tmp_path: Path) -> None:
    files = study_files(order)
    path = write_folder(tmp_path, {"ct_1.dcm": files["ct_1.dcm"]}) / "ct_1.dcm"

    run = run_import(path, "--order", order.pk)

    assert run.error is None
    assert run.lines[0].startswith(
        "Stored 1, held 0 unmatched, skipped 0 already stored, ignored 0 non-DICOM, failed 0;"
    )
    assert_store_holds({"ct_1.dcm": files["ct_1.dcm"]})


def test_progress_bar_goes_to_stderr_when_asked(order: RadiologyOrder, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "export", {**study_files(order), "junk.bin": b"\x00" * 10})

    run = run_import(folder, "--order", order.pk, progress=True)

    assert run.error is None
    assert "5/5" in run.stderr
    assert "file" in run.stderr
    assert run.lines[0].startswith(
        "Stored 4, held 0 unmatched, skipped 0 already stored, ignored 1 non-DICOM, failed 0;"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--order", "999999"], "No radiology order 999999"),
        (["--order", "{order}", "--user", "nobody-here"], "No user nobody-here"),
    ],
)
def test_unknown_order_or_user_is_a_command_error(
    order: RadiologyOrder, tmp_path: Path, args: list[str], message: str
) -> None:
    folder = write_folder(tmp_path / "export", study_files(order))

    run = run_import(folder, *[arg.format(order=order.pk) for arg in args])

    assert (run.error, run.stdout) == (message, "")
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


def test_missing_path_is_a_command_error(order: RadiologyOrder, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-export"

    run = run_import(missing, "--order", order.pk)

    assert (run.error, run.stdout) == (f"{missing} does not exist", "")
    assert row_counts() == (0, 0, 0)


def test_order_and_by_accession_are_exclusive_and_one_is_required(order: RadiologyOrder, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="one of the arguments --order --by-accession is required"):
        call_command("import_radiology", str(tmp_path), "--no-progress")
    with pytest.raises(CommandError, match="argument --by-accession: not allowed with argument --order"):
        call_command("import_radiology", str(tmp_path), "--order", str(order.pk), "--by-accession")
    assert row_counts() == (0, 0, 0)


# --- A zip --------------------------------------------------------------------------------


def test_zip_import_streams_members_like_a_folder(order: RadiologyOrder, radiology_store: str, tmp_path: Path) -> None:
    good = study_files(order)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("export/", b"")
        for name, content in good.items():
            zipped.writestr(f"export/{name}", content)
        zipped.writestr("export/README.txt", b"Exported by the clinic's CR reader.\n")
        zipped.writestr("export/broken.dcm", good["ct_1.dcm"][:20000])
        zipped.writestr("__MACOSX/export/._ct_1.dcm", b"\x00\x05\x16\x07 resource fork")
        zipped.writestr("export/DICOMDIR", b"not read from a zip")

    run = run_import(archive, "--order", order.pk)

    megabytes = sum(len(content) for content in good.values()) / 1e6
    assert run.error == "1 file(s) failed to import"
    assert re.fullmatch(summary_pattern(stored=4, skipped=0, ignored=1, failed=1, megabytes=megabytes), run.lines[0])
    assert run.lines[1:] == [f"FAILED export/broken.dcm: {TRUNCATED}"]
    assert row_counts() == (1, 2, 4)
    assert_store_holds(good)

    again = run_import(archive, "--order", order.pk)

    assert re.fullmatch(summary_pattern(stored=0, skipped=4, ignored=1, failed=1, megabytes=megabytes), again.lines[0])
    assert row_counts() == (1, 2, 4)
    assert_store_holds(good)


# --- A CD / USB export with DICOMDIR ------------------------------------------------------


def write_cd(root: Path, datasets: list[bytes]) -> dict[str, bytes]:
    """A CD-style export: DICOMDIR written by pydicom's FileSet, its files, a viewer and autorun.

    Returns the bytes of each DICOM file as written on the "CD" (FileSet rewrites them).
    """
    file_set = FileSet()
    for content in datasets:
        file_set.add(pydicom.dcmread(io.BytesIO(content)))
    file_set.write(root)
    (root / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER\\viewer.exe\n")
    (root / "VIEWER").mkdir()
    (root / "VIEWER" / "viewer.exe").write_bytes(b"MZ" + bytes(500))
    (root / "index.htm").write_text("<html>Open the viewer</html>")
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("IM*"))
        if path.is_file() and path.parent.name.startswith("SE")
    }


def test_cd_export_by_accession_fills_each_patients_order(
    make_order: MakeOrder, radiology_store: str, tmp_path: Path
) -> None:
    first, second = make_order(), make_order(first_name="Tunde", last_name="Okeke")
    files_first = study_files(first, accession=first.accession_number)
    files_second = study_files(second, accession=second.accession_number)
    cd = tmp_path / "cd"
    on_cd = write_cd(cd, [*files_first.values(), *files_second.values()])
    assert len(on_cd) == 8
    assert (cd / "DICOMDIR").is_file()

    run = run_import(cd, "--by-accession")

    megabytes = sum(len(content) for content in on_cd.values()) / 1e6
    assert run.error is None
    assert len(run.lines) == 1
    assert re.fullmatch(summary_pattern(stored=8, skipped=0, ignored=0, failed=0, megabytes=megabytes), run.lines[0])
    for order in (first, second):
        study = RadiologyStudy.objects.get(radiology_order=order)
        assert study.accession_number == order.accession_number
        assert RadiologyImage.objects.filter(series__study=study).count() == 4
    assert_store_holds(on_cd)

    again = run_import(cd / "DICOMDIR", "--by-accession")

    assert again.error is None
    assert re.fullmatch(
        summary_pattern(stored=0, skipped=8, ignored=0, failed=0, megabytes=megabytes), again.stdout.rstrip()
    )
    assert row_counts() == (2, 4, 8)
    assert_store_holds(on_cd)


def test_cd_export_into_one_order(order: RadiologyOrder, tmp_path: Path) -> None:
    cd = tmp_path / "cd"
    on_cd = write_cd(cd, list(study_files(order).values()))

    run = run_import(cd, "--order", order.pk)

    assert run.error is None
    assert run.lines[0].startswith(
        "Stored 4, held 0 unmatched, skipped 0 already stored, ignored 0 non-DICOM, failed 0;"
    )
    assert_store_holds(on_cd)


def test_by_accession_holds_files_without_a_matching_order_as_unmatched(order: RadiologyOrder, tmp_path: Path) -> None:
    matching = study_files(order, accession=order.accession_number)
    unknown = study_files(accession="NOSUCHACC1")["ct_1.dcm"]
    without = study_files()["ct_1.dcm"]
    folder = write_folder(tmp_path / "export", {**matching, "x_unknown.dcm": unknown, "y_none.dcm": without})

    run = run_import(folder, "--by-accession")

    assert run.error is None
    assert run.lines[0].startswith(
        "Stored 4, held 2 unmatched, skipped 0 already stored, ignored 0 non-DICOM, failed 0;"
    )
    assert RadiologyStudy.objects.get().radiology_order == order
    held = {row.filename: row for row in UnmatchedImage.objects.all()}
    assert {name: (row.status, row.source, row.checksum) for name, row in held.items()} == {
        "x_unknown.dcm": ("pending", "import", sha256(unknown)),
        "y_none.dcm": ("pending", "import", sha256(without)),
    }
    assert {read_stored(row.file_key) for row in held.values()} == {unknown, without}
    assert all(row.file_key.startswith("unmatched/") for row in held.values())

    again = run_import(folder, "--by-accession")  # the same export twice: nothing new anywhere
    assert again.lines[0].startswith("Stored 0, held 0 unmatched, skipped 6 already stored,")
    assert UnmatchedImage.objects.count() == 2
