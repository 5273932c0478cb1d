"""The scheduler runs inside ``mlcloud server`` (issue 12, item 3): with two workers, one fires
the triggers while the other stands by; nothing fires twice."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlcloud import pipelines as pl
from mlcloud.store import Store
from mlcloud.store import pipelines as db
from tests.pipelines.conftest import write
from tests.server.serverproc import start_server


def test_a_server_fires_scheduled_pipelines(project: Path) -> None:
    home = Path(os.environ["MLCLOUD_HOME"])
    data = {"name": "served", "steps": [{"name": "ok", "condition": "1 > 0"}],
            "triggers": [{"schedule": "* * * * * */2"}]}  # fmt: skip
    pl.schedule(write(project, data))
    server = start_server(home, "--workers", "2")
    try:
        store = Store.open()
        deadline = time.monotonic() + 30
        while len([f for f in db.firings(store, "served") if f.run_id]) < 2:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.2)
    finally:
        assert server.stop() == 0
    fired = db.firings(store, "served")
    keys = [f.fkey for f in fired]
    assert len(keys) == len(set(keys))
    started = [f.run_id for f in fired if f.state == "started"]
    assert len(started) == len(set(started))  # one run per started firing: no worker doubled it
    store.close()
