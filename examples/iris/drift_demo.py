"""Send shifted iris traffic to an endpoint, then look at the drift.

    mlcloud train examples/iris/job.yaml --follow          # saves a baseline (reference=X_train)
    mlcloud deploy <job-id> --name iris --capture 1.0      # record every request
    python examples/iris/drift_demo.py --endpoint iris --feature sepal_width --shift 1.0
    mlcloud monitor iris --report drift.html               # flags sepal_width, and only it

The traffic is the iris data resampled with replacement (the distribution the model was
trained on), with ``--shift`` centimetres added to one feature: what a new sensor or a
changed upstream unit would do. Requests go through ``mlcloud.api`` (the same path as
``mlcloud predict``), ``--batch`` rows each.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from mlcloud import api

DATA = Path(__file__).resolve().parent / "data" / "iris.csv"


def traffic(feature: str, shift: float, rows: int, seed: int) -> list[list[float]]:
    with DATA.open(newline="") as fh:
        reader = csv.DictReader(fh)
        names = list(reader.fieldnames or [])[:4]
        data = [[float(r[k]) for k in names] for r in reader]
    if feature not in names:
        raise SystemExit(f"--feature must be one of {', '.join(names)}")
    column = names.index(feature)
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        row = list(rng.choice(data))
        row[column] = round(row[column] + shift, 2)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="iris")
    parser.add_argument("--feature", default="sepal_width")
    parser.add_argument("--shift", type=float, default=1.0, help="added to the feature (cm)")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--batch", type=int, default=10, help="rows per request")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = traffic(args.feature, args.shift, args.rows, args.seed)
    endpoint = api.endpoint(args.endpoint)
    answered = 0
    for start in range(0, len(rows), args.batch):
        answer = endpoint.predict({"instances": rows[start : start + args.batch]})
        answered += len(answer["predictions"])
    print(f"sent {answered} rows to {args.endpoint} ({args.feature} shifted by {args.shift:+})")
    print(f"now: mlcloud monitor {args.endpoint} --report drift.html")


if __name__ == "__main__":
    main()
