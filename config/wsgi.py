"""WSGI entry point (the app server, config/app_server.py: config.wsgi:application)."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

from config.gc_tuning import tune_for_long_lived_process
from config.request_environ import without_process_environment
from config.unread_body import close_when_body_unread
from config.viewer_origin import VIEWER_URLCONF

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# No server secret in request.META (config/request_environ.py); an answer given before its
# request's body was read says Connection: close (config/unread_body.py).
application = without_process_environment(close_when_body_unread(get_wsgi_application()))
# Each worker loads its URL configurations, and with them every view module, before it takes a
# request: otherwise the first request a fresh worker answered (after a start, a crash, a
# redeploy) spent ~300 ms importing them (py-spy, the first series metadata request of
# bench/scale.py), and a doctor opening a study waited for it.
for urlconf in (None, VIEWER_URLCONF):
    get_resolver(urlconf).url_patterns  # noqa: B018 (the property imports the modules)
tune_for_long_lived_process()
