"""Experiment tracking: AtlasLab's authenticated MLflow against a stock ``mlflow server`` on the same machine.

Both servers get a fresh SQLite database and local proxied artifacts (``--serve-artifacts``); the client is
MLflow's own ``MlflowClient``, straight at the server's port as a notebook on this machine reaches it.

* stock: ``mlflow server --backend-store-uri sqlite:///... --serve-artifacts`` with every default (4 uvicorn
  workers, job runners), no authentication;
* atlaslab: a real hub (``atlaslab up``, tests/harness.py) with ``tracking.enabled``; the client sends a user's
  hub token, every call goes through the hub-token check and MLflow's permission machinery fed from hub groups.
  Start-up and memory are measured on a second instance of the same service (``python -m
  atlaslab.tracking.server``, fresh database) started beside the hub's, so both sides start from nothing.

Measured: per-call ``log_metric`` latency, ``log_batch`` throughput (1,000 metrics a call), creating runs,
``search_runs`` over a 2,000-run experiment (first page, up to 1,000 runs; the runs are inserted straight into
the database), start-up (process start to the first answered authenticated search) and resident memory at rest
(the whole process tree, 5 s after start-up). Ratios are atlaslab / stock: below 1 is better.

    sudo python benchmarks/tracking.py                 # full counts
    sudo python benchmarks/tracking.py --quick         # small counts, for a check that it works
    sudo python benchmarks/tracking.py --json out.json

Needs root (the hub creates accounts). Others' load on the machine changes absolute times: see ``load``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PASSWORD = "benchmark-workshop-password"


def rss_tree(pid: int) -> int:
    proc = psutil.Process(pid)
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def wait_answer(url: str, token: str | None, proc: subprocess.Popen, timeout: float = 180) -> float:
    """Seconds until an (authenticated) experiment search answers 200."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(f"{url}/api/2.0/mlflow/experiments/search", json={"max_results": 1}, headers=headers)
            if r.status_code == 200:
                return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def token_env(token: str | None) -> Iterator[None]:
    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    else:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_TOKEN", None)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def workload(url: str, token: str | None, db_uri: str, args: argparse.Namespace, name: str) -> dict:
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow import MlflowClient

    out: dict = {}
    with token_env(token):
        client = MlflowClient(tracking_uri=url)
        exp = client.create_experiment(f"bench-{name}-{os.getpid()}-{time.time_ns()}")
        run = client.create_run(exp).info.run_id
        for i in range(5):  # warm-up: connections, caches
            client.log_metric(run, "warm", i)
        calls = [
            timed(lambda i=i: client.log_metric(run, "loss", 1.0 / (i + 1), step=i)) for i in range(args.log_metric)
        ]
        out["log_metric_ms"] = statistics.median(calls) * 1000
        out["log_metric_mean_ms"] = statistics.fmean(calls) * 1000
        now = int(time.time() * 1000)
        batches = [
            timed(
                lambda b=b: client.log_batch(
                    run, metrics=[Metric(f"m{k}", float(k), now, b) for k in range(1000)], synchronous=True
                )
            )
            for b in range(args.batches)
        ]
        out["log_batch_metrics_per_s"] = 1000 * len(batches) / sum(batches)
        created = timed(lambda: [client.create_run(exp) for _ in range(args.runs)])
        out["create_runs_per_s"] = args.runs / created
        # search_runs over a big experiment: its runs inserted straight into the database (fast, same rows).
        big = client.create_experiment(f"bench-search-{name}-{os.getpid()}-{time.time_ns()}")
        store = SqlAlchemyStore(db_uri, "mlflow-artifacts:/")
        for i in range(args.search_runs):
            store.create_run(big, "bench", now + i, [], f"run-{i}")
        store.engine.dispose()
        client.search_runs([big], max_results=10)  # warm-up
        searches = [timed(lambda: client.search_runs([big], max_results=1000)) for _ in range(args.repeat)]
        out["search_runs_s"] = statistics.median(searches)
    return out


def stock(args: argparse.Namespace, tmp: Path) -> dict:
    port = free_port()
    db = f"sqlite:///{tmp / 'stock.sqlite'}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        db,
        "--serve-artifacts",
        "--artifacts-destination",
        str(tmp / "stock-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = open(tmp / "stock.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        out = {"start_s": wait_answer(url, None, proc)}
        time.sleep(5)
        out["rss_mib"] = rss_tree(proc.pid) / 2**20
        out["processes"] = 1 + len(psutil.Process(proc.pid).children(recursive=True))
        out.update(workload(url, None, db, args, "stock"))
    finally:
        stop(proc)
    return out


def atlaslab(args: argparse.Namespace, tmp: Path) -> dict:
    from harness import Browser, Workbench, write_site

    os.environ["ATLASLAB_BENCH_TRACKING_PASSWORD"] = PASSWORD
    site = {
        "login": [{"provider": "shared-password", "password": {"env": "ATLASLAB_BENCH_TRACKING_PASSWORD"}}],
        "tenants": {"lab": {"title": "Lab"}},
        "teams": {"bench": {"tenant": "lab", "members": ["bench"]}},
        "tracking": {"enabled": True},
        "services": {"idle_culler": False, "metrics": False},
    }
    wb = Workbench(write_site(tmp / "site", site)).start(timeout=180)
    try:
        base = f"http://127.0.0.1:{wb.site['service_ports'] + 2}/services/mlflow"
        browser = Browser(wb)
        browser.login("bench", PASSWORD)
        token = browser.token("benchmark")
        browser.close()
        out = standalone(wb, token, tmp)
        hub_db = f"sqlite:///{wb.state / 'mlflow' / 'mlflow.sqlite'}"
        wait_answer(base, token, _Alive())
        out.update(workload(base, token, hub_db, args, "atlaslab"))
    finally:
        wb.stop()
    return out


class _Alive:
    """The hub's service is the hub's to watch: never reported as exited."""

    returncode = None

    def poll(self) -> None:
        return None


def standalone(wb, token: str, tmp: Path) -> dict:
    """Start-up and memory of the same service started beside the hub's, on a fresh database."""
    port = free_port()
    directory = tmp / "standalone"
    (directory / "artifacts").mkdir(parents=True)
    env = dict(
        os.environ,
        JUPYTERHUB_API_URL=f"http://127.0.0.1:{wb.site['hub_port']}/hub/api",
        JUPYTERHUB_API_TOKEN=wb.secret("mlflow-token"),
        JUPYTERHUB_SERVICE_NAME="mlflow",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
        JUPYTERHUB_SERVICE_PREFIX="/services/mlflow/",
        JUPYTERHUB_CLIENT_ID="service-mlflow",
        MLFLOW_FLASK_SERVER_SECRET_KEY=wb.secret("mlflow-flask-secret"),
        ATLASLAB_MLFLOW_DIR=str(directory),
        ATLASLAB_MLFLOW_BACKEND=f"sqlite:///{directory / 'mlflow.sqlite'}",
        ATLASLAB_MLFLOW_ARTIFACTS=str(directory / "artifacts"),
    )
    log = open(tmp / "atlaslab-standalone.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "atlaslab.tracking.server"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=directory)
    try:
        out = {"start_s": wait_answer(f"http://127.0.0.1:{port}/services/mlflow", token, proc)}
        time.sleep(5)
        out["rss_mib"] = rss_tree(proc.pid) / 2**20
        out["processes"] = 1 + len(psutil.Process(proc.pid).children(recursive=True))
    finally:
        stop(proc)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROWS = [
    ("log_metric_ms", "log_metric, median ms per call", False),
    ("log_metric_mean_ms", "log_metric, mean ms per call", False),
    ("log_batch_metrics_per_s", "log_batch (1,000 a call), metrics/s", True),
    ("create_runs_per_s", "create_run, runs/s", True),
    ("search_runs_s", "search_runs first page, s", False),
    ("start_s", "start-up to first answer, s", False),
    ("rss_mib", "resident memory at rest, MiB", False),
    ("processes", "processes", False),
]


def report(results: dict, args: argparse.Namespace) -> None:
    print(
        f"\nload {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; counts: log_metric {args.log_metric}, "
        f"batches {args.batches}, runs {args.runs}, search over {args.search_runs}"
    )
    print(f"{'':42} {'stock':>10} {'atlaslab':>10} {'ratio':>7}")
    for key, label, higher_is_better in ROWS:
        s, a = results["stock"][key], results["atlaslab"][key]
        # ratio of times (or memory): atlaslab / stock; for throughputs, stock / atlaslab, so below 1 is better
        ratio = (s / a) if higher_is_better else (a / s)
        print(f"{label:42} {s:10.2f} {a:10.2f} {ratio:7.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-metric", type=int, default=200, help="log_metric calls timed")
    parser.add_argument("--batches", type=int, default=20, help="log_batch calls of 1,000 metrics")
    parser.add_argument("--runs", type=int, default=200, help="runs created")
    parser.add_argument("--search-runs", type=int, default=2000, help="runs in the searched experiment")
    parser.add_argument("--repeat", type=int, default=5, help="searches timed (median reported)")
    parser.add_argument("--quick", action="store_true", help="small counts: 20 calls, 2 batches, 20 runs, 200 runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.log_metric, args.batches, args.runs, args.search_runs, args.repeat = 20, 2, 20, 200, 2
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with tempfile.TemporaryDirectory(prefix="atlaslab-bench-tracking-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)
        results = {"stock": stock(args, tmp), "atlaslab": atlaslab(args, tmp)}
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps({"load": os.getloadavg(), **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
