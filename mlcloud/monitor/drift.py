"""Drift of a captured window against a model's training baseline, per feature and for the
prediction distribution.

The statistic depends on the column's kind and the sample sizes, as Evidently chooses, with
one change stated here: **when the smaller of the two samples (baseline sample, current window)
has at most 1,000 values**, a test decides: two-sample Kolmogorov-Smirnov for numeric columns,
chi-squared (homogeneity, 2xk) for categorical ones; the p-values of all features are corrected
for testing many at once (Benjamini-Hochberg by default, or Bonferroni) and a feature drifts
when its adjusted p-value is under alpha (0.05). **Otherwise** a distance decides, since with
large samples a test flags differences too small to matter: the Wasserstein distance normed by
the baseline's standard deviation (numeric) or the Jensen-Shannon distance (categorical),
drifting at >= 0.1.
Evidently switches on the reference's size alone; a distance's sampling noise comes from the
smaller sample, so a 50-request window against a 10,000-row baseline is tested, not measured.
A numeric column with at most 5 distinct training values counts as categorical. PSI (10 bins at
the baseline's deciles, or the categories) is reported for every column, and can decide instead
(``methods={"f": "psi"}``, threshold 0.2). Thresholds are per feature (``thresholds``).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcloud.errors import SpecError
from mlcloud.modelprofile import OTHER, category_key
from mlcloud.monitor import stats
from mlcloud.monitor.profile import Baseline

if TYPE_CHECKING:
    from mlcloud.monitor.capture import CaptureWindow

SMALL_SAMPLE = 1000
TESTS = ("ks", "chi2")  # methods that give p-values (corrected across features)
NUMERIC_METHODS = ("ks", "wasserstein", "psi")
CATEGORICAL_METHODS = ("chi2", "jensenshannon", "psi")
DEFAULT_THRESHOLDS = {"ks": 0.05, "chi2": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1,
                      "psi": 0.2}  # fmt: skip
CORRECTIONS = ("bh", "bonferroni", "none")
HIST_BINS = 30
TOP_CATEGORIES = 20
VOLUME_BINS = 48


@dataclass
class DriftConfig:
    """``thresholds`` / ``methods``: per feature name (``*``: every feature); ``alpha``: the
    tests' default level; ``correction``: bh, bonferroni or none."""

    alpha: float = 0.05
    thresholds: dict[str, float] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    correction: str = "bh"

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise SpecError(f"correction must be one of {', '.join(CORRECTIONS)}")
        for name, method in self.methods.items():
            if method not in DEFAULT_THRESHOLDS:
                raise SpecError(f"drift method for {name!r} must be one of "
                                f"{', '.join(DEFAULT_THRESHOLDS)}, got {method!r}")  # fmt: skip

    def method(self, name: str) -> str | None:
        return self.methods.get(name, self.methods.get("*"))

    def threshold(self, name: str, method: str) -> float:
        value = self.thresholds.get(name, self.thresholds.get("*"))
        if value is not None:
            return float(value)
        return self.alpha if method in TESTS else DEFAULT_THRESHOLDS[method]


@dataclass
class FeatureDrift:
    name: str
    kind: str  # numeric | categorical
    method: str
    statistic: float
    threshold: float
    psi: float
    n_reference: int
    n_current: int
    missing_reference: float  # rates
    missing_current: float
    chart: dict[str, Any]
    p_value: float | None = None
    p_adjusted: float | None = None
    drifted: bool = False


@dataclass
class DriftResult:
    baseline: str
    since: float
    until: float
    rows: int
    dropped: int
    alpha: float
    correction: str
    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    volume: dict[str, Any]
    quality: dict[str, Any] | None = None
    endpoint: str | None = None
    version: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["drifted"] = self.drifted
        clean: dict[str, Any] = _finite(data)
        return clean

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> DriftResult:
        """The result again from its fields as ``dataclasses.asdict`` gave them (NaN kept: what
        a team server sends), not from :meth:`to_dict` (NaN there is None)."""
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        kept["features"] = [FeatureDrift(**f) for f in data["features"]]
        prediction = data.get("prediction")
        kept["prediction"] = None if prediction is None else FeatureDrift(**prediction)
        return cls(**kept)


def _finite(value: Any) -> Any:
    """NaN/inf → None: the JSON output stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def compare(
    baseline: Baseline,
    window: CaptureWindow,
    *,
    since: float,
    until: float,
    config: DriftConfig | None = None,
) -> DriftResult:
    """Drift of ``window`` (rows captured in ``[since, until)``) against ``baseline``."""
    config = config or DriftConfig()
    index, notes = _match(baseline, window)
    features = list(index)
    workers = max(1, min(4, os.cpu_count() or 1, len(features)))
    with ThreadPoolExecutor(workers) as pool:  # numpy's sorts release the GIL
        results = list(pool.map(
            lambda n: _column(n, baseline.feature(n), baseline.column(n),
                              window.features[:, index[n]], config),
            features,
        ))  # fmt: skip
    _decide(results, config)
    prediction = _prediction(baseline, window, config)
    if prediction is not None:
        _decide([prediction], DriftConfig(alpha=config.alpha, correction="none"))
    return DriftResult(
        baseline=baseline.source, since=since, until=until, rows=len(window),
        dropped=int(window.dropped), alpha=config.alpha, correction=config.correction,
        features=results, prediction=prediction, volume=volume(window.timestamps, since, until),
        quality=quality(window, since, until, bool(prediction and prediction.kind == "numeric")),
        notes=notes,
    )  # fmt: skip


def _match(baseline: Baseline, window: CaptureWindow) -> tuple[dict[str, int], list[str]]:
    """Baseline feature → window column: by name, else by position when the widths agree."""
    names, got = baseline.feature_names, list(window.feature_names)
    width = window.features.shape[1] if window.features.ndim == 2 else 0
    if set(names) <= set(got):
        return {n: got.index(n) for n in names}, []
    if width == len(names):
        return {n: i for i, n in enumerate(names)}, [
            f"captured columns {got[:5]} matched to the baseline's {names[:5]} by position"
        ]
    shared = [n for n in names if n in got]
    if not shared:
        raise SpecError(
            f"the captured requests have {width} feature(s) {got[:5]}, the baseline "
            f"{len(names)} {names[:5]}: nothing to compare",
            hint="send requests shaped like the training features, or pick --baseline",
        )
    missing = [n for n in names if n not in got]
    return {n: got.index(n) for n in shared}, [f"not in the captured requests: {missing}"]


def _column(name: str, entry: dict[str, Any], ref_sample: np.ndarray | None,
            current: np.ndarray, config: DriftConfig) -> FeatureDrift:  # fmt: skip
    if entry["kind"] == "numeric" and ref_sample is not None:
        return _numeric(name, entry, np.sort(ref_sample), current, config)
    return _categorical(name, entry, current, config)


def _as_float(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float64:
        return values  # a strided column: the NaN filter below makes the one copy
    if values.dtype.kind in "iufb":
        return np.ascontiguousarray(values, dtype=np.float64)
    out = np.full(values.shape[0], np.nan)
    for i, v in enumerate(values.tolist()):  # a string where a number belongs is missing
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _numeric(name: str, entry: dict[str, Any], ref: np.ndarray, current: np.ndarray,
             config: DriftConfig) -> FeatureDrift:  # fmt: skip
    values = _as_float(current)
    cur = values[~np.isnan(values)]
    cur.sort()
    method = config.method(name) or (
        "ks" if min(ref.size, cur.size) <= SMALL_SAMPLE else "wasserstein"
    )
    if method not in NUMERIC_METHODS:
        raise SpecError(
            f"{name} is numeric: its method must be one of {', '.join(NUMERIC_METHODS)}"
        )
    edges = stats.psi_edges(ref)
    psi = stats.psi(stats.bin_counts(ref, edges), stats.bin_counts(cur, edges))
    p_value = None
    if cur.size == 0 or ref.size == 0:
        statistic = float("nan")
    elif method == "ks":
        statistic, p_value = stats.ks(ref, cur)
    elif method == "wasserstein":
        statistic = stats.wasserstein_normed(ref, cur)
    else:
        statistic = psi
    return FeatureDrift(
        name=name, kind="numeric", method=method, statistic=statistic,
        threshold=config.threshold(name, method), psi=psi, n_reference=int(ref.size),
        n_current=int(cur.size), missing_reference=float(entry.get("missing_rate", 0.0)),
        missing_current=1 - cur.size / values.size if values.size else 0.0,
        chart=_histogram(ref, cur), p_value=p_value,
    )  # fmt: skip


def _histogram(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    """Both sorted samples over the same equal-width bins, as fractions of each side. The range
    is the baseline's and the current's 0.1-99.9 % (a few wild values do not squash the chart);
    the tails are counted in the end bins."""
    tail = int(cur.size * 0.001)
    ends = [a[i] for a in (ref, cur[tail : cur.size - tail]) if a.size for i in (0, -1)]
    lo, hi = (min(ends), max(ends)) if ends else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, HIST_BINS + 1)

    def fractions(a: np.ndarray) -> list[float]:
        counts = stats.bin_counts(a, edges[1:-1])
        return [float(c) / max(a.size, 1) for c in counts]

    return {"type": "hist", "edges": edges.tolist(), "reference": fractions(ref),
            "current": fractions(cur)}  # fmt: skip


def category_counts(values: np.ndarray) -> tuple[Counter[str], int]:
    """(count per category key, missing count) of a column, grouping before keying."""
    if values.dtype.kind in "iufb":
        floats = np.ascontiguousarray(values, dtype=np.float64)
        present = floats[~np.isnan(floats)]
        uniques, counts = np.unique(present, return_counts=True)
        raw: Mapping[Any, int] = dict(zip(uniques.tolist(), counts.tolist(), strict=True))
    else:
        raw = Counter(values.tolist())
    out: Counter[str] = Counter()
    missing = 0
    for value, count in raw.items():
        key = category_key(value)
        if key is None:
            missing += int(count)
        else:
            out[key] += int(count)
    if values.dtype.kind in "iufb":
        missing = int(values.shape[0]) - sum(out.values())
    return out, missing


def _categorical(name: str, entry: dict[str, Any], current: np.ndarray,
                 config: DriftConfig) -> FeatureDrift:  # fmt: skip
    ref_counts: dict[str, int] = dict(entry.get("categories") or {})
    cur_counts, missing = category_counts(current)
    if OTHER in ref_counts:  # values folded into "other" at training time are other now too
        folded = Counter({k: c for k, c in cur_counts.items() if k in ref_counts})
        folded[OTHER] += sum(c for k, c in cur_counts.items() if k not in ref_counts)
        cur_counts = folded
    keys = list(ref_counts) + [k for k in cur_counts if k not in ref_counts]
    ref = np.array([ref_counts.get(k, 0) for k in keys], dtype=np.float64)
    cur = np.array([cur_counts.get(k, 0) for k in keys], dtype=np.float64)
    n_ref, n_cur = int(ref.sum()), int(cur.sum())
    method = config.method(name) or ("chi2" if min(n_ref, n_cur) <= SMALL_SAMPLE
                                     else "jensenshannon")  # fmt: skip
    if method not in CATEGORICAL_METHODS:
        raise SpecError(
            f"{name} is categorical: its method must be one of {', '.join(CATEGORICAL_METHODS)}"
        )
    psi = stats.psi(ref, cur)
    p_value = None
    if n_cur == 0:
        statistic = float("nan")
    elif method == "chi2":
        statistic, p_value = stats.chi2(ref, cur)
    elif method == "jensenshannon":
        statistic = stats.jensen_shannon(ref, cur)
    else:
        statistic = psi
    total = n_cur + missing
    return FeatureDrift(
        name=name, kind="categorical", method=method, statistic=statistic,
        threshold=config.threshold(name, method), psi=psi, n_reference=n_ref, n_current=n_cur,
        missing_reference=float(entry.get("missing_rate", 0.0)),
        missing_current=missing / total if total else 0.0,
        chart=_bars(keys, ref, cur), p_value=p_value,
    )  # fmt: skip


def _bars(keys: list[str], ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    r, c = ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)
    top = np.argsort(-(r + c), kind="stable")[:TOP_CATEGORIES]
    return {"type": "bars", "labels": [keys[i] for i in top],
            "reference": r[top].tolist(), "current": c[top].tolist()}  # fmt: skip


def _decide(results: list[FeatureDrift], config: DriftConfig) -> None:
    """Set ``drifted``: tests by corrected p-value, distances by threshold."""
    tested = [r for r in results if r.p_value is not None]
    pvalues = [float(r.p_value or 0.0) for r in tested]
    if config.correction == "bh":
        adjusted = stats.benjamini_hochberg(pvalues).tolist()
    elif config.correction == "bonferroni":
        adjusted = [min(1.0, p * len(pvalues)) for p in pvalues]
    else:
        adjusted = pvalues
    for r, p in zip(tested, adjusted, strict=True):
        r.p_adjusted = float(p)
        r.drifted = bool(p < r.threshold)
    for r in results:
        if r.p_value is None:
            r.drifted = bool(math.isfinite(r.statistic) and r.statistic >= r.threshold)


def _prediction(baseline: Baseline, window: CaptureWindow,
                config: DriftConfig) -> FeatureDrift | None:  # fmt: skip
    found = baseline.prediction()
    predictions = np.asarray(window.predictions)
    if found is None or predictions.size == 0:
        return None
    column, entry = found
    if predictions.ndim == 2 and predictions.shape[1] > 1:
        predictions = predictions.argmax(axis=1)  # class scores → the predicted class
    predictions = predictions.reshape(-1)
    result = _column("prediction", entry, baseline.column(column), predictions, config)
    return result


def volume(timestamps: np.ndarray, since: float, until: float) -> dict[str, Any]:
    """Captured rows per time bin over the window."""
    end = max(until, since + 1.0)
    # bins as a count and a range: numpy's linear-time path for equal bins
    counts, edges = np.histogram(
        np.asarray(timestamps, dtype=np.float64), VOLUME_BINS, (since, end)
    )
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def quality(window: CaptureWindow, since: float, until: float,
            numeric: bool) -> dict[str, Any] | None:  # fmt: skip
    """Accuracy (a classifier) or mean absolute error (``numeric`` predictions) per time bin,
    from the ground truth ``mlcloud feedback`` joined to the captured predictions by request
    id; None without labels."""
    labels = getattr(window, "labels", None)
    if labels is None or len(labels) != len(window):
        return None
    mask = np.array([label is not None for label in labels], dtype=bool)
    if not mask.any():
        return None
    preds, truth = np.asarray(window.predictions, dtype=object)[mask], labels[mask]
    if numeric:
        score = np.abs(preds.astype(np.float64) - truth.astype(np.float64))
    else:
        pairs = zip(preds.tolist(), truth.tolist(), strict=True)
        score = np.array([category_key(p) == category_key(t) for p, t in pairs], dtype=np.float64)
    edges = np.linspace(since, max(until, since + 1.0), VOLUME_BINS // 4 + 1)
    ts = np.asarray(window.timestamps, dtype=np.float64)[mask]
    which = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, edges.size - 2)
    sums = np.bincount(which, weights=score, minlength=edges.size - 1)
    counts = np.bincount(which, minlength=edges.size - 1)
    values = [float(s / c) if c else None for s, c in zip(sums, counts, strict=True)]
    return {"metric": "mean_abs_error" if numeric else "accuracy", "edges": edges.tolist(),
            "values": values, "labelled": int(mask.sum()),
            "overall": float(score.mean())}  # fmt: skip
