"""Profile resolution: flag > MLCLOUD_PROVIDER > project file > user file > built-in local."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlcloud import api, registry
from mlcloud.config import IMPLIED, STARTER, load_config, profile_settings, user_config_path
from mlcloud.errors import ConfigError


def write_config(path: Path, default: str, **profiles: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"default": default, "profiles": profiles}))
    return path


def test_no_file_means_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    profile = load_config().resolve()
    assert (profile.name, profile.type) == ("local", "local")


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(
        user_config_path(), "u", u={"type": "local"}, shared={"type": "local", "nodes_here": 1}
    )
    project = tmp_path / "proj"
    write_config(project / "mlcloud.yaml", "p", p={"type": "local"}, shared={"type": "sagemaker"})
    sub = project / "deep" / "er"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # found in a parent directory
    config = load_config()
    assert config.resolve().name == "p"  # project default beats user default
    assert config.profiles["shared"].type == "sagemaker"  # project profile wins by name
    assert config.profiles["u"].type == "local"  # user profiles still visible
    monkeypatch.setenv("MLCLOUD_PROVIDER", "u")
    assert config.resolve().name == "u"  # env beats the files
    assert config.resolve("shared").name == "shared"  # the flag beats env
    assert config.resolve("vertex").type == "vertex"  # a bare provider type works


def test_user_default_when_no_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(user_config_path(), "mine", mine={"type": "local"})
    monkeypatch.chdir(tmp_path)
    assert load_config().resolve().name == "mine"


def test_mlcloud_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "elsewhere.yaml", "x", x={"type": "local"})
    monkeypatch.setenv("MLCLOUD_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    assert load_config().resolve().name == "x"
    monkeypatch.setenv("MLCLOUD_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="MLCLOUD_CONFIG"):
        load_config()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("profiles: {a: {region: x}}", "needs a 'type'"),
        ("colour: blue", "unknown keys"),
        ("profiles: [a, b]", "mapping"),
        ("default: [x]", "'default'"),
        ("profiles: {a: {type: local}", "not valid YAML"),
    ],
)
def test_bad_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, fragment: str):
    (tmp_path / "mlcloud.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=fragment):
        load_config()


def test_unknown_profile_type_is_rejected_when_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # config only reads the file (it knows no provider types); the registry checks every
    # profile's type when a provider is resolved, naming the file and the known types.
    (tmp_path / "mlcloud.yaml").write_text("profiles: {a: {type: openstack}, b: {type: local}}")
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.profiles["a"].type == "openstack"
    for resolve in (
        lambda: registry.resolve_profile(config, "b"),  # any profile: the file is wrong
        lambda: api.resolve_profile("a"),
        lambda: api.get_provider(),
    ):
        with pytest.raises(ConfigError, match="unknown type 'openstack'") as err:
            resolve()
        assert str(tmp_path / "mlcloud.yaml") in err.value.message
        assert "sagemaker" in (err.value.hint or "") and "local" in (err.value.hint or "")


def test_unknown_profile_lists_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path / "mlcloud.yaml", "a", a={"type": "local"})
    monkeypatch.chdir(tmp_path)
    implied = load_config().resolve("nope")  # a bare name: a provider type, checked later
    assert (implied.name, implied.type, implied.source) == ("nope", "nope", IMPLIED)
    for resolve in (lambda: registry.resolve_profile(load_config(), "nope"),
                    lambda: api.get_provider("nope")):  # fmt: skip
        with pytest.raises(ConfigError, match="unknown provider or profile 'nope'") as err:
            resolve()
        assert "a" in (err.value.hint or "") and "sagemaker" in (err.value.hint or "")
    assert registry.resolve_profile(load_config(), "vertex").type == "vertex"


def test_starter_file_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mlcloud.yaml").write_text(STARTER)
    monkeypatch.chdir(tmp_path)
    assert load_config().resolve().type == "local"


def test_profile_settings_errors_name_profile(tmp_path: Path) -> None:
    from mlcloud.config import Profile
    from providers.local.settings import LocalSettings

    with pytest.raises(ConfigError, match=r"profile 'lab'.*cancel_grace"):
        profile_settings(LocalSettings, Profile("lab", "local", {"cancel_grace": -1}))
