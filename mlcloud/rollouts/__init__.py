"""Canary rollouts that decide: deploy beside the serving version, bake, promote or roll back.

``start`` deploys the new model with ``traffic: {new: canary, previous: 100 - canary}`` (the
provider's native split: the local front's weights, SageMaker variants, Vertex traffic_split,
Azure ML deployment traffic), records the rollout in the store, and hands it to a controller:
this process (``follow``) or a detached one (``python -m mlcloud.rollouts run ID``, in its own
session, so it outlives the CLI). The controller calls ``advance`` every few seconds
(``controller.py``): the canary's numbers since the step began (``stats.py``) against the gate
(``gate.py``); a violated gate rolls back at once, a bake passed steps the weight up (e.g. 10 →
50 → 100) and finally promotes. Everything it needs is in the store, so a killed controller is
simply started again (``resume``; ``mlcloud rollouts`` / ``rollouts show`` do it for a rollout
whose controller is gone) and carries on from the step it was on.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import getpass
import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mlcloud import api
from mlcloud.errors import Conflict, SpecError
from mlcloud.provider import Capability
from mlcloud.rollouts import controller, stats
from mlcloud.rollouts.gate import parse_gate
from mlcloud.rollouts.stats import use_server_metrics
from mlcloud.store import Store
from mlcloud.store import rollouts as db
from mlcloud.store.rollouts import RolloutRow

__all__ = [
    "Rollout",
    "abort",
    "advance",
    "get",
    "list_rollouts",
    "parse_gate",
    "resume",
    "resume_all",
    "run",
    "start",
    "start_adopter",
    "use_server_metrics",
]

Rollout = RolloutRow
#: requests the canary must have answered in a step before it is judged
MIN_REQUESTS = 20
#: consecutive failed checks before a controller gives up (and rolls back)
MAX_ERRORS = 30
#: seconds between the server's looks for rollouts to adopt (``start_adopter``)
ADOPT_EVERY = 2.0
STARTING_GRACE = 30.0
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?P<sep>[@:])(?P<tag>[A-Za-z0-9_.-]+)$")


def parse_id(rollout_id: str | int) -> int:
    text = str(rollout_id).removeprefix("r-")
    if not text.isdigit():
        raise SpecError(f"{rollout_id!r} is not a rollout id", hint="e.g. r-3 (mlcloud rollouts)")
    return int(text)


def plan_steps(canary: int, steps: Sequence[int] | None) -> list[int]:
    """The canary's weight at each step: ``steps`` (starting at ``canary``, rising, ending at
    100) or ``[canary, 100]``."""
    if not 1 <= canary <= 99:
        raise SpecError(f"--canary {canary}: the canary's share must be 1..99 percent")
    chosen = list(steps) if steps else [canary, 100]
    if chosen[0] != canary:
        chosen = [canary, *chosen]
    rising = all(a < b for a, b in itertools.pairwise(chosen))
    if not rising or chosen[-1] != 100 or chosen[0] < 1:
        raise SpecError(
            f"--steps {','.join(map(str, chosen))}: weights must rise from the canary's "
            "share and end at 100",
            hint="e.g. --canary 10 --steps 10,50,100",
        )
    return chosen


def start(
    model: str,
    name: str,
    provider: str | None = None,
    canary: int = 10,
    bake_s: float = 600.0,
    gate: str = "error_rate<1%,p99_ms<200",
    steps: Sequence[int] | None = None,
    follow: bool = False,
    *,
    min_requests: int = MIN_REQUESTS,
    trust_code: bool = False,
    force: bool = False,
) -> Rollout:
    """Deploy ``model`` as a canary of endpoint ``name`` and start deciding. With ``follow``
    this call runs the controller to the end; else a detached controller does. A model taking
    other inputs than the serving one is refused unless ``force`` (as ``deploy`` does)."""
    parse_gate(gate)  # a bad gate is refused before anything is deployed
    weights = plan_steps(canary, steps)
    if bake_s <= 0:
        raise SpecError(f"--bake {bake_s:g}s: the bake must last some time", hint="e.g. 10m")
    prov = api.get_provider(provider)
    prov.require(Capability.TRAFFIC_SPLIT, "canary rollouts (a traffic split)")
    stats.check_source(prov)
    stable = _stable_version(prov, name)
    row = _new_row(prov, model, name, weights, bake_s, gate, min_requests, stable)
    deployment = api.build_deployment(model, name, prov.store, trust_code=trust_code)
    if not force:
        api.check_same_inputs(name, prov.endpoint_status(name).model, deployment.model, prov)
    split = {"new": weights[0], "previous": 100 - weights[0]}
    deployment = type(deployment).model_validate({**deployment.model_dump(), "traffic": split})
    row = db.create(prov.store, row, f"deploy {model} to {name} as a {weights[0]}% canary")
    # held while the canary deploys: no controller (the server's adopter, a `rollouts show`)
    # takes this rollout for one whose deploy was interrupted
    with _controller_lock(prov.store, row.id):
        try:
            record = prov.deploy(prov.plan_deploy(deployment))
        except BaseException as exc:
            db.transition(
                prov.store, row.id, ("starting", 0), "fail", f"the canary deploy failed: {exc}",
                {}, state="failed", message=str(exc)[:500],
            )  # fmt: skip
            raise
        row = controller.began_baking(prov.store, prov, row, str(record.details["newest"]))
    if follow:
        return run(row.id, store=prov.store)
    return spawn(prov.store, row)


def _stable_version(prov: Any, name: str) -> str:
    record = prov.endpoint_status(name)
    traffic = record.details.get("traffic") or {}
    if len(traffic) != 1:
        raise Conflict(
            f"endpoint {name!r} serves {len(traffic) or 'no'} versions with a known split "
            f"({traffic or 'none recorded'}); a canary starts beside exactly one",
            hint="finish the running rollout, or deploy it once without --canary",
            provider_type=prov.type,
            profile=prov.name,
        )
    active = db.active_for(prov.store, name, prov.name)
    if active is not None:
        raise Conflict(
            f"rollout r-{active.id} is running on {name!r}",
            hint=f"wait for it or abort it: mlcloud rollouts abort r-{active.id}",
            provider_type=prov.type,
            profile=prov.name,
        )
    return str(next(iter(traffic)))


def _new_row(
    prov: Any,
    model: str,
    name: str,
    weights: list[int],
    bake_s: float,
    gate: str,
    min_requests: int,
    stable: str,
) -> RolloutRow:
    reg_name, reg_version = _registry_ref(model)
    now = time.time()
    return RolloutRow(
        id=0, endpoint=name, provider=prov.name, model=model, canary=weights[0], steps=weights,
        step=0, bake_s=float(bake_s), gate=gate, min_requests=max(1, int(min_requests)),
        state="starting", created_at=now, updated_at=now, registry_name=reg_name,
        registry_version=reg_version, stable_version=stable,
    )  # fmt: skip


def _registry_ref(model: str) -> tuple[str | None, str | None]:
    """``NAME@ALIAS`` / ``NAME:VERSION`` → (name, version number) when the registry knows it."""
    found = _REF.match(model)
    if found is None or Path(model).expanduser().exists() or "://" in model:
        return None, None
    lookup = getattr(api, "model", None)
    if lookup is None:
        return None, None
    try:
        found_version = lookup(model)
    except Exception:  # not a registry ref after all: the deploy resolves it (or says why)
        return None, None
    number = (
        found_version.get("version")
        if isinstance(found_version, dict)
        else getattr(found_version, "version", None)
    )
    return found["name"], (str(number) if number is not None else None)


# ---- the controller -------------------------------------------------------------------------
def check_every(row: RolloutRow) -> float:
    """Seconds between checks: a twentieth of the bake, within 0.2..1 s (a check is one GET of
    the front's counters and one small store write)."""
    return min(1.0, max(0.2, row.bake_s / 20))


def advance(rollout_id: str | int, store: Store | None = None) -> Rollout:
    """Take the transition the rollout is due now (idempotent)."""
    with Store.borrowed(store) as st:
        return controller.advance(st, parse_id(rollout_id))


def run(rollout_id: str | int, store: Store | None = None, timeout: float | None = None) -> Rollout:
    """Drive the rollout to a final state (or ``timeout``); one controller per rollout (a file
    lock), so a second one started by mistake returns at once."""
    rid = parse_id(rollout_id)
    with Store.borrowed(store) as st, _controller_lock(st, rid) as held:
        row = db.get(st, rid)
        if not held:
            return row
        db.update(st, rid, controller=_controller_info())
        deadline = None if timeout is None else time.monotonic() + timeout
        errors = 0
        while row.state not in db.FINAL:
            try:
                row = controller.advance(st, rid)
                errors = 0
            except Conflict:
                row = db.get(st, rid)  # abort (or another controller) moved it: look again
                continue
            except Exception as exc:  # a front restarting, a store busy: try again next tick
                errors += 1
                print(f"r-{rid}: check failed ({errors}): {exc!r}", file=sys.stderr, flush=True)
                if errors >= MAX_ERRORS:
                    return _give_up(st, rid, exc)
            if row.state in db.FINAL or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(check_every(row))
        return row


def _controller_info() -> dict[str, Any]:
    """Who runs the controller: this process, and the thread when it is one of the server's
    (``spawn`` writes the same, so whichever write lands last keeps it)."""
    info: dict[str, Any] = {"pid": os.getpid(), "since": time.time()}
    if threading.current_thread() is not threading.main_thread():
        info["thread"] = threading.current_thread().name
    return info


def _give_up(store: Store, rollout_id: int, exc: Exception) -> Rollout:
    """The controller could not check the canary ``MAX_ERRORS`` times running: roll back (the
    safe side) and say why."""
    row = db.get(store, rollout_id)
    reason = f"rollout r-{rollout_id} rolled back: its checks failed {MAX_ERRORS} times ({exc})"
    if row.state == "baking":
        with contextlib.suppress(Exception):
            return controller.decide(store, row, "rolling_back", "rollback", reason, {})
    db.update(store, rollout_id, state="failed", message=reason)
    return db.get(store, rollout_id)


def spawn(store: Store, row: RolloutRow) -> Rollout:
    """Start a detached controller for ``row`` (its own session: it outlives the caller).
    Inside the server (its metrics registered) the controller is a thread of the server
    instead: the gateway's numbers live in that process."""
    if stats.server_metrics_in_use():
        # in the caller's context: a promotion's registry move is the starting token's
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(run, row.id), name=f"rollout-r-{row.id}"
        )
        thread.daemon = True
        thread.start()
        db.update(store, row.id, controller={**_controller_info(), "thread": thread.name})
        return db.get(store, row.id)
    if stats.handed_to_server():  # the server's adopter picks it up within ADOPT_EVERY
        db.update(store, row.id, controller={"by": "server", "since": time.time()})
        return db.get(store, row.id)
    log = _dir(store) / f"r-{row.id}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlcloud.rollouts", "run", str(row.id)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    db.update(store, row.id, controller={"pid": proc.pid, "since": time.time(), "log": str(log)})
    return db.get(store, row.id)


def running(store: Store, rollout_id: int) -> bool:
    """Whether a controller holds the rollout's lock now."""
    with _controller_lock(store, rollout_id) as held:
        return not held


def resume(rollout_id: str | int, store: Store | None = None) -> Rollout:
    """Start a controller for an unfinished rollout whose controller is gone."""
    rid = parse_id(rollout_id)
    with Store.borrowed(store) as st:
        row = db.get(st, rid)
        if row.state in db.FINAL or running(st, rid):
            return row
        return spawn(st, row)


def resume_all(store: Store | None = None) -> list[Rollout]:
    """Resume every unfinished rollout (the server does this when it starts, and its adopter
    every ``ADOPT_EVERY`` s). One created in the last ``STARTING_GRACE`` s is left to its
    starter, which locks it only once the row exists."""
    recent = time.time() - STARTING_GRACE
    with Store.borrowed(store) as st:
        return [
            resume(r.id, st)
            for r in db.unfinished(st)
            if not (r.state == "starting" and r.created_at > recent)
        ]


def start_adopter(interval: float = ADOPT_EVERY) -> tuple[threading.Thread, threading.Event]:
    """The server's thread that runs every unfinished rollout without a live controller: one a
    pipeline runner started (handed to the server), or one whose controller died. Set the
    event to stop it."""
    stop = threading.Event()

    def adopt() -> None:
        while not stop.wait(interval):
            try:
                resume_all()
            except Exception as exc:  # a store hiccup: the next tick tries again
                print(f"rollouts not adopted: {exc!r}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=adopt, name="mlcloud-rollout-adopter", daemon=True)
    thread.start()
    return thread, stop


def get(rollout_id: str | int, store: Store | None = None, *, heal: bool = True) -> Rollout:
    """The rollout with its decisions; ``heal``: restart its controller if it died."""
    with Store.borrowed(store) as st:
        return resume(rollout_id, st) if heal else db.get(st, parse_id(rollout_id))


def list_rollouts(endpoint: str | None = None, store: Store | None = None) -> list[Rollout]:
    with Store.borrowed(store) as st:
        return db.list_rollouts(st, endpoint)


def abort(rollout_id: str | int, store: Store | None = None, who: str | None = None) -> Rollout:
    """Roll the canary back now; the stable version keeps serving throughout. ``who``: the
    name recorded (the server's token name; default the OS user)."""
    with Store.borrowed(store) as st:
        return controller.abort(st, parse_id(rollout_id), who or getpass.getuser())


# ---- helpers --------------------------------------------------------------------------------


def _dir(store: Store) -> Path:
    path = store.home / "rollouts"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@contextlib.contextmanager
def _controller_lock(store: Store, rollout_id: int) -> Iterator[bool]:
    with open(_dir(store) / f"r-{rollout_id}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
