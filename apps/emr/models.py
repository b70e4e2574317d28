"""The host EMR's patients and visits: a minimal stand-in for the EMR that PACS-lite lives in.

PACS-lite never edits these; a study snapshots the patient's name and id when it is created,
so an image keeps the identity it was taken under even if the EMR record is later corrected.
"""

from __future__ import annotations

from django.db import models


class Patient(models.Model):
    """A registered patient of the hospital."""

    class Sex(models.TextChoices):
        MALE = "M", "Male"
        FEMALE = "F", "Female"
        OTHER = "O", "Other"

    hospital_number = models.CharField(max_length=64, unique=True)
    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    date_of_birth = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["last_name", "first_name"]

    def __str__(self) -> str:
        return f"{self.hospital_number}"

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def dicom_name(self) -> str:
        """The name in DICOM Person Name form (Family^Given)."""
        return f"{self.last_name}^{self.first_name}"


class Visit(models.Model):
    """One encounter of a patient with the hospital; radiology orders hang off a visit."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="visits")
    visit_date = models.DateField()
    reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-visit_date", "-id"]

    def __str__(self) -> str:
        return f"Visit {self.pk} of {self.patient_id}"
