"""What an image file is: reading an incoming DICOM or JPEG file, and what is kept of it.

Owns: DICOM header fields, transfer syntaxes, frame positions and codestream sizes, DICOM JSON,
a JPEG's size and EXIF (dicom.py); DICOM UID rules and UUID-derived `2.25.` UIDs (uids.py); the
one definition of what a client declares about an image beside its bytes (declared.py); a
file's patient identity against the EMR's and the Original Attributes that keep it
(patient_identity.py); and the one module that writes and reads an image's stored header,
whatever columns keep it for speed (stored_header.py).

May import: models, fastpaths, errors. Knows nothing of HTTP, users or ingest order; ingest,
dicomweb and the viewers build on it.
"""
