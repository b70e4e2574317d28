"""The REST API under /api/v1/radiology/ that the EMR frontend calls: thin views, the serializers
that carry the seed's JSON shapes, list filters, the offline upload sync endpoints and the signed
image URL endpoint.

Owns: turning HTTP requests into calls on the services and their answers into JSON.
May import: ingest and access (services), storage, models, imagefiles, errors. Reads start from
the read door (access.visible); writes go through ingest. Nothing below imports api.
"""
