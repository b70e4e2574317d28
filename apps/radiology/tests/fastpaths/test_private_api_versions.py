"""The version guards of apps/radiology/fastpaths/: every private Django and pydicom API it uses.

Also the one private django-storages API the image store keeps (storage/__init__.py), and that
the key it derives with public helpers is still the backend's own.

Each fast path names the release it was checked against and falls back to the public route on
any other; these tests fail loudly after an upgrade, naming the module to re-check, so the
fallback (correct but slower) is noticed, and so is a private name that moved or changed its
signature. A failure here is fixed by re-reading that module against the new release, never by
editing the expected names below to whatever the new release has.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import sqlite3
from collections.abc import Callable
from typing import Any

import django
import pydicom
import pydicom.tag
import pytest
from django.core.exceptions import SuspiciousOperation
from django.core.files.base import ContentFile
from django.core.management.commands.flush import Command as DjangoFlush
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import Count, Value
from django.db.models.query import RelatedPopulator, get_related_populators
from django.db.models.sql.compiler import SQLCompiler
from django.db.models.sql.query import Query
from django.db.utils import ConnectionHandler
from pydicom.dataset import Dataset
from storages.backends.s3 import S3Storage

from apps.radiology import storage
from apps.radiology.fastpaths import dicom_json_fast, prepared
from apps.radiology.fastpaths.sqlite_functions import register_sqlite_function
from apps.radiology.models import RadiologyImage

DJANGO = django.get_version()


def _recheck_prepared(what: str) -> str:
    checked = ", ".join(".".join(map(str, version)) + ".x" for version in sorted(prepared.CHECKED_DJANGO_VERSIONS))
    return (
        f"Django is {DJANGO}; apps/radiology/fastpaths/prepared.py was checked against Django {checked}: "
        f"re-check prepared.py against Django {DJANGO} ({what}), run tests/fastpaths/test_prepared.py "
        "on SQLite and PostgreSQL, then update CHECKED_DJANGO_VERSIONS"
    )


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- prepared.py: the SQL compiler kept and reused ------------------------------------------


def test_django_is_a_release_prepared_py_was_checked_against() -> None:
    assert django.VERSION[:2] in prepared.CHECKED_DJANGO_VERSIONS, _recheck_prepared("the whole module")
    assert prepared.fast_path_supported(), _recheck_prepared("the whole module")


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (Query.get_compiler, ["self", "using", "connection", "elide_empty"]),
        (SQLCompiler.as_sql, ["self", "with_limits", "with_col_aliases"]),
        (SQLCompiler.get_converters, ["self", "expressions"]),
        (SQLCompiler.apply_converters, ["self", "rows", "converters"]),
        (get_related_populators, ["klass_info", "select", "db"]),
        (RelatedPopulator.populate, ["self", "row", "from_obj"]),
    ],
    ids=lambda value: getattr(value, "__qualname__", None),
)
def test_the_private_functions_prepared_py_calls_keep_their_signatures(
    function: Callable[..., Any], expected: list[str]
) -> None:
    found = _parameters(function)
    assert found == expected, _recheck_prepared(f"{function.__qualname__}{inspect.signature(function)}")


@pytest.mark.django_db
def test_a_compiled_query_still_carries_what_prepared_py_reads_from_it() -> None:
    queryset = (
        RadiologyImage.objects.select_related("series__study")
        .annotate(label=Value("seen"), images_in_series=Count("series__images"))
        .filter(image_uid="2.25.1")
        .order_by()[:1]
    )
    compiler = queryset.query.get_compiler(using=queryset.db)
    compiler.as_sql()

    assert compiler.connection is connections[DEFAULT_DB_ALIAS], _recheck_prepared("SQLCompiler.connection")
    klass_info = compiler.klass_info
    assert isinstance(klass_info, dict), _recheck_prepared("SQLCompiler.klass_info")
    assert {"model", "select_fields", "related_klass_infos"} <= set(klass_info), _recheck_prepared(
        f"SQLCompiler.klass_info keys {sorted(klass_info)}"
    )
    assert klass_info["model"] is RadiologyImage, _recheck_prepared("klass_info['model']")
    model_columns = [compiler.select[index][0] for index in klass_info["select_fields"]]
    assert [column.target.attname for column in model_columns] == [
        field.attname for field in RadiologyImage._meta.concrete_fields if field.attname != "metadata_text"
    ], _recheck_prepared("SQLCompiler.select entries (expression, sql, alias) and Col.target")
    assert isinstance(compiler.col_count, int), _recheck_prepared("SQLCompiler.col_count")
    assert compiler.col_count == len(compiler.select), _recheck_prepared("SQLCompiler.col_count")
    assert set(compiler.annotation_col_map) == {"label", "images_in_series"}, _recheck_prepared(
        "SQLCompiler.annotation_col_map"
    )
    populators = get_related_populators(klass_info, compiler.select, queryset.db)
    assert [type(populator) for populator in populators] == [RelatedPopulator], _recheck_prepared(
        "get_related_populators"
    )


@pytest.mark.django_db
def test_the_driver_connection_prepared_py_prepares_on_is_there() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    connection.ensure_connection()
    assert callable(getattr(connection.connection, "cursor", None)), _recheck_prepared(
        "BaseDatabaseWrapper.connection, the DB-API connection"
    )


# --- bulk_insert.py: COPY with the values bulk_create would send ----------------------------


@pytest.mark.django_db
def test_the_undocumented_connection_api_bulk_insert_uses_is_there() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    message = (
        f"Django is {DJANGO}; apps/radiology/fastpaths/bulk_insert.py was checked against Django 5.2.19: "
        f"re-check bulk_insert.py against Django {DJANGO} (connection.ops.quote_name, "
        "connection.wrap_database_errors, Model._state) and run tests/fastpaths/test_bulk_insert.py"
    )
    assert _parameters(connection.ops.quote_name) == ["name"], message
    with connection.wrap_database_errors:
        pass
    state = RadiologyImage()._state
    assert (state.adding, state.db) == (True, None), message


# --- dicom_json_fast.py: DICOM JSON from the raw elements -----------------------------------


def _recheck_dicom_json_fast() -> str:
    checked = ", ".join(sorted(dicom_json_fast.CHECKED_PYDICOM_VERSIONS))
    return (
        f"pydicom is {pydicom.__version__}; dicom_json_fast was checked against {checked}: re-run "
        "tests/fastpaths/test_dicom_json_fast.py against the new version and update CHECKED_PYDICOM_VERSIONS"
    )


def test_pydicom_is_a_release_dicom_json_fast_was_checked_against() -> None:
    assert pydicom.__version__ in dicom_json_fast.CHECKED_PYDICOM_VERSIONS, _recheck_dicom_json_fast()
    assert dicom_json_fast.fast_path_supported(), (
        "pydicom is configured away from its defaults (config or hooks): dicom_json_fast is off. "
        + _recheck_dicom_json_fast()
    )


def test_the_private_pydicom_names_dicom_json_fast_mirrors_are_unchanged() -> None:
    assert isinstance(inspect.getattr_static(Dataset, "_character_set", None), property), _recheck_dicom_json_fast()
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 100"
    assert dataset._character_set == ["latin_1"], _recheck_dicom_json_fast()
    # The copy of pydicom.tag._LUT_DESCRIPTOR_TAGS (hooks.raw_element_value's US-or-SS fix-up).
    lut_descriptors = frozenset(int(tag) for tag in getattr(pydicom.tag, "_LUT_DESCRIPTOR_TAGS", ()))
    assert lut_descriptors == dicom_json_fast._LUT_DESCRIPTORS, _recheck_dicom_json_fast()


# --- flush_guard.py: the audit permit inside Django's flush transaction ---------------------


def _recheck_flush_guard(what: str) -> str:
    return (
        f"Django is {DJANGO}; apps/radiology/fastpaths/flush_guard.py was checked against Django 5.2.19: "
        f"re-check flush_guard.py against Django {DJANGO} ({what}) and run the flush tests of "
        "tests/access/test_audit.py on SQLite and PostgreSQL"
    )


def test_execute_sql_flush_that_flush_guard_wraps_keeps_its_signature() -> None:
    found = _parameters(BaseDatabaseOperations.execute_sql_flush)
    assert found == ["self", "sql_list"], _recheck_flush_guard(f"BaseDatabaseOperations.execute_sql_flush{found}")
    # This database's own operations (a backend may override it), bound as flush_guard finds it.
    bound = _parameters(connections[DEFAULT_DB_ALIAS].ops.execute_sql_flush)
    assert bound == ["sql_list"], _recheck_flush_guard(f"connection.ops.execute_sql_flush{bound}")


def test_djangos_flush_command_still_runs_its_statements_through_execute_sql_flush() -> None:
    assert "connection.ops.execute_sql_flush(sql_list)" in inspect.getsource(DjangoFlush.handle), _recheck_flush_guard(
        "django.core.management.commands.flush no longer calls connection.ops.execute_sql_flush"
    )


# --- sqlite_functions.py: Python functions registered on the sqlite3 connection -------------


def _recheck_sqlite_functions(what: str) -> str:
    return (
        f"Django is {DJANGO}; apps/radiology/fastpaths/sqlite_functions.py was checked against Django 5.2.19: "
        f"re-check sqlite_functions.py against Django {DJANGO} ({what}) and run tests/dicomweb/test_qido*.py "
        "on SQLite"
    )


@pytest.mark.django_db
def test_the_sqlite_driver_connection_sqlite_functions_registers_on_is_there() -> None:
    # A SQLite connection of its own, so this runs whatever the test database is.
    handler = ConnectionHandler({DEFAULT_DB_ALIAS: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})
    connection = handler[DEFAULT_DB_ALIAS]
    try:
        assert connection.connection is None, _recheck_sqlite_functions("connection.connection before connecting")
        connection.ensure_connection()
        driver = connection.connection
        assert isinstance(driver, sqlite3.Connection), _recheck_sqlite_functions(
            f"connection.connection is a {type(driver).__name__}"
        )
        assert _parameters(driver.create_function) == ["name", "narg", "func", "deterministic"], (
            _recheck_sqlite_functions("sqlite3.Connection.create_function")
        )
        register_sqlite_function(connection, "pacs_guard_lower", 1, str.lower)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pacs_guard_lower(%s)", ["\u00d1\u00da\u00d1EZ"])
            assert cursor.fetchone() == ("\u00f1\u00fa\u00f1ez",), _recheck_sqlite_functions("create_function")
    finally:
        handler.close_all()


# --- storage/__init__.py: django-storages' keys and upload parameters -----------------------

DJANGO_STORAGES = importlib.metadata.version("django-storages")


def _recheck_storage(what: str) -> str:
    return (
        f"django-storages is {DJANGO_STORAGES}; apps/radiology/storage/__init__.py was checked against "
        f"django-storages 1.14.6: re-check _s3_key and RadiologyS3Storage._save against {DJANGO_STORAGES} "
        f"({what}) and run tests/storage/ with PACS_TEST_S3_ENDPOINT set"
    )


@pytest.mark.parametrize("location", ["", "pacs", "pacs/nested/"])
@pytest.mark.parametrize(
    "name",
    ["radiology/1.2/3.4/5.6/chest.dcm", "radiology/", "radiology/./x/../y.dcm", "", "a//b"],
)
def test_the_s3_keys_made_here_are_django_storages_own(location: str, name: str) -> None:
    store = S3Storage(bucket_name="guard", location=location)
    # What the backend itself calls every name it reads or writes (_open, exists, size, url, ...).
    assert storage._s3_key(store, name) == store._normalize_name(name), _recheck_storage(
        f"S3Storage._normalize_name({name!r}) with location {location!r}"
    )


@pytest.mark.parametrize("name", ["../outside.dcm", "radiology/../../outside.dcm", "..", "/rooted.dcm"])
def test_a_name_outside_the_location_is_refused_as_the_backend_refuses_it(name: str) -> None:
    store = S3Storage(bucket_name="guard", location="pacs")
    with pytest.raises(SuspiciousOperation) as by_backend:
        store._normalize_name(name)
    with pytest.raises(SuspiciousOperation) as here:
        storage._s3_key(store, name)
    assert str(here.value) == str(by_backend.value), _recheck_storage(f"S3Storage._normalize_name({name!r})")


def test_the_upload_parameters_radiology_s3_storage_takes_from_the_backend() -> None:
    found = _parameters(S3Storage._get_write_parameters)
    assert found == ["self", "name", "content"], _recheck_storage(f"S3Storage._get_write_parameters{found}")
    store = S3Storage(bucket_name="guard", default_acl=None, object_parameters={"CacheControl": "private"})
    content = ContentFile(b"DICM", name="x.dcm")
    content.content_type = "application/dicom"  # type: ignore[attr-defined]  # as save_new_object sets it
    assert store._get_write_parameters("radiology/x.dcm", content) == {
        "CacheControl": "private",
        "ContentType": "application/dicom",
    }, _recheck_storage("S3Storage._get_write_parameters")


def test_the_private_file_meta_reader_dicom_meta_calls_keeps_its_signature() -> None:
    """fastpaths/dicom_meta.py reads a stream's file meta with pydicom's _read_file_meta_info(fp)."""
    import pydicom.filereader

    reader = getattr(pydicom.filereader, "_read_file_meta_info", None)
    assert reader is not None, (
        f"pydicom {pydicom.__version__} has no filereader._read_file_meta_info: re-check fastpaths/dicom_meta.py"
    )
    assert list(inspect.signature(reader).parameters) == ["fp"], (
        f"pydicom {pydicom.__version__} changed _read_file_meta_info's signature: re-check fastpaths/dicom_meta.py"
    )


def test_the_file_meta_of_a_stream_is_the_file_meta_of_its_path() -> None:
    """Read from a stream, the file meta equals what the public path reader gives, and the stream is rewound."""
    from pathlib import Path

    from pydicom.data import get_testdata_file

    from apps.radiology.fastpaths.dicom_meta import file_meta_of

    path = Path(get_testdata_file("CT_small.dcm"))
    with path.open("rb") as stream:
        from_stream = file_meta_of(stream)
        assert stream.tell() == 0
    assert from_stream == pydicom.filereader.read_file_meta_info(path) == file_meta_of(path)
    assert from_stream.TransferSyntaxUID == "1.2.840.10008.1.2.1"


# --- dimse_file_send.py: retrieve sub-operations sent from files, on a bounded send queue -------


def test_pynetdicom_is_the_release_dimse_file_send_was_checked_against() -> None:
    from apps.radiology.fastpaths import dimse_file_send

    version = dimse_file_send.pynetdicom_version()
    assert version in dimse_file_send.CHECKED_PYNETDICOM_VERSIONS, (
        f"pynetdicom is {version}: re-check fastpaths/dimse_file_send.py (the Q/R SCP still sends what the "
        "handler yields with assoc.send_c_store, and the DUL still reads dul.to_provider_queue anew each time), "
        "run tests/dimse/test_retrieve.py, then update CHECKED_PYNETDICOM_VERSIONS"
    )


def test_the_send_queue_dimse_file_send_bounds_is_where_pynetdicom_puts_pdus() -> None:
    """DULServiceProvider.send_pdu puts on self.to_provider_queue, a queue.Queue set in __init__."""

    from pynetdicom.dul import DULServiceProvider

    assert "self.to_provider_queue.put(primitive)" in inspect.getsource(DULServiceProvider.send_pdu), (
        "pynetdicom's send_pdu changed: re-check fastpaths/dimse_file_send.py"
    )
    assert "queue.Queue()" in inspect.getsource(DULServiceProvider.__init__)


# --- dimse_db_connections.py: a database connection handed from one association's thread to the next ---


def test_django_is_a_release_dimse_db_connections_was_checked_against() -> None:
    from apps.radiology.fastpaths import dimse_db_connections

    assert dimse_db_connections.supported(), (
        f"Django is {DJANGO}: re-check fastpaths/dimse_db_connections.py (a DatabaseWrapper still checks its "
        "owner thread through _thread_ident, ConnectionHandler still sets and deletes a thread's connection "
        "with connections[alias] = ... and del connections[alias]), run tests/dimse/test_association_setup.py, "
        "then update CHECKED_DJANGO_VERSIONS"
    )


def test_a_database_wrapper_checks_its_thread_through_the_name_dimse_db_connections_sets() -> None:
    from django.db.backends.base.base import BaseDatabaseWrapper

    assert "self._thread_ident == _thread.get_ident()" in inspect.getsource(
        BaseDatabaseWrapper.validate_thread_sharing
    ), "BaseDatabaseWrapper.validate_thread_sharing changed: re-check fastpaths/dimse_db_connections.py"
    assert "self._thread_ident = _thread.get_ident()" in inspect.getsource(BaseDatabaseWrapper.__init__)
    assert "setattr(self._connections, key, value)" in inspect.getsource(ConnectionHandler.__setitem__)
    assert "delattr(self._connections, key)" in inspect.getsource(ConnectionHandler.__delitem__)
