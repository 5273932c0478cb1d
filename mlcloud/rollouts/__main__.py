"""``python -m mlcloud.rollouts run ID``: a detached rollout controller (started by ``spawn``)."""

from __future__ import annotations

import sys

from mlcloud.rollouts import run


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m mlcloud.rollouts run ROLLOUT_ID", file=sys.stderr)
        return 2
    row = run(argv[1])
    print(f"rollout r-{row.id}: {row.state}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
