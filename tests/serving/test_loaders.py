"""Loaders for every framework, run for real in-process; tampered artifacts are refused."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlcloud import modeldir
from mlcloud.modeldir import ModelDirError
from serving.inputs import InputError
from serving.loaders import load_model
from tests.serving.conftest import IRIS_ROW, iris_model


class NotTrusted:
    """A class skops has never heard of: it must not be instantiated from a file."""

    def __init__(self) -> None:
        self.weights = [1, 2]

    def predict(self, x: object) -> list[int]:
        return [0]


def test_sklearn_skops_predicts_and_validates(iris_dir: Path) -> None:
    predictor = load_model(iris_dir)
    assert predictor.framework == "sklearn"
    assert predictor.input_spec.shape == (-1, 4)
    assert predictor.predict([IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]) == [0, 2]
    with pytest.raises(InputError, match=r"shape \[1, 3\], expected \[-1, 4\]"):
        predictor.predict([[1.0, 2.0, 3.0]])
    with pytest.raises(InputError, match="float64 values, got strings"):
        predictor.predict([["a", "b", "c", "d"]])
    with pytest.raises(InputError, match="ragged"):
        predictor.predict([[1.0, 2.0], [1.0]])
    with pytest.raises(InputError, match="non-empty list"):
        predictor.predict([])


def test_tampered_skops_file_is_refused(tmp_path: Path) -> None:
    root = modeldir.save(iris_model(), "sklearn", tmp_path / "m")
    with (root / "model.skops").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelDirError, match=r"model\.skops does not match .*refusing"):
        load_model(root)


def test_skops_untrusted_type_is_refused(tmp_path: Path) -> None:
    import skops.io as sio

    root = tmp_path / "m"
    root.mkdir()
    sio.dump(NotTrusted(), root / "model.skops")
    modeldir.write_manifest(root, "sklearn", {"file": "model.skops", "format": "skops"})
    with pytest.raises(ModelDirError, match=r"does not trust: .*NotTrusted"):
        load_model(root)


def test_joblib_loads_only_hash_matching_bytes(tmp_path: Path) -> None:
    import joblib

    root = tmp_path / "m"
    root.mkdir()
    joblib.dump(iris_model(), root / "model.joblib")
    modeldir.write_manifest(root, "sklearn", {"file": "model.joblib", "format": "joblib"})
    trusted = modeldir.digest(root)  # a pickle runs code: it loads only when granted
    assert load_model(root, trust=trusted).predict([IRIS_ROW]) == [0]
    # Swap the pickle for another (valid) one: the sha256 no longer matches -> refused.
    joblib.dump({"evil": True}, root / "model.joblib")
    with pytest.raises(ModelDirError, match="does not match"):
        load_model(root, trust=modeldir.TRUST_ANY)


def test_entry_file_missing_from_manifest_is_refused(tmp_path: Path) -> None:
    root = modeldir.save(iris_model(), "sklearn", tmp_path / "m")
    manifest = json.loads((root / modeldir.MANIFEST).read_text())
    del manifest["files"]["model.skops"]
    (root / modeldir.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="not listed"):
        load_model(root)


def test_predict_proba_method(tmp_path: Path) -> None:
    root = modeldir.save(iris_model(), "sklearn", tmp_path / "m")
    manifest = json.loads((root / modeldir.MANIFEST).read_text())
    manifest["entry"]["method"] = "predict_proba"
    (root / modeldir.MANIFEST).write_text(json.dumps(manifest))
    (probs,) = load_model(root).predict([IRIS_ROW])
    assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-6


def test_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    root = modeldir.save(model.SerializeToString(), "onnx", tmp_path / "m")
    predictor = load_model(root)
    assert predictor.input_spec.shape == (-1, 4)  # read from the graph
    assert predictor.input_spec.dtype == "float32"
    out = predictor.predict([[1, 0, 0, 0], [0, 0, 0, 1]])
    assert out == [[0.0, 1.0, 2.0], [9.0, 10.0, 11.0]]
    with pytest.raises(InputError, match="expected"):
        predictor.predict([[1, 2]])


def test_pytorch_torchscript(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Linear(4, 2)
    root = modeldir.save(torch.jit.script(net), "pytorch", tmp_path / "m", example=[IRIS_ROW])
    predictor = load_model(root)
    expected = net(torch.tensor([IRIS_ROW])).detach().numpy().tolist()
    assert np.allclose(predictor.predict([IRIS_ROW]), expected, atol=1e-6)


def test_pytorch_state_dict_with_class_in_model_dir(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    code = tmp_path / "code"
    code.mkdir()
    (code / "tinynet.py").write_text(
        textwrap.dedent(
            """
            import torch

            class TinyNet(torch.nn.Module):
                def __init__(self, width: int = 4) -> None:
                    super().__init__()
                    self.fc = torch.nn.Linear(width, 1)

                def forward(self, x):
                    return self.fc(x)
            """
        )
    )
    import sys

    sys.path.insert(0, str(code))
    try:
        from tinynet import TinyNet  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("tinynet", None)
    net = TinyNet(width=4)
    root = tmp_path / "m"
    root.mkdir()
    (root / "tinynet.py").write_text((code / "tinynet.py").read_text())
    modeldir.save(net, "pytorch", root, module_class="tinynet:TinyNet", init_kwargs={"width": 4})
    try:
        predictor = load_model(root, trust=modeldir.digest(root))
        expected = net(torch.tensor([IRIS_ROW])).detach().numpy().tolist()
        assert np.allclose(predictor.predict([IRIS_ROW]), expected, atol=1e-6)
    finally:
        sys.modules.pop("tinynet", None)
    # The class file is verified like any artifact: edited code is never imported.
    (root / "tinynet.py").write_text("raise SystemExit('tampered')\n")
    with pytest.raises(ModelDirError, match=r"tinynet\.py does not match"):
        load_model(root, trust=modeldir.TRUST_ANY)


def test_custom_predictor(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "scorer.py").write_text(
        textwrap.dedent(
            """
            class Doubler:
                def __init__(self, model_dir):
                    self.factor = int((model_dir / "factor.txt").read_text())

                def predict(self, inputs):
                    return [[v * self.factor for v in row] for row in inputs]
            """
        )
    )
    (src / "factor.txt").write_text("2")
    root = modeldir.save(
        src, "custom", tmp_path / "m", predictor="scorer:Doubler", example=[[1.0, 2.0]]
    )
    try:
        predictor = load_model(root, trust=modeldir.digest(root))
        assert not predictor.batchable
        assert predictor.predict([[1.0, 2.0]]) == [[2.0, 4.0]]
        with pytest.raises(InputError, match="expected"):  # signature from the example
            predictor.predict([[1.0, 2.0, 3.0]])
    finally:
        import sys

        sys.modules.pop("scorer", None)


def test_manifest_cannot_name_arbitrary_callables(tmp_path: Path) -> None:
    # Even trusted, a manifest must not be able to point at e.g. os.system.
    root = modeldir.save(None, "custom", tmp_path / "m", predictor="os:system")
    with pytest.raises(ModelDirError, match="must be a file inside the model dir"):
        load_model(root, trust=modeldir.TRUST_ANY)
    (root / "evil.py").write_text("import os\nrun = os.system\n")
    modeldir.write_manifest(root, "custom", {"predictor": "evil:run"})
    with pytest.raises(ModelDirError, match="is not a class"):
        load_model(root, trust=modeldir.TRUST_ANY)


def test_code_formats_need_a_grant_and_it_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving container's grant is MLCLOUD_TRUSTED_MODEL (set by mlcloud's deploy):
    a digest pins it to one model, ``*`` trusts whatever is there, unset trusts nothing."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "echo_predictor.py").write_text(
        "class P:\n    def predict(self, rows):\n        return rows\n"
    )
    root = modeldir.save(src, "custom", tmp_path / "m", predictor="echo_predictor:P")
    monkeypatch.delenv(modeldir.TRUST_ENV, raising=False)
    with pytest.raises(ModelDirError, match="nothing says to trust it") as err:
        load_model(root)
    assert err.value.hint and "mlcloud deploy <job-id>" in err.value.hint
    try:
        for grant in (modeldir.digest(root), modeldir.TRUST_ANY):
            monkeypatch.setenv(modeldir.TRUST_ENV, grant)
            assert load_model(root).predict([[1]]) == [[1]]
        monkeypatch.setenv(modeldir.TRUST_ENV, "f" * 64)
        with pytest.raises(ModelDirError, match="is not the model mlcloud trusted"):
            load_model(root)
    finally:
        import sys

        sys.modules.pop("echo_predictor", None)


def test_not_a_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="not an mlcloud model directory"):
        load_model(tmp_path)
