"""The same PACS-lite behind two WSGI servers: the gunicorn `make run` ships, and granian (issue 19).

Run from the repository root (as root: it runs PostgreSQL as the postgres user, may apt-get
install wrk):  make bench-app-servers
(= .venv/bin/python bench/compare_app_servers.py; --seconds and --rounds to change the runs).

Why: a frame asked with OHIF's viewer token costs ~0.9 ms of a worker's CPU when the WSGI
application is called in-process, but ~1.5 ms under wrk against scripts/serve.sh. The rest is
gunicorn's gthread worker: HTTP parsed in Python and every connection handed between its poller
thread and its request threads, all under the GIL. granian (Rust, hyper) parses HTTP and moves
bytes outside the GIL. This measures what that is worth on this machine before anything ships.

What it does, all on 127.0.0.1 and in a temporary directory:
1. PostgreSQL 15 with its defaults (fsync on) and PACS-lite exactly as `make run` serves it
   (scripts/serve.sh: supervisord, config/gunicorn_serve.py: one worker per usable core, 4
   threads each);
2. one series of 100 CT_small instances stored through STOW-RS, and the study's viewer token as
   the demo doctor gets it from the viewer-url endpoint (bench/compare_orthanc.py's viewer_of);
3. granian on another port, in the same environment (scripts/serve_env.sh, the same database,
   secret key and var directory): as many workers, 4 blocking threads each, the same WSGI
   application (config.wsgi);
4. frames and rendered JPEGs of that series with 1, 8 and 32 keep-alive connections (wrk),
   the two servers taking turns `--rounds` times: requests/s, p50, p99, and the CPU of each
   server's processes per request (/proc), medians over the rounds.

Not shipped: granian is pinned in requirements-dev.txt for this script only. Serving with it
needs more than a command line: it binds one address, and `make run` serves the API's port and
the viewer's from one pool of workers (docs/performance.md says what a switch would take).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _services as services
from compare_orthanc import (
    PACS,
    LoadFigures,
    Server,
    batches_of,
    ensure_wrk,
    make_dataset,
    run_wrk,
    store_batch,
    viewer_of,
)

sys.path.insert(0, str(services.ROOT))
from config.env import usable_cores

CONNECTIONS = (1, 8, 32)
GRANIAN_THREADS = 4  # as gunicorn's PACS_WEB_THREADS default: a slow upload holds one thread, not a worker


@dataclass
class Contender:
    name: str
    server: Server
    root_pid: int

    def cpu_seconds(self) -> float:
        return services.tree_cpu_ticks(self.root_pid) / 100


@contextlib.contextmanager
def granian(env: dict[str, str], workdir: Path) -> Iterator[tuple[str, int]]:
    """granian serving config.wsgi in the environment scripts/serve.sh gave gunicorn; (origin, pid)."""
    port = services.free_port()
    log_path = workdir / "granian.log"
    command = [
        "sh",
        "scripts/serve_env.sh",
        str(services.VENV_BIN / "granian"),
        "--interface",
        "wsgi",
        "--workers",
        str(usable_cores()),
        "--blocking-threads",
        str(GRANIAN_THREADS),
        "--no-ws",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "config.wsgi:application",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=services.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        services.wait_until(
            lambda: process.poll() is None and requests.get(f"{base}/healthz", timeout=2).status_code == 200,
            "granian",
            seconds=60,
            log=log_path,
        )
        yield base, process.pid
    finally:
        services.stop_process_group(process)


def measure(
    contenders: list[Contender], paths: dict[str, list[str]], *, seconds: int, rounds: int, workdir: Path
) -> list[str]:
    accepts = {
        "Frame": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        "Rendered JPEG": "image/jpeg",
    }
    lines = [
        "| Request | connections | server | requests/s | p50 | p99 | server CPU per request | errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios = []
    for kind, kind_paths in paths.items():
        for connections in CONNECTIONS:
            runs: dict[str, list[tuple[LoadFigures, float]]] = {c.name: [] for c in contenders}
            for number in range(rounds):
                # Each round the other server goes first: neither always meets a warmer machine.
                for contender in contenders if number % 2 == 0 else contenders[::-1]:
                    server = contender.server
                    full = [f"{server.dicomweb_path}{path}" for path in kind_paths]
                    run_wrk(server, full, accepts[kind], connections=connections, seconds=2, workdir=workdir)
                    before = contender.cpu_seconds()
                    figures = run_wrk(
                        server, full, accepts[kind], connections=connections, seconds=seconds, workdir=workdir
                    )
                    cpu_ms = (contender.cpu_seconds() - before) * 1000 / max(figures.requests, 1)
                    runs[contender.name].append((figures, cpu_ms))
            medians = {}
            for name, results in runs.items():
                rate = statistics.median(f.requests_per_second for f, _ in results)
                p50 = statistics.median(f.p50_ms for f, _ in results)
                p99 = statistics.median(f.p99_ms for f, _ in results)
                cpu = statistics.median(c for _, c in results)
                errors = sum(f.errors for f, _ in results)
                medians[name] = (rate, p99)
                lines.append(
                    f"| {kind} | {connections} | {name} | {rate:,.0f} | {p50:.1f} ms | {p99:.1f} ms "
                    f"| {cpu:.2f} ms | {errors} |"
                )
            (rate_g, p99_g), (rate_u, p99_u) = medians["granian"], medians["gunicorn"]
            ratios.append(f"| {kind} | {connections} | {rate_g / rate_u:.2f}x | {p99_u / p99_g:.2f}x |")
    return [
        *lines,
        "",
        "| Request | connections | granian's throughput / gunicorn's | gunicorn's p99 / granian's |",
        "| --- | ---: | ---: | ---: |",
        *ratios,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="each wrk run (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server takes per row (default 3)")
    arguments = parser.parse_args()
    wrk_version = ensure_wrk()
    study = make_dataset([[100]])[0]
    series = study.series[0]
    relative = {
        "Frame": [f"/studies/{study.uid}/series/{series.uid}/instances/{sop}/frames/1" for sop, _ in series.instances],
        "Rendered JPEG": [
            f"/studies/{study.uid}/series/{series.uid}/instances/{sop}/rendered" for sop, _ in series.instances
        ],
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacs-app-servers-")))
        database = stack.enter_context(services.postgres(durable=True))
        pacs = stack.enter_context(services.serve_pacs(workdir, database.url))
        summary = json.loads(pacs.manage("seed_demo", "--json", "--orders", "1").strip().splitlines()[-1])
        order = summary["radiology_orders"][0]
        signed_in = requests.post(
            f"{pacs.base}/api/v1/auth/token/",
            json={"username": summary["users"]["radtech"], "password": summary["password"]},
            timeout=30,
        )
        signed_in.raise_for_status()
        dicomweb = f"{pacs.base}/api/v1/radiology/dicomweb"
        technician = Server(
            PACS,
            pacs.base,
            dicomweb,
            {"Authorization": f"Token {signed_in.json()['token']}"},
            "*",
            lambda _: f"{dicomweb}/studies?radiology_order_id={order}",
            pacs.pids,
        )
        for index, parts in batches_of([study]):
            store_batch(technician, index, parts)
        viewer = viewer_of(technician, summary, study)
        gunicorn_pid = next(pid for pid in pacs.pids() if "pacs-api" in services._cmdline(pid))
        granian_base, granian_pid = stack.enter_context(granian(pacs.env, workdir))
        contenders = [
            Contender("gunicorn", viewer, gunicorn_pid),
            Contender(
                "granian",
                Server(
                    "granian",
                    granian_base,
                    granian_base + "/api/v1/radiology/dicomweb",
                    viewer.headers,
                    "*",
                    technician.stow_url,
                    lambda: [],
                ),
                granian_pid,
            ),
        ]
        table = measure(contenders, relative, seconds=arguments.seconds, rounds=arguments.rounds, workdir=workdir)
        rss = {c.name: services.total_rss_mib(services.process_tree(c.root_pid)) for c in contenders}
    print(f"# gunicorn (config/gunicorn_serve.py) against granian, the same PACS-lite ({wrk_version})\n")
    print(
        f"{usable_cores()} workers each; gunicorn gthread x {GRANIAN_THREADS} threads, "
        f"granian {GRANIAN_THREADS} blocking threads."
    )
    print(f"Viewer token (Authorization: Bearer), {arguments.rounds} rounds of {arguments.seconds} s, medians.\n")
    print("\n".join(table))
    print(
        f"\nRSS after the runs: gunicorn (arbiter and workers) {rss['gunicorn']:.0f} MiB, "
        f"granian {rss['granian']:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
