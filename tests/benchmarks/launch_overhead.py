"""Local job launch overhead: `mlcloud train` (detached) → first line of user code, vs running
`python train.py` directly. Median of N runs, measured in the same run.

Run: python tests/benchmarks/launch_overhead.py [N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_LINE = "import time, pathlib; pathlib.Path('t_first').write_text(repr(time.time()))\n"


def wait_file(path: Path, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return float(path.read_text())
        time.sleep(0.002)
    raise TimeoutError(path)


def script(name: str) -> str | None:
    """The console script beside this interpreter (not a pyenv shim, which costs ~100 ms)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    mlcloud = script("mlcloud") or sys.exit("mlcloud is not installed (pip install -e .)")
    work = Path(tempfile.mkdtemp(prefix="mlcloud-bench-"))
    env = {**os.environ, "MLCLOUD_HOME": str(work / "home")}
    (work / "train.py").write_text(FIRST_LINE)
    (work / "job.yaml").write_text(f"name: bench\ncommand: [{sys.executable}, train.py]\n")
    direct, via = [], []
    for _ in range(runs):
        marker = work / "t_first"
        marker.unlink(missing_ok=True)
        start = time.time()
        subprocess.run([sys.executable, "train.py"], cwd=work, check=True)
        direct.append(wait_file(marker) - start)
        marker.unlink()
        start = time.time()
        subprocess.run([mlcloud, "train"], cwd=work, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        via.append(wait_file(marker) - start)
        time.sleep(0.3)  # let the supervisor record the end
    d, v = statistics.median(direct), statistics.median(via)
    print(f"median of {runs} runs: python train.py → first line {d * 1000:.0f} ms; "
          f"mlcloud train → first line {v * 1000:.0f} ms")  # fmt: skip
    print(f"added by mlcloud: {(v - d) * 1000:.0f} ms (target <= 500 ms)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
