"""`models rollback` on a local endpoint following ``iris@champion`` (real ``bentoml serve``
behind the real front) under a 4-client load (issue 11): per round, the time from the command to
all traffic on the previous version (the last answer from the rolled-back version), how long
the command took, and the failed requests (target 0).

    python tests/benchmarks/rollback_bench.py [--rounds 3] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rollback-bench-"))
    os.environ["MLCLOUD_HOME"] = str(home)
    os.environ.setdefault("MLCLOUD_DEPLOY_TIMEOUT", "120")

    from mlcloud import api
    from providers.local import endpoint_procs
    from tests.unit.test_model_registry_endpoint import Load, make_models

    real, dummy = make_models(home / "models")
    api.register_model(str(real), "iris", alias="champion")  # iris:1 answers 0
    api.register_model(str(dummy), "iris")  # iris:2 answers 2
    ep = api.deploy("iris@champion", "iris", follow_alias=True)
    url = ep.record.url
    assert url is not None
    switch, command, failed, total = [], [], 0, 0
    try:
        for r in range(args.rounds):
            api.move_alias("iris", "champion", 2, reason=f"bench round {r}")  # redeploys
            with Load(url, clients=args.clients) as load:
                time.sleep(1.5)
                start = time.monotonic()
                api.rollback_model("iris", reason=f"bench round {r}")
                returned = time.monotonic()
                time.sleep(1.5)
            last_new = load.switched_at(0) or start
            switch.append(max(0.0, last_new - start))
            command.append(returned - start)
            failed += len(load.failures)
            total += len(load.answers) + len(load.failures)
            print(f"round {r}: all traffic on iris:1 after {switch[-1]:.3f}s; command took "
                  f"{command[-1]:.2f}s; {len(load.answers)} answers, "
                  f"{len(load.failures)} failed", flush=True)  # fmt: skip
    finally:
        ep.undeploy()
        endpoint_procs.stop([], endpoint_procs.home_tag(home))
    print(f"{args.clients} clients, {args.rounds} rounds: median time to all traffic on the "
          f"previous version {statistics.median(switch):.3f}s, median command "
          f"{statistics.median(command):.2f}s, failed requests {failed} of {total}")  # fmt: skip


if __name__ == "__main__":
    main()
