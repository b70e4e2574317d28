"""Running PACS-lite: the /healthz check and the demo data `make run` seeds.

Owns: what an operator (or `make run`) does to a running store, not what a user reads.
Management commands (apps/radiology/management/commands/) are thin wrappers over this package
and the services. May import anything below the top layer; nothing imports operations.
"""
