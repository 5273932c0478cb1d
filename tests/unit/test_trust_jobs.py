"""A model produced by a job mlcloud ran is trusted; the same model changed afterwards is not.

Real local jobs (the real supervisor): when a job succeeds, its model's digest is recorded (after
a scikit-learn pickle is converted to skops); a deploy of that job, or of its model dir by path,
is granted the right to run the model's code only while the digest still matches.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlcloud import api, modeldir
from mlcloud.errors import ModelError
from serving.loaders import load_model

CUSTOM = textwrap.dedent(
    """
    from pathlib import Path
    from mlcloud import runtime

    src = Path("predictor-src")
    src.mkdir(exist_ok=True)
    (src / "doubler.py").write_text(
        "class Doubler:\\n    def predict(self, rows):\\n        return [2 * r[0] for r in rows]\\n"
    )
    runtime.save_model(src, "custom", predictor="doubler:Doubler")
    """
)
PICKLED = textwrap.dedent(
    """
    import joblib
    from sklearn.linear_model import LogisticRegression
    from mlcloud import modeldir, runtime

    root = runtime.model_dir()
    model = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    joblib.dump(model, root / "model.joblib")  # as a training image without skops writes it
    modeldir.write_manifest(root, "sklearn", {"file": "model.joblib", "format": "joblib"})
    """
)


def _run_job(tmp_path: Path, script: str) -> api.Job:
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(script)
    (source / "job.yaml").write_text("name: trusted\ncommand: [python, train.py]\n")
    job = api.train(source / "job.yaml")
    record = job.wait(timeout=120)
    assert record.state == "SUCCEEDED", job.provider.store.job_events(job.id)
    return job


def test_a_job_model_is_trusted_until_it_changes(tmp_path: Path) -> None:
    job = _run_job(tmp_path, CUSTOM)
    model = Path(str(job.model_dir))
    recorded = job.record.outputs["model_sha256"]
    assert recorded == modeldir.digest(model)

    plan = api.plan_deploy(job.id, "doubler")
    assert plan.spec.trust is not None and plan.spec.trust.by == "job"
    assert (plan.spec.trust.job, plan.spec.trust.digest) == (job.id, recorded)
    assert plan.spec.env[modeldir.TRUST_ENV] == recorded
    try:  # the serving side: the grant loads exactly this model
        assert load_model(model, trust=recorded).predict([[1.5]]) == [3.0]
    finally:
        import sys

        sys.modules.pop("doubler", None)

    by_path = api.plan_deploy(str(model), "doubler")  # the job's dir by path: found by digest
    assert by_path.spec.trust == plan.spec.trust and by_path.spec.source_job == job.id

    # Changed after the job finished (files and manifest rewritten consistently): not trusted.
    (model / "doubler.py").write_text("import os\nclass Doubler:\n    pass\n")
    modeldir.write_manifest(model, "custom", {"predictor": "doubler:Doubler"})
    with pytest.raises(ModelError, match=r"changed after the job finished") as err:
        api.plan_deploy(job.id, "doubler")
    assert err.value.hint and "--trust-code" in err.value.hint
    with pytest.raises(ModelError, match="is not the model mlcloud trusted"):
        load_model(model, trust=recorded)


def test_a_job_pickle_is_collected_as_skops(tmp_path: Path) -> None:
    """A joblib scikit-learn model written by a job becomes skops when the job ends: it then
    loads as data, with no grant needed."""
    job = _run_job(tmp_path, PICKLED)
    model = Path(str(job.model_dir))
    manifest = modeldir.read_manifest(model)
    assert manifest["entry"] == {"file": "model.skops", "format": "skops"}
    assert sorted(manifest["files"]) == ["model.skops"]
    assert job.record.outputs["model_converted"] == "joblib -> skops"
    assert job.record.outputs["model_sha256"] == modeldir.digest(model)
    plan = api.plan_deploy(job.id, "converted")
    assert plan.spec.trust is None
    assert load_model(model, trust="").predict([[0.0, 1.0]]) == [0]
