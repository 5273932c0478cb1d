"""Local endpoint benchmark: cold start and failed requests during an update under load.

Run as a script (it starts real servers on 127.0.0.1 and stops them all before it exits)::

    python tests/benchmarks/deploy_bench.py [--runs 3] [--threads 4] [--updates 2] [--json out.json]

1. Cold start, median of ``--runs``, interleaved so both see the same machine load:
   ``mlcloud deploy MODEL --name N`` (the real CLI, which returns once the endpoint is ready)
   versus plain ``bentoml serve serving.service:MlcloudService`` until ``/readyz`` answers 200.
2. Updates under load: ``--threads`` keep-alive clients call ``/predict`` on the endpoint's stable
   address for the whole of each ``mlcloud deploy`` that swaps the model; every non-200 answer
   or connection error counts as failed (target 0).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROW = [5.1, 3.5, 1.4, 0.2]
BODY = json.dumps({"instances": [ROW]})
MAX_LOAD_S = 90.0  # one update's load window never runs longer than this
MAX_REQUESTS = 200_000


def make_models(root: Path) -> tuple[Path, Path]:
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from mlcloud import modeldir

    x, y = load_iris(return_X_y=True)
    lr = LogisticRegression(max_iter=500).fit(x, y)
    dummy = DummyClassifier(strategy="constant", constant=2).fit(x, y)
    return (
        modeldir.save(lr, "sklearn", root / "iris-lr"),
        modeldir.save(dummy, "sklearn", root / "iris-const"),
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def plain_bentoml_cold_start(model: Path, log: Path, timeout: float = 180) -> float:
    port = _free_port()
    env = {**os.environ, "MLCLOUD_SERVE_MODEL": str(model), "BENTOML_DO_NOT_TRACK": "True"}
    argv = [sys.executable, "-m", "bentoml", "serve", "serving.service:MlcloudService"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    start = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while not _ready(port):
            if proc.poll() is not None or time.perf_counter() - start > timeout:
                raise RuntimeError(f"bentoml serve did not become ready; see {log}")
            time.sleep(0.05)
        return time.perf_counter() - start
    finally:
        proc.terminate()  # the arbiter stops its workers on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def mlcloud(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        ["mlcloud", *args, "--provider", "local", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"mlcloud {' '.join(args)} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout) if out.stdout.strip() else {}


def mlcloud_cold_start(model: Path, name: str) -> float:
    start = time.perf_counter()
    record = mlcloud("deploy", str(model), "--name", name)
    took = time.perf_counter() - start
    assert record["state"] == "READY", record
    subprocess.run(["mlcloud", "undeploy", name, "--provider", "local"], check=True, timeout=120)
    return took


class Load:
    """``threads`` keep-alive clients posting to ``/predict`` until stopped (bounded)."""

    def __init__(self, port: int, threads: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: list[str] = []
        self.latencies: list[float] = []
        self.answers: set[Any] = set()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        deadline = time.monotonic() + MAX_LOAD_S
        headers = {"Content-Type": "application/json"}
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.lock:
                if self.ok + len(self.failed) >= MAX_REQUESTS:
                    return
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", BODY, headers)
                resp = conn.getresponse()
                body = resp.read()
                elapsed = time.perf_counter() - t0
                with self.lock:
                    if resp.status == 200:
                        self.ok += 1
                        self.latencies.append(elapsed)
                        self.answers.add(json.loads(body)["predictions"][0])
                    else:
                        self.failed.append(f"{resp.status}: {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failed.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=40)


def update_under_load(
    models: tuple[Path, Path], threads: int, updates: int
) -> list[dict[str, Any]]:
    name = "bench-update"
    record = mlcloud("deploy", str(models[0]), "--name", name)
    port = int(record["url"].rsplit(":", 1)[1])
    results = []
    try:
        for i in range(updates):
            target = models[(i + 1) % 2]
            with Load(port, threads) as load:
                time.sleep(1.0)  # steady load before the swap
                start = time.perf_counter()
                mlcloud("deploy", str(target), "--name", name)
                took = time.perf_counter() - start
                time.sleep(1.0)
            lat = sorted(load.latencies)
            results.append(
                {
                    "update_s": round(took, 2),
                    "requests": load.ok + len(load.failed),
                    "failed": len(load.failed),
                    "failed_examples": load.failed[:3],
                    "models_seen": sorted(load.answers),
                    "p50_ms": round(1000 * lat[len(lat) // 2], 2) if lat else None,
                    "p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 2) if lat else None,
                }
            )
    finally:
        subprocess.run(["mlcloud", "undeploy", name, "--provider", "local"], check=False)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlcloud-deploy-bench-") as tmp:
        root = Path(tmp)
        os.environ["MLCLOUD_HOME"] = str(root / "home")
        os.environ.pop("MLCLOUD_API_TOKEN", None)
        models = make_models(root)
        plain, ours = [], []
        for i in range(args.runs):
            plain.append(plain_bentoml_cold_start(models[0], root / f"plain-{i}.log"))
            ours.append(mlcloud_cold_start(models[0], f"bench-cold-{i}"))
            print(f"run {i + 1}: bentoml serve {plain[-1]:.2f}s, mlcloud deploy {ours[-1]:.2f}s")
        updates = update_under_load(models, args.threads, args.updates)

    result = {
        "cold_start_bentoml_serve_s": [round(v, 2) for v in plain],
        "cold_start_mlcloud_deploy_s": [round(v, 2) for v in ours],
        "median_bentoml_serve_s": round(statistics.median(plain), 2),
        "median_mlcloud_deploy_s": round(statistics.median(ours), 2),
        "updates_under_load": updates,
        "threads": args.threads,
        "cpus": os.cpu_count(),
    }
    print("\n| measure | value |\n|---|---|")
    print(
        f"| cold start, plain `bentoml serve` → ready (median of {args.runs}) "
        f"| {result['median_bentoml_serve_s']} s |"
    )
    print(
        f"| cold start, `mlcloud deploy` → ready (median of {args.runs}) "
        f"| {result['median_mlcloud_deploy_s']} s |"
    )
    for i, u in enumerate(updates, 1):
        print(
            f"| update {i} under load ({args.threads} clients): requests / failed "
            f"| {u['requests']} / {u['failed']} (update took {u['update_s']} s, "
            f"p99 {u['p99_ms']} ms, models seen {u['models_seen']}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
