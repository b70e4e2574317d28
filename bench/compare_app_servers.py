"""The same PACS-lite behind two WSGI servers: granian, which `make run` ships, and gunicorn (issue 19).

Run from the repository root (as root: it runs PostgreSQL as the postgres user, may apt-get
install wrk):  make bench-app-servers
(= .venv/bin/python bench/compare_app_servers.py; --seconds and --rounds to change the runs).

Why: a frame asked with OHIF's viewer token cost ~0.9 ms of a worker's CPU when the WSGI
application was called in-process, but ~1.5 ms under wrk against gunicorn, which served PACS-lite
until issue 19: its gthread worker parses HTTP in Python and hands every connection between its
poller thread and its request threads, all under the GIL. granian (Rust, hyper) parses HTTP and
moves bytes outside the GIL. This keeps the measurement that made the switch, and measures the
price of nginx, in front of the app servers on both ports under `make run`.

What it does, all on 127.0.0.1 and in a temporary directory:
1. PostgreSQL 15 with its defaults (fsync on) and PACS-lite exactly as `make run` serves it
   (scripts/serve.sh: supervisord, one granian app server per usable core with config/app_server.py,
   one worker and 4 blocking threads each; nginx on both ports, config/front_proxy.py);
2. one series of 100 CT_small instances stored through STOW-RS, and the study's viewer token as
   the demo doctor gets it from the viewer-url endpoint (bench/compare_orthanc.py's viewer_of);
3. gunicorn on another port, in the same environment (scripts/serve_env.sh, the same database,
   secret key and var directory) with the settings it served with (bench/gunicorn_peer.py:
   gthread, as many workers, 4 threads each), the same WSGI application (config.wsgi);
4. frames and rendered JPEGs of that series with 1, 8 and 32 keep-alive connections (wrk), asked
   of the API's port and of the viewer's port (each nginx, then granian: the second is what OHIF
   asks) and of gunicorn (no nginx), taking turns `--rounds` times: requests/s, p50, p99, and the
   CPU of each server's processes per request (/proc; nginx counted with granian), medians over the rounds.

gunicorn is pinned in requirements-dev.txt for this script only.
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
GRANIAN = "nginx + granian (API's port)"
VIEWER_PORT = "nginx + granian (viewer's port)"
GUNICORN = "gunicorn"


@dataclass
class Contender:
    name: str
    server: Server
    root_pids: list[int]

    def cpu_seconds(self) -> float:
        return sum(services.tree_cpu_ticks(pid) for pid in self.root_pids) / 100


@contextlib.contextmanager
def gunicorn(env: dict[str, str], workdir: Path) -> Iterator[tuple[str, int]]:
    """gunicorn serving config.wsgi in the environment scripts/serve.sh gave the app server; (origin, pid)."""
    port = services.free_port()
    log_path = workdir / "gunicorn.log"
    command = [
        "sh",
        "scripts/serve_env.sh",
        str(services.VENV_BIN / "gunicorn"),
        "-c",
        "bench/gunicorn_peer.py",
        "config.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=services.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        services.wait_until(
            lambda: process.poll() is None and requests.get(f"{base}/healthz", timeout=2).status_code == 200,
            "gunicorn",
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
            rate_u, p99_u = medians[GUNICORN]
            for name in (GRANIAN, VIEWER_PORT):
                rate, p99 = medians[name]
                ratios.append(f"| {kind} | {connections} | {name} | {rate / rate_u:.2f}x | {p99_u / p99:.2f}x |")
    return [
        *lines,
        "",
        "| Request | connections | server | throughput / gunicorn's | gunicorn's p99 / its |",
        "| --- | ---: | --- | ---: | ---: |",
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
        granian_pids = [pid for pid in pacs.pids() if services._cmdline(pid).strip() == "pacs-api"]
        nginx_pid = next(pid for pid in pacs.pids() if services._cmdline(pid).startswith("nginx: master"))
        gunicorn_base, gunicorn_pid = stack.enter_context(gunicorn(pacs.env, workdir))
        viewer_base = f"http://127.0.0.1:{pacs.env['VIEWER_PORT']}"

        def elsewhere(name: str, base: str) -> Server:
            return Server(
                name, base, base + "/api/v1/radiology/dicomweb", viewer.headers, "*", technician.stow_url, lambda: []
            )

        contenders = [
            Contender(GRANIAN, viewer, [nginx_pid, *granian_pids]),
            Contender(VIEWER_PORT, elsewhere(VIEWER_PORT, viewer_base), [nginx_pid, *granian_pids]),
            Contender(GUNICORN, elsewhere(GUNICORN, gunicorn_base), [gunicorn_pid]),
        ]
        table = measure(contenders, relative, seconds=arguments.seconds, rounds=arguments.rounds, workdir=workdir)
        rss = {
            "granian": services.total_rss_mib([p for pid in granian_pids for p in services.process_tree(pid)]),
            "nginx": services.total_rss_mib(services.process_tree(nginx_pid)),
            "gunicorn": services.total_rss_mib(services.process_tree(gunicorn_pid)),
        }
    print(
        "# granian (config/app_server.py) against gunicorn (bench/gunicorn_peer.py), "
        f"the same PACS-lite ({wrk_version})\n"
    )
    print(f"{usable_cores()} workers each; granian 4 blocking threads, gunicorn gthread x 4 threads.")
    print(f"Viewer token (Authorization: Bearer), {arguments.rounds} rounds of {arguments.seconds} s, medians.\n")
    print("\n".join(table))
    print(
        f"\nRSS after the runs: granian ({len(granian_pids)} app servers, main process and worker each) "
        f"{rss['granian']:.0f} MiB, "
        f"nginx {rss['nginx']:.0f} MiB, gunicorn (arbiter and workers) {rss['gunicorn']:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
