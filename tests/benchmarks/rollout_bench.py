"""Rollout decision latency on the local provider: from the gate being violated to rollback.

Run as a script (never collected by pytest)::

    python tests/benchmarks/rollout_bench.py [--runs 3] [--canary 10] [--gate "error_rate<5%"]

A real endpoint (iris, BentoML behind the front) gets a canary whose predictor turns bad on a
signal (a flag file: every prediction then fails, a 500). A client loop sends requests through
the front the whole time and counts answers by ``x-mlcloud-version``. The rollout runs with a
long bake and its detached controller; once the canary has been healthy for a few checks the
flag is set (T0). Printed per run and as medians:

* violation -> decision: T0 to the rollback decision's timestamp in the store;
* violation -> traffic moved: T0 to the last answer the client got from the canary;
* violation -> rollback complete: T0 to the rollout's ``rolled_back`` state (canary stopped);
* the canary's failed answers the clients saw (the cost of the decision's latency).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

PREDICTOR = '''import os


class Predictor:
    """Healthy until the flag file exists; then every prediction fails."""

    def predict(self, inputs):
        if os.path.exists({flag!r}):
            raise RuntimeError("turned bad on purpose")
        return [0 for _ in inputs]
'''


def make_models(root: Path, runs: int) -> tuple[Path, list[tuple[Path, Path]]]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from mlcloud import modeldir

    x, y = load_iris(return_X_y=True)
    lr = modeldir.save(LogisticRegression(max_iter=500).fit(x, y), "sklearn", root / "lr")
    canaries = []
    for i in range(runs):
        flag = root / f"bad-{i}"
        src = root / f"src-{i}"
        src.mkdir()
        (src / f"turning_{i}.py").write_text(PREDICTOR.format(flag=str(flag)))
        model = modeldir.save(
            src, "custom", root / f"canary-{i}", predictor=f"turning_{i}:Predictor"
        )
        canaries.append((model, flag))
    return lr, canaries


def one_run(
    name: str, url: str, model: Path, flag: Path, canary: int, gate: str, min_requests: int
) -> dict[str, float]:
    from mlcloud import rollouts
    from tests.providers.local.test_canary import Load

    with Load(url) as load:
        row = rollouts.start(
            str(model), name, canary=canary, bake_s=600, gate=gate, min_requests=min_requests,
            trust_code=True, force=True,
        )  # fmt: skip
        canary_version = row.canary_version
        time.sleep(3.0)  # healthy for a few checks
        healthy = dict(load.answers)
        flag.touch()
        t0 = time.time()
        last_canary = t0
        seen = sum(n for (v, _), n in load.answers.items() if v == canary_version)
        while True:
            now_seen = sum(n for (v, _), n in load.answers.items() if v == canary_version)
            if now_seen != seen:
                seen, last_canary = now_seen, time.time()
            row = rollouts.get(row.id, heal=False)
            if row.state in ("rolled_back", "promoted", "failed", "aborted"):
                break
            if time.time() - t0 > 120:
                raise SystemExit(f"no decision after 120 s: {row.state} {row.last_check}")
            time.sleep(0.01)
        done = time.time()
    assert row.state == "rolled_back", row.decisions
    decision = next(d for d in row.decisions if d["action"] == "rollback")
    failed = sum(n for (v, s), n in load.answers.items() if v == canary_version and s >= 500)
    bad_before = sum(n for (v, s), n in healthy.items() if v == canary_version and s >= 500)
    return {
        "decision_s": decision["at"] - t0,
        "traffic_moved_s": last_canary - t0,
        "complete_s": done - t0,
        "failed_answers": failed - bad_before,
        "other_failures": len(load.failures),
        "stable_errors": sum(
            n for (v, s), n in load.answers.items() if v != canary_version and s != 200
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--canary", type=int, default=10)
    parser.add_argument("--gate", default="error_rate<5%")
    parser.add_argument("--min-requests", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlcloud-rollout-bench-") as tmp:
        root = Path(tmp)
        os.environ["MLCLOUD_HOME"] = str(root / "home")
        os.environ["XDG_CONFIG_HOME"] = str(root / "xdg")
        os.environ.setdefault("MLCLOUD_DEPLOY_TIMEOUT", "180")
        from mlcloud.config import Profile
        from mlcloud.specs import Deployment
        from mlcloud.store import Store
        from providers.local import endpoint_procs
        from providers.local.provider import LocalProvider

        store = Store.open(root / "home")
        provider = LocalProvider(Profile("local", "local"), store)
        lr, canaries = make_models(root, args.runs)
        results = []
        try:
            record = provider.deploy(provider.plan_deploy(Deployment(name="bench", model=str(lr))))
            assert record.url
            for model, flag in canaries:
                r = one_run("bench", record.url, model, flag, args.canary, args.gate,
                            args.min_requests)  # fmt: skip
                results.append(r)
                print("run: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
        finally:
            provider.undeploy("bench")
            endpoint_procs.stop([], endpoint_procs.home_tag(root / "home"))
            store.close()
    print(f"\nrollout decision latency, local provider, canary {args.canary}%, gate {args.gate}, "
          f"min {args.min_requests} requests ({len(results)} runs, medians):")  # fmt: skip
    for key in ("decision_s", "traffic_moved_s", "complete_s", "failed_answers"):
        print(f"  {key:<16} {statistics.median(r[key] for r in results):.3f}")
    print(f"  stable version errors: {sum(r['stable_errors'] for r in results)}; "
          f"requests with no answer: {sum(r['other_failures'] for r in results)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
