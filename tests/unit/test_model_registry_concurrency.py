"""Concurrent alias moves from real processes on one SQLite store (issue 11, item 6): each move
is one read-modify-write transaction, so none is lost and the history is one unbroken chain;
with compare-and-set (``expect``), exactly one of the racers wins."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

import pytest

from mlcloud import api
from mlcloud.records import ModelVersionRecord
from mlcloud.store import Store
from mlcloud.store import models as db

# once per store backend (SQLite, and PostgreSQL where its binaries are: tests/pg.py)
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("store_backend")]

PROCS, MOVES = 4, 25

# Each racer waits for the same start time, then moves champion to its own version (its index
# + 2) MOVES times.
RACER = """
import sys, time
from mlcloud import api, model_registry
from mlcloud.errors import Conflict
me, start, moves, expect = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
while time.time() < start:
    time.sleep(0.001)
won = 0
with model_registry.acting_as(f"proc-{me}"):
    for _ in range(moves):
        try:
            api.move_alias("m", "champion", me + 2, expect=int(expect) if expect else None)
            won += 1
        except Conflict:
            pass
print(won)
"""


def _race(expect: int | None, moves: int) -> list[int]:
    start = time.time() + 2.0  # every interpreter is up by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(i), str(start), str(moves), str(expect or "")],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for i in range(PROCS)
    ]
    outs = [p.communicate(timeout=90)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [int(o.strip()) for o in outs]


@pytest.fixture
def versions() -> None:
    store = Store.open()
    for i in range(PROCS + 1):
        db.add_version(store, ModelVersionRecord(name="m", version=0, uri=f"/models/{i}"))
    api.move_alias("m", "champion", 1)


def test_concurrent_moves_are_all_in_the_history_in_order(versions: None) -> None:
    assert _race(None, MOVES) == [MOVES] * PROCS
    moves = api.alias_history("m")[1:]  # after the creating move
    assert len(moves) == PROCS * MOVES  # nothing lost
    for before, after in itertools.pairwise(moves):
        assert after.seq > before.seq and after.from_version == before.to_version  # one chain
    for i in range(PROCS):
        mine = [m for m in moves if m.by == f"proc-{i}"]
        assert len(mine) == MOVES and {m.to_version for m in mine} == {i + 2}
    assert api.model("m")["aliases"]["champion"] == moves[-1].to_version


def test_compare_and_set_lets_exactly_one_racer_win(versions: None) -> None:
    won = _race(1, 1)  # all four: "move champion from 1 to mine"
    assert sorted(won) == [0, 0, 0, 1]
    (move,) = api.alias_history("m")[1:]
    assert move.from_version == 1 and move.by == f"proc-{won.index(1)}"
