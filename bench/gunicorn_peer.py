"""gunicorn's settings as PACS-lite served with them until issue 19: the peer of bench/compare_app_servers.py.

    gunicorn -c bench/gunicorn_peer.py config.wsgi --bind 127.0.0.1:PORT

`make run`, compose and the systemd unit serve with granian now (config/app_server.py); this keeps
the configuration that was measured against it, so the comparison can be run again.

Why these values (as they were chosen for serving):
- gthread workers: Orthanc, OHIF and dicomweb-client keep connections alive, and OHIF sends
  many small requests at once; a sync worker would hold one connection per process.
- timeout 300: a 2 GiB upload over a slow clinic link keeps its worker busy for minutes.
- graceful_timeout 20, as config/app_server.py's grace.
"""

from __future__ import annotations

from config.env import env_bool, env_int, usable_cores

worker_class = "gthread"
# Each worker listens on its own socket (SO_REUSEPORT; gunicorn then binds in each worker, not in
# the arbiter) and the kernel spreads new connections across them. With one shared socket, the
# worker that woke first took connections arriving together (a viewer's six, a reading room's
# dozens), and they stay alive: under 32 kept-alive connections asking for rendered images (wrk
# against scripts/serve.sh, as bench/compare_orthanc.py runs it) one worker of three used 7.8 s of
# CPU in 8 s and the other two none, ~400 requests/s where three busy workers gave ~800.
reuse_port = True
# One worker per core. A worker's Python runs one thread at a time (the GIL), so a worker is at
# most one busy core; a third worker on 2 cores added no throughput but made each worker wait
# for a core behind the other two, PostgreSQL and the clients. Frames under wrk against
# scripts/serve.sh on 2 cores, as bench/compare_orthanc.py's load rows run it (issue 19):
# 3 workers x 4 threads gave p99 59-97 ms at 8 connections and 117-143 ms at 32; 2 x 4 gave
# 24-31 ms and 58-70 ms at the same ~1,000 requests/s (2 x 2 and 2 x 6 no better than 2 x 4).
workers = env_int("PACS_WEB_WORKERS", usable_cores(), minimum=1)
# Four threads each: a request waiting on the disk, PostgreSQL or a slow client's upload does
# not hold up its worker's other connections.
threads = env_int("PACS_WEB_THREADS", 4, minimum=1)
timeout = 300
graceful_timeout = 20
keepalive = 5
# No line per request by default (PACS_ACCESS_LOG=1 prints them): the audit trail already records
# every request for clinical data (who, what, when, outcome), and under 32 connections asking
# for frames, writing each line through the logging lock to supervisord's pipe was a tenth of a
# worker's time (py-spy, bench/compare_orthanc.py's load rows). Errors still go to stderr.
accesslog = "-" if env_bool("PACS_ACCESS_LOG", False) else None
errorlog = "-"
# No control socket: the supervisor is the one control interface, and two servers on one host
# (a test's, a second checkout's) would both take the default ~/.gunicorn/gunicorn.ctl.
control_socket_disable = True
