"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under /api/v1/radiology/dicomweb/, the subset OHIF v3 and
standard clients use. Reads come from what ingest stored (rows, DICOM JSON, frame offsets);
writes go through the one ingest path."""
