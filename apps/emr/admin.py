from django.contrib import admin

from apps.emr.models import Patient, Visit


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ["hospital_number", "last_name", "first_name", "date_of_birth", "sex"]
    search_fields = ["hospital_number", "last_name", "first_name"]


@admin.register(Visit)
class VisitAdmin(admin.ModelAdmin):
    list_display = ["id", "patient", "visit_date", "reason"]
    list_select_related = ["patient"]
    search_fields = ["patient__hospital_number"]
    date_hierarchy = "visit_date"
