"""WSGI entry point (gunicorn config.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

from config.gc_tuning import tune_for_long_lived_process
from config.viewer_origin import VIEWER_URLCONF

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()
# Each worker loads its URL configurations, and with them every view module, before it takes a
# request: otherwise the first request a fresh worker answered (after a start, a crash, a
# redeploy) spent ~300 ms importing them (py-spy, the first series metadata request of
# bench/scale.py), and a doctor opening a study waited for it.
for urlconf in (None, VIEWER_URLCONF):
    get_resolver(urlconf).url_patterns  # noqa: B018 (the property imports the modules)
tune_for_long_lived_process()
