"""``python -m mlcloud.pipelines run RUN_ID``: a detached pipeline runner (started by ``spawn``)."""

from __future__ import annotations

import sys

from mlcloud.pipelines.runner import execute


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m mlcloud.pipelines run RUN_ID", file=sys.stderr)
        return 2
    state = execute(argv[1])
    print(f"run {argv[1]}: {state}", flush=True)
    return 0 if state == "SUCCEEDED" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
