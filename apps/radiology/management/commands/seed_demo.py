"""Create demo users, groups, empty radiology orders and (optionally) a study of real images."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from apps.emr.models import Patient, Visit
from apps.radiology.access.permissions import DOCTOR_GROUP, RADIOLOGY_TECH_GROUP
from apps.radiology.models import Modality, RadiologyOrder
from apps.radiology.operations.demo import demo_visit_date, ingest_demo_study

# The radiology tech is staff: the unmatched inbox (files that came with no order) is in admin.
DEMO_USERS = {
    "doctor": {
        "groups": [DOCTOR_GROUP],
        "staff": False,
        "superuser": False,
        "first_name": "Ada",
        "last_name": "Okafor",
    },
    "radtech": {
        "groups": [RADIOLOGY_TECH_GROUP],
        "staff": True,
        "superuser": False,
        "first_name": "Bola",
        "last_name": "Adeyemi",
    },
    "nurse": {"groups": [], "staff": False, "superuser": False, "first_name": "Chioma", "last_name": "Eze"},
    "admin": {"groups": [], "staff": True, "superuser": True, "first_name": "Admin", "last_name": "User"},
}
EXAMS = [
    (Modality.CR, "Chest X-Ray PA"),
    (Modality.CT, "CT Head without contrast"),
    (Modality.US, "Abdominal ultrasound"),
    (Modality.MR, "MRI Lumbar spine"),
]


class Command(BaseCommand):
    help = "Create demo users (doctor, radtech, nurse, admin), N empty radiology orders, optionally a study."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--orders", type=int, default=3, help="empty radiology orders to create (default 3)")
        parser.add_argument(
            "--with-images", action="store_true", help="also create an order whose study holds real sample images"
        )
        parser.add_argument(
            "--if-empty", action="store_true", help="only ensure users if any radiology order exists already"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object describing what was made")

    def handle(self, *args: Any, **options: Any) -> None:
        users = ensure_demo_users(settings.DEMO_PASSWORD)
        order_ids: list[int] = []
        study_ids: list[int] = []
        skip = options["if_empty"] and RadiologyOrder.objects.exists()
        if not skip:
            for index in range(options["orders"]):
                order_ids.append(create_demo_order(index, doctor=users["doctor"]).pk)
            if options["with_images"]:
                order = create_demo_order(len(order_ids), doctor=users["doctor"], modality=Modality.CT)
                ingest_demo_study(order, uploaded_by=users["radtech"])
                order.status = RadiologyOrder.Status.COMPLETED
                order.save(update_fields=["status", "updated_at"])
                study_ids.append(order.study.pk)
        summary = {
            "users": {role: user.get_username() for role, user in users.items()},
            "password": settings.DEMO_PASSWORD,
            "radiology_orders": order_ids,
            "studies": study_ids,
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            self.stdout.write(
                f"Demo users {', '.join(summary['users'].values())}; "
                f"{len(order_ids)} new empty orders; {len(study_ids)} new studies with images."
            )


def ensure_demo_users(password: str) -> dict[str, Any]:
    """Create the groups and the four demo users if missing (never duplicates)."""
    user_model = get_user_model()
    users: dict[str, Any] = {}
    with transaction.atomic():
        for name in (DOCTOR_GROUP, RADIOLOGY_TECH_GROUP):
            Group.objects.get_or_create(name=name)
        for username, spec in DEMO_USERS.items():
            user, created = user_model.objects.get_or_create(
                username=username,
                defaults={
                    "first_name": spec["first_name"],
                    "last_name": spec["last_name"],
                    "is_staff": spec["staff"],
                    "is_superuser": spec["superuser"],
                },
            )
            if created:
                user.set_password(password)
                user.save()
            for group_name in spec["groups"]:
                user.groups.add(Group.objects.get(name=group_name))
            users[username] = user
    return users


def create_demo_order(index: int, *, doctor: Any, modality: str | None = None) -> RadiologyOrder:
    """A new patient, visit and radiology order with no study yet."""
    number = Patient.objects.count() + 1
    while Patient.objects.filter(hospital_number=f"DEMO-{number:05d}").exists():
        number += 1
    patient = Patient.objects.create(
        hospital_number=f"DEMO-{number:05d}",
        first_name=["Emeka", "Ngozi", "Tunde", "Aisha", "Ifeanyi"][number % 5],
        last_name=["Nwosu", "Balogun", "Okeke", "Bello", "Obi"][number % 5],
        sex=[Patient.Sex.MALE, Patient.Sex.FEMALE][number % 2],
    )
    visit = Visit.objects.create(patient=patient, visit_date=demo_visit_date(), reason="Demo visit")
    chosen_modality, exam = EXAMS[index % len(EXAMS)]
    if modality is not None:
        chosen_modality, exam = modality, dict((m, e) for m, e in EXAMS)[modality]
    return RadiologyOrder.objects.create(
        visit=visit, modality=chosen_modality, exam_requested=exam, ordering_doctor=doctor
    )
