"""WSGI entry point (gunicorn config.wsgi)."""

import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Tuned for a long-lived server process: everything loaded so far (Django, the app, its
# settings) lives as long as the process, so it is moved out of the cyclic collector's
# generations; and the youngest generation is collected every 20,000 allocations, not 700.
# A STOW-RS batch makes ~100,000 short-lived objects (pydicom elements), and with the
# defaults the collector's repeated walks cost ingest ~8% (bench/compare_orthanc.py).
# Reference counting still frees almost everything at once; only cycles wait longer.
GC_THRESHOLDS = (20_000, 20, 100)
gc.collect()
gc.freeze()
gc.set_threshold(*GC_THRESHOLDS)
