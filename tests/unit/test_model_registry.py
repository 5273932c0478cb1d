"""The model registry on a real SQLite store: refs, versions with lineage, aliases and their
append-only history, rollback, delete, integrity and trust (issue 11, items 2, 3, 4, 6)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mlcloud import api, model_registry, modeldir
from mlcloud.errors import Conflict, MlcloudError, ModelError, NotFoundLocally, SpecError
from mlcloud.records import EndpointRecord, EndpointState, JobRecord, JobState
from mlcloud.store import Store
from mlcloud.store import models as db
from providers.common.metrics import gather_dir
from tests.conformance.endpoints import make_custom_model

# once per store backend (SQLite, and PostgreSQL where its binaries are: tests/pg.py)
pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two sklearn model dirs (different coefficients, same inputs) and input data."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("models")
    x, y = load_iris(return_X_y=True)
    data = root / "data"
    data.mkdir()
    (data / "iris.csv").write_text("\n".join(",".join(map(str, r)) for r in x[:20]))
    fit = {c: LogisticRegression(C=c, max_iter=300).fit(x, y) for c in (1.0, 0.1)}
    return {
        "v1": modeldir.save(fit[1.0], "sklearn", root / "a"),
        "v2": modeldir.save(fit[0.1], "sklearn", root / "b"),
        "data": data,
    }


def _job(store: Store, model: Path, data: Path, tmp_path: Path) -> JobRecord:
    """A succeeded job record as the local provider leaves it (outputs, spec, metrics.json)."""
    out = tmp_path / "output"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.97}))
    collected = gather_dir(str(out))  # what the local supervisor records when the job ends
    record = JobRecord(
        id=f"iris-{time.monotonic_ns() % 0xFFFFFF:06x}", name="iris", provider="local",
        type="local", state=JobState.SUCCEEDED, created_at=time.time(), updated_at=time.time(),
        outputs={"model_dir": str(model), "model_sha256": modeldir.digest(model),
                 "output_dir": str(out), **collected.outputs},
        details=collected.details,
        spec={"inputs": {"train": str(data), "extra": "s3://bucket/extra.csv"},
              "hyperparameters": {"C": 1.0}},
    )  # fmt: skip
    return store.add_job(record)


def test_refs_parse_and_bad_refs_are_spec_errors() -> None:
    assert model_registry.parse_ref("iris@champion") == model_registry.Ref("iris", alias="champion")
    assert model_registry.parse_ref("iris:3") == model_registry.Ref("iris", version=3)
    assert str(model_registry.parse_ref("iris", bare=True)) == "iris"
    for bad in ("iris:", "iris:0", "iris:x", "iris@", "iris@Champ!", "@champion", ":3", "iris"):
        with pytest.raises(SpecError) as err:
            model_registry.parse_ref(bad)
        assert err.value.hint
    assert model_registry.looks_like_ref("iris@champion") and model_registry.looks_like_ref("a:1")
    for not_ref in ("s3://b/m", "./models/m", "iris-0c9082"):
        assert not model_registry.looks_like_ref(not_ref)


def test_register_a_job_records_its_lineage(trained: dict[str, Path], tmp_path: Path) -> None:
    store = Store.open()
    job = _job(store, trained["v1"], trained["data"], tmp_path)
    with model_registry.acting_as("alice"):
        version = api.register_model(job.id, "iris", alias="champion", reason="first")
    assert (version.version, version.source_job, version.provider) == (1, job.id, "local")
    assert version.sha256 == modeldir.digest(trained["v1"]) and version.framework == "sklearn"
    assert version.created_by == "alice"
    d = version.details
    assert d["metrics"] == {"accuracy": 0.97} and d["params"] == {"C": 1.0}
    assert d["library_versions"]["scikit-learn"] and d["manifest"]
    assert d["data"]["train"]["kind"] == "dir" and len(d["data"]["train"]["digest"]) == 64
    assert d["data"]["extra"] == {"uri": "s3://bucket/extra.csv", "kind": "remote",
                                  "digest": "uri:s3://bucket/extra.csv"}  # fmt: skip
    (move,) = api.alias_history("iris")
    assert (move.from_version, move.to_version, move.by, move.reason) == (None, 1, "alice", "first")
    shown = api.model("iris@champion")
    assert shown["ref"] == "iris:1" and shown["aliases"] == ["champion"]
    assert shown["lineage"]["job"]["id"] == job.id and shown["integrity"] == []
    assert shown["lineage"]["data"] == d["data"]


def test_sources_dir_uri_and_ref(trained: dict[str, Path], tmp_path: Path) -> None:
    store = Store.open()
    job = _job(store, trained["v2"], trained["data"], tmp_path)
    by_dir = api.register_model(str(trained["v2"]), "m")
    assert by_dir.source_job == job.id  # a dir is matched to the job that made it, by digest
    by_uri = api.register_model("s3://bucket/models/m", "m")
    assert (by_uri.uri, by_uri.sha256, by_uri.source_job) == ("s3://bucket/models/m", None, None)
    copied = api.register_model("m:1", "other")
    assert copied.details["copied_from"] == "m:1" and copied.sha256 == by_dir.sha256
    with pytest.raises(NotFoundLocally) as err:
        api.register_model("no-such-job", "m")
    assert err.value.hint
    with pytest.raises(SpecError):
        api.register_model(str(trained["v2"]), "bad name")


def test_versions_are_never_reused_and_delete_is_refused_while_in_use(
    trained: dict[str, Path],
) -> None:
    for _ in range(3):
        api.register_model(str(trained["v1"]), "m")
    api.move_alias("m", "champion", 3)
    with pytest.raises(Conflict) as err:
        api.delete_model_version("m", 3)
    assert "m@champion" in str(err.value) and "models alias" in (err.value.hint or "")
    store = Store.open()
    store.put_endpoint(
        EndpointRecord(name="ep", provider="local", type="local", state=EndpointState.READY,
                       model=str(trained["v1"]), details={"registry_ref": "m:2"})
    )  # fmt: skip
    with pytest.raises(Conflict, match="endpoint ep"):
        api.delete_model_version("m", 2)
    api.delete_model_version("m", 1)
    assert api.register_model(str(trained["v1"]), "m").version == 4
    assert [v["version"] for v in api.model("m")["versions"]] == [4, 3, 2]
    with pytest.raises(NotFoundLocally):
        api.model("m:1")
    (summary,) = api.list_models()
    assert summary == {**summary, "name": "m", "versions": 3, "latest": 4,
                       "aliases": {"champion": 3}}  # fmt: skip


def test_moves_history_rollback_and_notes(trained: dict[str, Path]) -> None:
    for _ in range(3):
        api.register_model(str(trained["v1"]), "m")
    api.move_alias("m", "champion", 1)
    api.move_alias("m", "champion", 2, reason="better")
    api.move_alias("m", "champion", 3)
    api.move_alias("m", "challenger", 3)
    with pytest.raises(Conflict, match="points at 3, not 1"):
        api.move_alias("m", "champion", 2, expect=1)
    with pytest.raises(NotFoundLocally):
        api.move_alias("m", "champion", 9)
    assert api.rollback_model("m").to_version == 2  # undoes 2 → 3
    assert api.rollback_model("m", reason="still bad").to_version == 1  # then 1 → 2
    with pytest.raises(SpecError, match="no earlier version"):
        api.rollback_model("m")
    model_registry.note("m", "champion", 1, "rollout r-1 rolled back: error_rate 12% > 1%")
    moves = api.alias_history("m")
    assert [(m.alias, m.from_version, m.to_version) for m in moves] == [
        ("champion", None, 1), ("champion", 1, 2), ("champion", 2, 3), ("challenger", None, 3),
        ("champion", 3, 2), ("champion", 2, 1), ("champion", 1, 1),
    ]  # fmt: skip
    assert [m.seq for m in moves] == sorted(m.seq for m in moves)
    assert moves[4].reason == "rollback" and moves[5].reason == "still bad"
    assert api.model("m")["aliases"] == {"challenger": 3, "champion": 1}
    with pytest.raises(NotFoundLocally):
        api.rollback_model("m", "staging")
    with pytest.raises(NotFoundLocally, match="no registered model"):
        api.alias_history("nope")


def test_a_tampered_version_is_reported_and_refused_for_deploy(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    model = shutil.copytree(trained["v1"], tmp_path / "model")
    api.register_model(str(model), "t", alias="champion")
    (model / "model.skops").write_bytes(b"not the registered model")
    problems = api.model("t:1")["integrity"]
    assert problems and "does not match" in problems[0]
    for ref in ("t:1", "t@champion"):
        with pytest.raises(ModelError, match="no longer matches its registered sha256"):
            api.plan_deploy(ref, "t")
    # a manifest re-written over the change still differs from what was registered
    modeldir.write_manifest(model, "sklearn", modeldir.read_manifest(model)["entry"])
    assert "manifest changed" in api.model("t:1")["integrity"][0]
    with pytest.raises(ModelError):
        api.plan_deploy("t:1", "t")


def test_a_registered_version_is_trusted_to_run_its_code(tmp_path: Path) -> None:
    model = make_custom_model(tmp_path, "7")
    store = Store.open()
    with pytest.raises(ModelError):
        api.decide_trust(str(model), None, store, False)
    api.register_model(str(model), "custom")
    grant, _ = api.decide_trust(str(model), None, store, False)
    assert grant is not None and (grant.by, grant.digest) == ("registry", modeldir.digest(model))
    plan = api.plan_deploy("custom:1", "c")
    assert plan.spec.trust == grant
    # a remote URI registered without a digest vouches for nothing
    api.register_model("s3://b/custom", "remote")
    assert api._registry_trust("s3://b/custom", None, store) is None


def test_deploy_records_the_ref_and_follow_alias_needs_an_alias(trained: dict[str, Path]) -> None:
    api.register_model(str(trained["v1"]), "iris", alias="champion")
    with pytest.raises(SpecError, match="NAME@ALIAS"):
        api.deploy(str(trained["v1"]), "x", follow_alias=True)
    with pytest.raises(SpecError, match="fixed version"):
        api.deploy("iris:1", "x", follow_alias=True)
    plan = api.plan_deploy("iris@champion", "x")
    assert plan.spec.model == str(trained["v1"])
    assert db.followers(Store.open(), "iris") == []


def test_a_follower_that_cannot_take_the_new_version_is_noted_and_reported(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """The alias moves; the endpoint keeps serving (its callers would break on the new model's
    inputs), and the history says so. An undeployed follower is simply dropped."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    narrow = modeldir.save(LogisticRegression(max_iter=300).fit(x[:, :3], y), "sklearn",
                           tmp_path / "narrow")  # fmt: skip
    api.register_model(str(trained["v1"]), "iris", alias="champion")
    api.register_model(str(narrow), "iris")
    store = Store.open()
    for name, state in (("ep", EndpointState.READY), ("gone", EndpointState.DELETED)):
        store.put_endpoint(
            EndpointRecord(name=name, provider="local", type="local", state=state,
                           model=str(trained["v1"]), spec={"name": name, "model": "x"})
        )  # fmt: skip
        db.follow(store, name, "local", ("iris", "champion"))
    with pytest.raises(MlcloudError, match="iris@champion moved to 2, but endpoint ep") as err:
        api.move_alias("iris", "champion", 2)
    assert "callers would break" in str(err.value) and err.value.hint
    assert api.model("iris")["aliases"] == {"champion": 2}
    last = api.alias_history("iris")[-1]
    assert (last.from_version, last.to_version) == (2, 2) and "FAILED" in (last.reason or "")
    assert [f["endpoint"] for f in db.followers(store, "iris")] == ["ep"]
    # The store keeps no secret-looking env value: such a follower is refused, not given its
    # redacted placeholder (it takes the new model's inputs, so only its env stops it).
    spec = {"name": "secret", "model": "x", "env": {"API_TOKEN": "s3cret-value"}}
    store.put_endpoint(
        EndpointRecord(name="secret", provider="local", type="local", state=EndpointState.READY,
                       model=str(narrow), spec=spec)
    )  # fmt: skip
    api.move_alias("iris", "challenger", 1)
    db.follow(store, "secret", "local", ("iris", "challenger"))
    with pytest.raises(MlcloudError, match=r"endpoint secret\'s env API_TOKEN is not kept"):
        api.move_alias("iris", "challenger", 2)


def test_a_move_during_a_following_deploy_is_caught_up(trained: dict[str, Path]) -> None:
    """The alias moved after the deploy read it but before the endpoint was recorded as a
    follower: the move found no follower, so the deploy brings the endpoint to it."""
    from mlcloud import model_follow

    v1 = api.register_model(str(trained["v1"]), "iris", alias="champion")
    api.register_model(str(trained["v2"]), "iris")
    store = Store.open()
    ep = store.put_endpoint(
        EndpointRecord(name="ep", provider="local", type="local", state=EndpointState.READY)
    )
    follows = ("iris", "champion")
    calls: list[tuple[str, str]] = []
    redeploy = lambda record, version, _: calls.append((record.name, version.ref))  # noqa: E731
    model_follow.record(store, ep, v1, follows)
    assert not model_follow.catch_up(store, ep, v1, follows, redeploy)  # in step
    model_follow.record(store, ep, None, None)  # as before the deploy recorded it
    api.move_alias("iris", "champion", 2)  # the move during the deploy: no follower yet
    model_follow.record(store, ep, v1, follows)  # the deploy of v1 ends
    assert model_follow.catch_up(store, ep, v1, follows, redeploy)
    assert calls == [("ep", "iris:2")]
    assert "caught up with @champion" in (api.alias_history("iris")[-1].reason or "")
