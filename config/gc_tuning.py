"""Garbage-collector settings for a long-lived process (the WSGI server, the ingest parse helper)."""

import gc

# Everything loaded so far (Django, the app, its settings) lives as long as the process, so
# it is moved out of the cyclic collector's generations; and the youngest generation is
# collected every 20,000 allocations, not 700. A STOW-RS batch makes ~100,000 short-lived
# objects (pydicom elements), and with the defaults the collector's repeated walks cost
# ingest ~8% (bench/compare_orthanc.py). Reference counting still frees almost everything
# at once; only cycles wait longer.
GC_THRESHOLDS = (20_000, 20, 100)


def tune_for_long_lived_process() -> None:
    """Call once the process has loaded what it keeps for its whole life."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
