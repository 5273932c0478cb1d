"""Every built-in provider has the one shape of DESIGN.md, and importing it loads no SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlcloud import registry

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (
    "__init__.py",
    "provider.py",
    "settings.py",
    "job_plan.py",
    "jobs.py",
    "errors.py",
    "clients.py",
)
ENDPOINT_FILES = ("endpoint_plan.py", "endpoints.py")
SDKS = ("boto3", "botocore", "google.cloud.aiplatform_v1", "google.cloud.storage", "azure.ai.ml",
        "azure.identity", "bentoml", "torch", "ray")  # fmt: skip
BUILTIN = sorted(registry.BUILTIN)


@pytest.mark.parametrize("type_", BUILTIN)
def test_provider_has_the_template_files(type_: str) -> None:
    package = ROOT / "providers" / type_
    missing = [f for f in TEMPLATE + ENDPOINT_FILES if not (package / f).is_file()]
    assert not missing, f"providers/{type_} lacks {missing} (see DESIGN.md, One shape)"
    target = registry.BUILTIN[type_].target
    assert target == f"providers.{type_}:{target.rpartition(':')[2]}"


@pytest.mark.parametrize("type_", BUILTIN)
def test_importing_a_provider_package_loads_no_sdk(type_: str) -> None:
    """The package, its provider class and its planners import without any SDK or pydantic
    model of another provider: ``mlcloud train --dry-run`` pays for none of them."""
    cls_name = registry.BUILTIN[type_].target.rpartition(":")[2]
    code = (
        "import json, sys\n"
        f"import providers.{type_} as pkg\n"
        f"getattr(pkg, {cls_name!r})\n"
        f"import providers.{type_}.job_plan, providers.{type_}.endpoint_plan\n"
        f"sdks = {SDKS!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if any(m == s or m.startswith(s + '.') for s in sdks))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("type_", BUILTIN)
def test_provider_class_fills_the_template(type_: str) -> None:
    cls = registry.provider_class(type_)
    assert cls.__module__ == f"providers.{type_}.provider"
    assert cls.settings_model is not None, "settings are validated once, by the base class"
    for public in ("plan_job", "submit_job", "job_status", "job_logs", "cancel_job", "deploy",
                   "plan_deploy", "endpoint_status", "predict", "undeploy"):  # fmt: skip
        assert public not in vars(cls), f"{type_} overrides the template method {public}"
    if type_ != "local":
        assert cls.translate_error is not None, "one SDK error mapping, in errors.py"
