"""Provider registry: built-ins, entry-point plugins (a real installed dist), install hints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlcloud import registry
from mlcloud.config import Profile
from mlcloud.errors import ProviderUnavailable
from mlcloud.store import Store
from tests.conftest import MLCLOUD, REPO

PLUGIN_SRC = Path(__file__).parent / "plugin_src" / "mlcloud_testplugin"


def install_plugin(site: Path, entries: dict[str, str], dist: str = "mlcloud_testplugin") -> Path:
    """Lay out an installed distribution (package + .dist-info with entry_points.txt)."""
    shutil.copytree(PLUGIN_SRC, site / "mlcloud_testplugin", dirs_exist_ok=True)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[mlcloud.providers]\n{lines}\n")
    return site


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = install_plugin(
        tmp_path / "site",
        {
            "echo": "mlcloud_testplugin:EchoProvider",
            "local": "mlcloud_testplugin:EchoProvider",  # clashes with a built-in
            "broken": "mlcloud_testplugin_missing:Nope",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    yield site
    registry.refresh()


def test_builtins_present() -> None:
    assert {"local", "sagemaker", "vertex", "azureml"} <= registry.known_types()
    assert registry.entries()["local"].target == "providers.local:LocalProvider"
    assert registry.is_installed(registry.entries()["local"])


def test_entry_point_plugin_is_discovered_and_works(plugin_site: Path, tmp_path: Path) -> None:
    assert "echo" in registry.known_types()
    assert registry.entries()["echo"].origin == "mlcloud_testplugin"
    provider = registry.get_provider(Profile("echo", "echo"), Store.open())
    from mlcloud.specs import TrainingJob

    record = provider.submit_job(provider.plan_job(TrainingJob(name="e", command=["hi", "x"])))
    assert list(provider.job_logs(record.id)) == ["hi x"]


def test_clash_with_builtin_is_reported_not_applied(plugin_site: Path) -> None:
    assert registry.entries()["local"].target == "providers.local:LocalProvider"
    assert any("'local'" in c for c in registry.clashes())


def test_broken_plugin_is_provider_unavailable(plugin_site: Path) -> None:
    with pytest.raises(ProviderUnavailable):
        registry.provider_class("broken")


def test_missing_extra_gives_pip_line() -> None:
    entry = registry.ProviderEntry(
        "fake", "json:JSONDecoder", ("no_such_sdk_xyz",), "pip install 'mlcloud[x]'"
    )
    assert not registry.is_installed(entry)
    err = ProviderUnavailable("fake", entry.install, "No module named 'no_such_sdk_xyz'")
    assert "pip install 'mlcloud[x]'" in (err.hint or "")


def test_cli_sees_plugin(plugin_site: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{plugin_site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    out = subprocess.run(
        [*MLCLOUD, "providers", "--output", "json"], env=env, cwd=tmp_path,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    echo = next(p for p in data["providers"] if p["type"] == "echo")
    assert echo["installed"] and echo["origin"] == "mlcloud_testplugin"
    assert any("'local'" in w for w in data["warnings"])
    (tmp_path / "job.yaml").write_text("name: e\ncommand: [say, hello]\n")
    plan = subprocess.run(
        [*MLCLOUD, "train", "--provider", "echo", "--dry-run", "--output", "json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(plan.stdout)["steps"] == [
        {"call": "echo.Run", "request": {"command": ["say", "hello"]}}
    ]


def test_provider_with_missing_sdk_is_unavailable_with_pip_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simulate an environment without boto3: the entry's required module cannot be found.
    entry = registry.BUILTIN["sagemaker"]
    missing = registry.ProviderEntry(entry.type, entry.target, ("no_such_sdk_xyz",), entry.install)
    monkeypatch.setitem(registry.BUILTIN, "sagemaker", missing)
    with pytest.raises(ProviderUnavailable) as err:
        registry.provider_class("sagemaker")
    assert err.value.hint == "install it with: pip install 'mlcloud[aws]'"


# ---- a user's own `providers` / `serving` package must not stand in for mlcloud's ------------
SHADOW = """\
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("the shadowing package's code ran")
"""


def shadowing_dir(root: Path, package: str) -> Path:
    """A project directory holding the user's own ``package`` (as in a notebook's cwd)."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(SHADOW)
    return root


def test_shadowing_providers_package_is_refused_before_it_runs(tmp_path: Path) -> None:
    project = shadowing_dir(tmp_path / "project", "providers")
    code = (
        "from mlcloud import registry\n"
        "from mlcloud.errors import ShadowedPackage\n"
        "try:\n"
        "    registry.provider_class('local')\n"
        "except ShadowedPackage as e:\n"
        "    print(e.message); print(e.hint)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(project)}  # first on sys.path
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    message, hint = out.stdout.splitlines()
    assert message.startswith(f"the import name 'providers' is taken by {project / 'providers'}")
    assert str(REPO / "providers") in message and "rename your 'providers'" in hint
    assert not (project / "providers" / "IMPORTED").exists()  # only looked at, never imported


def test_cli_reports_a_shadowing_package(tmp_path: Path) -> None:
    project = shadowing_dir(tmp_path, "providers")  # the notebook/project dir is the cwd
    job = str(REPO / "examples/iris/job.yaml")
    out = subprocess.run([*MLCLOUD, "train", job, "--dry-run"], cwd=project,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"error: the import name 'providers' is taken by {project}")
    assert "hint: rename your 'providers' package" in out.stderr and "Traceback" not in out.stderr
    listed = subprocess.run([*MLCLOUD, "providers", "-o", "json"], cwd=project,
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    data = json.loads(listed.stdout)
    assert any(f"{project / 'providers'} shadows" in w for w in data["warnings"])
    assert not next(p for p in data["providers"] if p["type"] == "local")["installed"]
    assert not (project / "providers" / "IMPORTED").exists()


def test_shadowing_serving_package_is_refused(tmp_path: Path) -> None:
    project = shadowing_dir(tmp_path, "serving")
    model = tmp_path / "model"
    model.mkdir()
    out = subprocess.run([*MLCLOUD, "image", "build", str(model)], cwd=project,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"error: the import name 'serving' is taken by {project}")
    assert not (project / "serving" / "IMPORTED").exists()


def test_own_packages_are_not_shadowed() -> None:
    assert registry.shadowing("providers") is None and registry.shadowing("serving") is None
    registry.check_not_shadowed("providers.local")  # no error
    registry.check_not_shadowed("mlcloud_testplugin")  # not one of ours: not checked


def test_serving_target_names_the_serve_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    target = registry.ServingTarget("serving.image:build_image", ("no_such_sdk_xyz",))
    with pytest.raises(ProviderUnavailable, match="no_such_sdk_xyz is not installed") as err:
        registry.serving_target(target)
    assert err.value.hint == "install it with: pip install 'mlcloud[serve]'"
    assert callable(registry.serving_target(registry.BUILD_IMAGE))
