"""PACS-lite on the DICOM network (DIMSE): the listener modalities and workstations call (listener.py)."""
