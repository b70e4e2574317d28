"""Ingest: taking image files in and storing them, with their study, series and image rows.

Ingest owns everything between bytes arriving and an image being stored: spooling and
checking the bytes (spool.py), parsing them (imagefiles/, on two cores: parse_helper.py),
deciding which study, series and image they are (resolve.py) and whether the file's patient is
the order's (identity.py), writing the file and its rows so that neither exists without the
other (commit.py), telling the read paths which series grew once the rows commit (signals.py), and
removing what killed ingests left behind (cleanup.py). A file that
comes with no order is held in the unmatched inbox (holding.py) until a tech assigns or
discards it (unmatched.py). What is stored of a file's header is written by imagefiles/stored_header.py.

Every way in goes through ingest.pipeline (`ingest_image`, `ingest_images`), so every file is
checked and stored the same way: upload sync (upload_sync.py), DICOMweb STOW-RS
(dicomweb/stow.py), bulk import (bulk_import.py), the demo seeder (operations/demo.py), and
the DICOM listener to come. pacs_lite_service.PACSLiteService, the seed's facade, hands over
to it too.

Layers: ingest imports models, storage, imagefiles, fastpaths and errors, and access's audit
trail (who confirmed a mismatch, who assigned a file), never dicomweb, api or viewers (those
call ingest).
"""
