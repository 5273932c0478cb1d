"""Golden plans: the CreateTrainingJob each example turns into, checked in and diffed.

Regenerate after an intended change with ``MLCLOUD_UPDATE_GOLDEN=1 pytest <this file>``.
The random mlcloud job id becomes ``<id>``, and the code archive's sha256 (with the native
name's hash, which covers it) becomes ``<code-sha256>`` / ``<name>-<hash>``: the archive carries
the shared launcher, whose edits are not SageMaker changes. Everything else is deterministic,
so a diff here is a real change in the request sent to AWS.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from mlcloud.specs import load_job
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.job_plan import JobContext

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests" / "golden" / "sagemaker"


@pytest.mark.parametrize("example", ["iris", "ddp"])
def test_golden_plan(provider: SageMakerProvider, example: str) -> None:
    plan = provider.plan_job(load_job(REPO / "examples" / example / "job.yaml"))
    ctx = plan.context_as(JobContext)
    native = ctx.native_name
    text = (
        plan.to_json()
        .replace(plan.id, "<id>")
        .replace(ctx.archive.sha256, "<code-sha256>")
        .replace(native, native.rsplit("-", 1)[0] + "-<hash>")
    )
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
