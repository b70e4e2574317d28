"""Every place PACS-lite trades a public API for speed, and nowhere else.

The rest of the app is meant to use only public Django and pydicom API; each module here says why
it needs more, which private API it uses, and the release it was checked against (see
requirements.txt for the pinned versions). Where a private API is involved the module falls
back to the public route on any other release, and tests/fastpaths/test_private_api_versions.py
fails loudly after an upgrade, naming the module to re-check.

- prepared.py: one-row lookups compiled once (and PREPAREd once per PostgreSQL session).
  Private: Django's SQL compiler (`query.get_compiler`, `as_sql` and the `select`/`klass_info`/
  `annotation_col_map`/`col_count` it sets, `get_converters`, `apply_converters`),
  `django.db.models.query.get_related_populators`, and `connection.connection` (the driver's
  connection). Checked against Django 5.2.19; other releases: the queryset is evaluated as is
  (CHECKED_DJANGO_VERSIONS). Per-session state is keyed by connection in a WeakKeyDictionary
  and reset by the public `connection_created` signal.
- after_response.py: work run when the server closes the response (audit INSERT, render-cache
  write). No private API: wraps the response's public, documented close(). Checked against
  Django 5.2.19 (its WSGI handler, ASGI handler and test client all call `response.close`).
- dicom_json_fast.py: DICOM JSON straight from pydicom's raw elements. Private:
  `Dataset._character_set`, and a copy of `pydicom.tag._LUT_DESCRIPTOR_TAGS`. Checked
  against pydicom 3.0.2; other releases or non-default pydicom settings: pydicom's own
  conversion (CHECKED_PYDICOM_VERSIONS, fast_path_supported).
- bulk_insert.py: PostgreSQL COPY instead of bulk_create's INSERT. Undocumented but long-stable:
  `connection.ops.quote_name`, `connection.wrap_database_errors`; documented-underscored:
  `Model._state`. Checked against Django 5.2.19; other databases: bulk_create.
- json_members.py: a few top-level members of a row's JSON column picked by the database
  (per-vendor SQL). Undocumented but long-stable: `connection.ops.quote_name`;
  documented-underscored: `Model._state`. Checked against Django 5.2.19; other databases: None
  (the caller loads the column).
- utf8_rows.py: a queryset's text columns as the UTF-8 bytes PostgreSQL sent (a series' ~23 MB
  of metadata is not decoded into str to be encoded again). Undocumented but long-stable:
  `QuerySet.query.sql_with_params()`, `CursorWrapper.cursor`; documented-underscored:
  `Model._meta`. Checked against Django 5.2.19 and psycopg2 2.9.13; other databases, or fields
  with converters: the ORM's rows, encoded.
- encoded_json.py: a header's JSON text encoded once and reused. No private API: relies on
  JSONField encoding through `json.dumps(value, cls=encoder)` (Django 5.2.19).
- flush_guard.py: not for speed; Django has no public hook for it. Two statements (the audit
  permit of management/commands/flush.py) put first and last in the list Django's flush runs in
  one transaction. Undocumented: `connection.ops.execute_sql_flush(sql_list)`, wrapped on one
  connection for the command's duration. Checked against Django 5.2.19; no fallback (a flush
  without the permit is refused by the audit guard), the guard test checks the signature and
  that Django's flush command still calls it.
- sqlite_functions.py: not for speed; the standard recipe for a Python function in SQLite SQL
  (dicomweb/wildcards.py's Unicode lower()). Undocumented: `connection.connection`, the sqlite3
  connection its public `create_function` is called on. Checked against Django 5.2.19; other
  databases: nothing registered.
- dicom_meta.py: a stream's file meta only (the transfer syntax decides whether the data set may
  be read at all). Private: `pydicom.filereader._read_file_meta_info` (the public reader takes
  only a path). Checked against pydicom 3.0.2; guarded by test_private_api_versions.py.
- dimse_file_send.py: not for speed, for memory: C-GET/C-MOVE sub-operations sent from a file in
  chunks (pynetdicom's Q/R SCP would encode each yielded Dataset whole), on a send queue bounded
  to a few MiB (pynetdicom's is unbounded: a slow receiver would pile an instance up in memory).
  Wraps the public `Association.send_c_store`; private: `Association.dul.to_provider_queue`.
  Checked against pynetdicom 3.0.4; no fallback, guarded by test_private_api_versions.py.
"""
