"""Who may see and do what, and the record of what they did.

Owns: principals (an EMR user with radiology roles, a viewer token's one study, a signed image
link's issuer, a DICOM node: principals.py); the read door every read path starts from
(`visible_studies` / `visible_series` / `visible_images(principal)`, visible.py, with the list
prefetches in selectors.py); roles and DRF permissions (permissions.py); API token
authentication (token_auth.py); signed, expiring image URLs and viewer tokens and their
revocation (signing.py); login lockout (login_protection.py); the audit trail (audit.py); and the
startup check that links stay signed (checks.py).

May import: models, storage, imagefiles, fastpaths, errors. The ways in and read paths (api,
dicomweb, viewers, admin) call access; access never imports them.
"""
