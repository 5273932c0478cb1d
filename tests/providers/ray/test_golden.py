"""Golden plans: the ``submit_job`` call each example turns into, checked in and diffed, and
checked against Ray's own models (``RuntimeEnv``, ``JobSubmissionClient.submit_job``).

Regenerate after an intended change with ``MLCLOUD_UPDATE_GOLDEN=1 pytest <this file>``. The
random job id becomes ``<id>``, the packages' digests ``<code-sha256>`` / ``<elastic-sha256>``
(the code archive carries the shared launcher, whose edits are not Ray changes) and the
repository's path ``<repo>``. Everything else is deterministic.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os

import pytest
from ray.job_submission import JobSubmissionClient
from ray.runtime_env import RuntimeEnv

from mlcloud.config import Profile
from mlcloud.specs import load_job
from mlcloud.store import Store
from providers.ray import RayProvider
from providers.ray.job_plan import RayJobContext
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "ray"
PROFILE = {"address": "https://ray-head.example:8265", "token": "t", "storage": "/nfs/mlcloud"}


@pytest.mark.parametrize("example", ["iris", "ddp"])
def test_golden_plan(example: str) -> None:
    provider = RayProvider(Profile("onprem", "ray", PROFILE), Store.open())
    plan = provider.plan_job(load_job(REPO / "examples" / example / "job.yaml"))
    request = dict(plan.steps[0].request)
    RuntimeEnv(**request["runtime_env"])  # Ray's own validation of the runtime_env
    inspect.signature(JobSubmissionClient.submit_job).bind(None, **request)
    packages = plan.context_as(RayJobContext).packages
    text = plan.to_json().replace(plan.id, "<id>").replace(str(REPO), "<repo>")
    for package, name in zip(packages, ("code-sha256", "elastic-sha256"), strict=False):
        text = text.replace(package.sha256, f"<{name}>")
    text = json.dumps(json.loads(text), indent=2) + "\n"
    path = GOLDEN / f"{example}.json"
    if os.environ.get("MLCLOUD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with MLCLOUD_UPDATE_GOLDEN=1"
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), text.splitlines(True), str(path), "plan_job()"
            )
        )
        pytest.fail(
            f"plan for examples/{example} changed (MLCLOUD_UPDATE_GOLDEN=1 to accept):\n{diff}"
        )
