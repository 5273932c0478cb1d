"""`mlcloud --help` cold start vs `python -c pass` and `bentoml --help`, median of N runs.

Run: python tests/benchmarks/cli_startup.py [N]. Prints medians and ratios measured in the same
run (machines here are noisy: compare ratios, not absolute numbers across runs).
"""

from __future__ import annotations

import compileall
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def script(name: str) -> str | None:
    """The console script beside this interpreter (not a pyenv shim, which costs ~100 ms)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    mlcloud = script("mlcloud") or sys.exit("mlcloud is not installed (pip install -e .)")
    candidates = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "mlcloud --help": [mlcloud, "--help"],
    }
    bentoml = script("bentoml")
    if bentoml:
        candidates["bentoml --help"] = [bentoml, "--help"]
    # pip writes bytecode at install time; an editable checkout under PYTHONDONTWRITEBYTECODE=1
    # (set in some sandboxes) would otherwise recompile cli.py on every run (~12 ms).
    import click

    for package in (Path(__file__).resolve().parents[2] / "mlcloud", Path(click.__file__).parent):
        compileall.compile_dir(str(package), quiet=1)
    for argv in candidates.values():  # warm the page cache once
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    results = {name: median_seconds(argv, runs) for name, argv in candidates.items()}
    base = results["python -c pass"]
    print(f"median of {runs} runs")
    for name, seconds in results.items():
        print(f"  {name:<16} {seconds * 1000:7.1f} ms   {seconds / base:5.2f}x python")
    added = results["mlcloud --help"] - base
    print(f"  mlcloud --help adds {added * 1000:.1f} ms over bare python (target total <= 150 ms)")


if __name__ == "__main__":
    main()
