"""The front door for people: what this server is at `/`, sign in, and the study list.

The REST API, DICOMweb and admin serve programs and administrators; a doctor or radiology
tech opening the server's address in a browser needs a page that says where to go, a list of
studies to search, and a button that opens a study in a viewer. Server-rendered Django
templates, no script, plain CSS in the page: it works on a cheap phone over a slow link.

Every read goes through the read door (access/visible.py) as the signed-in user; the roles
are the API's (access/permissions.py); viewer links are issued by access/signing.py, the
same tokens the API hands out. Pages that show clinical data live under `/radiology/`, the
prefix the audit trail records (access/audit.py).
"""
