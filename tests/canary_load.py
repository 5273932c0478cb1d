"""What the canary tests share: a model version that fails on purpose, and a client loop that
calls predict and counts the answers by the version that gave them (``x-mlcloud-version``)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from mlcloud import modeldir

BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
FAILING = '''class Predictor:
    """Loads fine, answers every prediction with an error (a 500)."""

    def predict(self, inputs):
        raise RuntimeError("boom: this version is broken on purpose")
'''


def failing_model(root: Path) -> Path:
    """A custom model under ``root`` that loads and then answers every prediction with a 500."""
    src = root / "failing-src"
    src.mkdir()
    (src / "failing_predictor.py").write_text(FAILING)
    return modeldir.save(src, "custom", root / "failing", predictor="failing_predictor:Predictor")


class PredictLoad:
    """A thread calling ``POST path`` on ``address()`` (``http://host:port``, read again on
    each reconnect: a restarted server) until the ``with`` block ends; answers counted by
    (x-mlcloud-version, status), connections that gave no answer in ``failures``."""

    def __init__(
        self, address: Callable[[], str], path: str, headers: dict[str, str],
        pause: float, reconnect_pause: float = 0.0,
    ) -> None:  # fmt: skip
        self.address, self.path, self.headers = address, path, headers
        self.pause, self.reconnect_pause = pause, reconnect_pause
        self.answers: Counter[tuple[str | None, int]] = Counter()
        self.failures: list[str] = []  # no HTTP answer at all
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PredictLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _connect(self) -> http.client.HTTPConnection:
        host, port = self.address().removeprefix("http://").split(":")
        return http.client.HTTPConnection(host, int(port), timeout=30)

    def _run(self) -> None:
        conn = self._connect()
        while not self.stop.is_set():
            try:
                conn.request("POST", self.path, BODY, self.headers)
                resp = conn.getresponse()
                resp.read()
                self.answers[(resp.getheader("x-mlcloud-version"), resp.status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                conn.close()
                time.sleep(self.reconnect_pause)
                conn = self._connect()
            time.sleep(self.pause)

    def by_version(self) -> dict[str | None, int]:
        out: Counter[str | None] = Counter()
        for (version, _), n in self.answers.items():
            out[version] += n
        return dict(out)
