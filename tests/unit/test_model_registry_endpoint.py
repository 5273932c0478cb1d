"""An endpoint following ``iris@champion`` on the local provider (real ``bentoml serve`` behind
the real front): moving the alias redeploys it, and ``rollback`` under a 4-client load puts all
traffic back on the previous version with zero failed requests (issue 11, items 3 and 4)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlcloud import api, modeldir
from mlcloud.errors import Conflict
from providers.local import endpoint_procs
from providers.local.clients import HttpClient

pytestmark = pytest.mark.timeout(400)

ROW = [5.1, 3.5, 1.4, 0.2]  # iris setosa: the real model says 0, the dummy always 2
BODY = json.dumps({"instances": [ROW]}).encode()


@dataclass
class Load:
    """``clients`` threads posting predictions to ``url`` until stopped (bounded in time):
    each answer as (time sent, time answered, prediction); each failure kept."""

    url: str
    clients: int = 4
    answers: list[tuple[float, float, object]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self) -> None:
        http, deadline = HttpClient().request, time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                status, raw = http("POST", self.url + "/predict", BODY, timeout=30)
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            if status != 200:
                self.failures.append(f"{status}: {raw[:200]!r}")
                continue
            self.answers.append((sent, time.monotonic(), json.loads(raw)["predictions"][0]))

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._client) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def switched_at(self, old_answer: object) -> float | None:
        """When the last answer other than ``old_answer`` came (None: none did)."""
        others = [done for _, done, pred in self.answers if pred != old_answer]
        return max(others) if others else None


@pytest.fixture
def home(_isolated_mlcloud: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MLCLOUD_DEPLOY_TIMEOUT", "120")
    monkeypatch.delenv("MLCLOUD_API_TOKEN", raising=False)
    yield _isolated_mlcloud
    endpoint_procs.stop([], endpoint_procs.home_tag(_isolated_mlcloud))


def make_models(root: Path) -> tuple[Path, Path]:
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    real = modeldir.save(LogisticRegression(max_iter=500).fit(x, y), "sklearn", root / "lr")
    dummy = DummyClassifier(strategy="constant", constant=2).fit(x, y)
    return real, modeldir.save(dummy, "sklearn", root / "dummy")


def _predict(url: str) -> object:
    status, raw = HttpClient().request("POST", url + "/predict", BODY, timeout=30)
    assert status == 200, raw
    return json.loads(raw)["predictions"][0]


def test_following_endpoint_moves_with_the_alias_and_rolls_back_under_load(
    home: Path, tmp_path: Path
) -> None:
    real, dummy = make_models(tmp_path)
    api.register_model(str(real), "iris", alias="champion")
    ep = api.deploy("iris@champion", "iris", follow_alias=True)
    try:
        url = ep.record.url
        assert url and _predict(url) == 0
        assert ep.record.details["registry_ref"] == "iris:1"
        assert ep.record.details["registry_alias"] == "iris@champion"

        api.register_model(str(dummy), "iris", alias="champion", reason="try the dummy")
        assert _predict(url) == 2  # the follower was redeployed to iris:2
        assert api.endpoint("iris").record.details["registry_ref"] == "iris:2"

        with Load(url) as load:
            time.sleep(2.0)  # traffic on iris:2 first
            started = time.monotonic()
            move = api.rollback_model("iris", reason="dummy is worse")
            returned = time.monotonic()
            time.sleep(2.0)
        assert load.failures == []
        assert (move.from_version, move.to_version) == (2, 1)
        after = [pred for sent, _, pred in load.answers if sent > returned]
        assert after and set(after) == {0}  # all traffic on the previous version
        assert {pred for sent, _, pred in load.answers if sent < started} == {2}
        switched = load.switched_at(0)
        assert switched is not None and switched <= returned

        history = api.alias_history("iris")
        assert [(m.from_version, m.to_version) for m in history] == [
            (None, 1), (1, 2), (2, 2), (2, 1), (1, 1),
        ]  # fmt: skip
        assert "redeployed to iris:2" in (history[2].reason or "")
        assert "redeployed to iris:1" in (history[4].reason or "")
        (serving,) = api.model("iris:1")["lineage"]["endpoints"]
        assert serving == {**serving, "name": "iris", "provider": "local",
                           "follows": "iris@champion"}  # fmt: skip
        assert api.model("iris:2")["lineage"]["endpoints"] == []
        with pytest.raises(Conflict, match="endpoint iris"):
            api.delete_model_version("iris", 1)
        api.delete_model_version("iris", 2)  # no alias, no endpoint: allowed
    finally:
        ep.undeploy()
