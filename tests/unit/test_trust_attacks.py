"""The three attacks of issue 16 on a model directory, each correctly hashed, none may run.

Whoever writes a model directory also writes its manifest, so the sha256 check alone proves
nothing about intent. Each attack below writes a marker file when its code runs; after every
refusal the marker must be absent. Refused at deploy (the core's decision) and where the model is
loaded (``serving.loaders``, in a process of its own as in a serving container).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlcloud import api, modeldir
from mlcloud.errors import ModelError
from mlcloud.store import Store
from serving.loaders import load_model
from tests.conftest import MLCLOUD, REPO


class _SystemCall:
    """Unpickling this runs ``os.system(command)``: what a hostile joblib file holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (self.command,))


def pickle_attack(root: Path, marker: Path) -> Path:
    """A joblib file that runs ``touch marker`` when loaded (joblib.load is pickle.load)."""
    root.mkdir(parents=True)
    (root / "model.joblib").write_bytes(pickle.dumps(_SystemCall(f"touch {marker}")))
    modeldir.write_manifest(root, "sklearn", {"file": "model.joblib", "format": "joblib"})
    return root


def module_class_attack(root: Path, marker: Path) -> Path:
    """``format: state_dict, class: "netmod:Net"``: importing netmod.py runs its code."""
    root.mkdir(parents=True)
    (root / "netmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Net: pass\n")
    (root / "model.pt").write_bytes(b"\x80\x04}\x94.")  # any bytes: never read
    entry = {"file": "model.pt", "format": "state_dict", "class": "netmod:Net"}
    modeldir.write_manifest(root, "pytorch", entry)
    return root


def custom_predictor_attack(root: Path, marker: Path) -> Path:
    """``framework: custom, predictor: "evilmod:P"``: importing evilmod.py runs its code."""
    root.mkdir(parents=True)
    (root / "evilmod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "class P:\n    def predict(self, rows):\n        return rows\n"
    )
    modeldir.write_manifest(root, "custom", {"predictor": "evilmod:P"})
    return root


ATTACKS = {
    "pickle": pickle_attack,
    "module-class": module_class_attack,
    "custom-predictor": custom_predictor_attack,
}


@pytest.fixture(params=sorted(ATTACKS))
def attack(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    root = ATTACKS[request.param](tmp_path / "model", marker)
    modeldir.verify(root)  # correctly hashed: the manifest alone does not stop it
    return root, marker


def test_loader_refuses_without_a_grant(attack: tuple[Path, Path]) -> None:
    root, marker = attack
    with pytest.raises(ModelError, match="runs code when loaded") as err:
        load_model(root, trust="")
    assert err.value.hint and "--trust-code" in err.value.hint
    assert not marker.exists(), "the model's code ran"


def test_serving_process_refuses_it(attack: tuple[Path, Path]) -> None:
    """As in a serving container: the loader in a process of its own, its environment without
    the grant (an empty MLCLOUD_TRUSTED_MODEL, or one set by hand to another model's digest)."""
    root, marker = attack
    code = "import sys; from serving.loaders import load_model; load_model(sys.argv[1])"
    for trust in ("", "0" * 64):
        env = {**os.environ, modeldir.TRUST_ENV: trust, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-c", code, str(root)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0 and "runs code when loaded" in done.stderr, done.stderr
        assert not marker.exists(), "the model's code ran"


def test_deploy_refuses_it_at_plan_time(attack: tuple[Path, Path]) -> None:
    root, marker = attack
    with pytest.raises(ModelError, match="no job mlcloud ran produced it") as err:
        api.plan_deploy(str(root), "attack")
    assert err.value.hint and "--trust-code" in err.value.hint
    assert not marker.exists()


def test_cli_deploy_is_one_error_and_a_hint(attack: tuple[Path, Path]) -> None:
    root, marker = attack
    out = subprocess.run(
        [*MLCLOUD, "deploy", str(root), "--name", "attack", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0].startswith("error: ") and "runs code when loaded" in lines[0]
    assert lines[1].startswith("hint: ") and "--trust-code" in lines[1]
    assert "Traceback" not in out.stderr and not marker.exists()


def test_trust_code_grants_exactly_this_model(attack: tuple[Path, Path]) -> None:
    """``--trust-code`` is recorded in the deployment and pinned to the model's digest: the
    plan carries it to the serving container, and a changed model is refused there."""
    root, marker = attack
    plan = api.plan_deploy(str(root), "attack", trust_code=True)
    digest = modeldir.digest(root)
    assert plan.spec.trust is not None and plan.spec.trust.by == "trust-code"
    assert plan.spec.trust.digest == digest
    assert plan.spec.env[modeldir.TRUST_ENV] == digest
    assert not marker.exists(), "planning a deploy never loads the model"
    # The manifest (not its files) edited to run something else: the grant no longer matches.
    manifest = json.loads((root / modeldir.MANIFEST).read_text())
    manifest["entry"]["method"] = "predict_proba"
    (root / modeldir.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="is not the model mlcloud trusted"):
        load_model(root, trust=digest)
    assert not marker.exists()


def test_the_variable_alone_grants_nothing(tmp_path: Path) -> None:
    """``--env MLCLOUD_TRUSTED_MODEL=*`` by hand is refused: only the core's decision sets it."""
    root = custom_predictor_attack(tmp_path / "model", tmp_path / "PWNED")
    with pytest.raises(Exception, match="set by mlcloud from its trust decision"):
        api.plan_deploy(
            str(root), "attack", trust_code=True, env={modeldir.TRUST_ENV: modeldir.TRUST_ANY}
        )


def test_safe_formats_need_no_grant(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    root = modeldir.save(model, "sklearn", tmp_path / "skops")
    assert modeldir.runs_code(modeldir.read_manifest(root)) is None
    plan = api.plan_deploy(str(root), "safe")
    assert plan.spec.trust is None and modeldir.TRUST_ENV not in plan.spec.env
    assert load_model(root, trust="").predict([[0.0, 1.0]]) == [0]
    assert Store.open().list_endpoints() == []


def test_a_real_local_server_refuses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the core (a provider called directly, no grant): the real ``bentoml serve`` of the
    local provider loads the model with the same loader, refuses it, and the deploy fails."""
    pytest.importorskip("bentoml")
    from mlcloud.config import Profile
    from mlcloud.errors import MlcloudError
    from mlcloud.specs import Deployment
    from providers.local import LocalProvider

    monkeypatch.setenv("MLCLOUD_DEPLOY_TIMEOUT", "90")
    marker = tmp_path / "PWNED"
    root = pickle_attack(tmp_path / "model", marker)
    store = Store.open()
    provider = LocalProvider(Profile("local", "local"), store)
    try:
        with pytest.raises(MlcloudError, match="runs code when loaded"):
            provider.deploy(provider.plan_deploy(Deployment(name="attack", model=str(root))))
    finally:
        provider.undeploy("attack")
        store.close()
    assert not marker.exists(), "the model's code ran in the server"
