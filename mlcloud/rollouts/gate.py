"""A rollout's gate: ``"error_rate<1%,p99_ms<200"``, parsed strictly, judged on a sample.

Grammar: conditions separated by commas; each ``METRIC OP VALUE`` with METRIC one of
``error_rate`` (VALUE in percent, with its ``%``), ``p50_ms`` / ``p99_ms`` (VALUE in ms, a plain
number), OP one of ``<``, ``<=``. A gate says what a healthy canary stays under; anything
else (an unknown metric, a missing ``%``, ``>``, a metric twice) is a ``SpecError`` naming the
condition, before anything is deployed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlcloud.errors import SpecError

METRICS = {"error_rate": "%", "p50_ms": "ms", "p99_ms": "ms"}
_CONDITION = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|<|>=|>|==|=)\s*([^\s]*)\s*$")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
HINT = 'e.g. --gate "error_rate<1%,p99_ms<200" (error_rate in %, p50_ms/p99_ms in ms)'


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float  # error_rate as a fraction (1% -> 0.01), latencies in ms

    def __str__(self) -> str:
        shown = f"{self.value * 100:g}%" if self.metric == "error_rate" else f"{self.value:g}"
        return f"{self.metric}{self.op}{shown}"

    def holds(self, observed: float) -> bool:
        return observed < self.value if self.op == "<" else observed <= self.value


@dataclass(frozen=True)
class Sample:
    """The canary's numbers over what is judged (the current step so far)."""

    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def value(self, metric: str) -> float | None:
        return {"error_rate": self.error_rate, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}[metric]

    def numbers(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def parse_gate(text: str) -> tuple[Condition, ...]:
    """The conditions of ``text``; ``SpecError`` for anything but the grammar above."""
    if not text or not text.strip():
        raise SpecError("the gate is empty", hint=HINT)
    conditions: list[Condition] = []
    for part in text.split(","):
        conditions.append(_condition(part, text))
    metrics = [c.metric for c in conditions]
    twice = sorted({m for m in metrics if metrics.count(m) > 1})
    if twice:
        raise SpecError(f"gate {text!r} names {', '.join(twice)} more than once", hint=HINT)
    return tuple(conditions)


def _condition(part: str, text: str) -> Condition:
    found = _CONDITION.match(part)
    if not found:
        raise SpecError(f"gate {text!r}: cannot read {part.strip()!r} as METRIC<VALUE", hint=HINT)
    metric, op, raw = found.groups()
    if metric not in METRICS:
        raise SpecError(
            f"gate {text!r}: unknown metric {metric!r}; known: {', '.join(METRICS)}", hint=HINT
        )
    if op not in ("<", "<="):
        raise SpecError(
            f"gate {text!r}: {part.strip()!r} must say what a healthy canary stays under (< or <=)",
            hint=HINT,
        )
    unit = METRICS[metric]
    if unit == "%":
        if not raw.endswith("%") or not _NUMBER.match(raw[:-1]):
            raise SpecError(
                f"gate {text!r}: {metric} needs a percentage such as 1% (got {raw!r})", hint=HINT
            )
        value = float(raw[:-1]) / 100
        if value > 1:
            raise SpecError(f"gate {text!r}: {metric} above 100% never fails", hint=HINT)
    else:
        if not _NUMBER.match(raw):
            raise SpecError(
                f"gate {text!r}: {metric} needs a number of milliseconds such as 200 (got {raw!r})",
                hint=HINT,
            )
        value = float(raw)
    return Condition(metric, op, value)


def judge(conditions: tuple[Condition, ...], sample: Sample) -> list[str]:
    """The violated conditions, each with its observed value (empty: the gate holds). A
    latency not measured (no request answered) violates nothing."""
    violated = []
    for c in conditions:
        observed = sample.value(c.metric)
        if observed is None or c.holds(observed):
            continue
        shown = f"{observed * 100:.2f}%" if c.metric == "error_rate" else f"{observed:.1f}ms"
        violated.append(f"{c.metric} {shown} (gate {c})")
    return violated
