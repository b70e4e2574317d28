"""Garbage-collector settings for a long-lived process (the WSGI server, the ingest parse helper)."""

import gc

# Everything loaded so far (Django, the app, its settings) lives as long as the process, so
# it is moved out of the cyclic collector's generations; and the youngest generation is
# collected every 5,000 allocations, not 700. A STOW-RS batch makes ~100,000 short-lived
# objects (pydicom elements), and with the defaults the collector's repeated walks cost
# ingest ~8% (bench/compare_orthanc.py). Reference counting still frees almost everything
# at once; only cycles wait longer.
#
# Not more than 5,000: a collection holds the GIL, so every request of the worker waits for it.
# Frames asked of one worker in-process on PostgreSQL (6,300 requests; issue 19): with 20,000 a
# young collection took 9 ms on average and up to 18-28 ms, with 5,000 1.5 ms and at most
# 3-5 ms, and the collector's total time was lower too (181 ms against 241-251 ms: a smaller
# young generation stays in the CPU's cache). STOW-RS with 1 and 4 clients against
# scripts/serve.sh showed no difference between the two beyond the runs' noise.
GC_THRESHOLDS = (5_000, 10, 100)


def tune_for_long_lived_process() -> None:
    """Call once the process has loaded what it keeps for its whole life."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
