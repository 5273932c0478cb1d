"""What the local provider can raise reaches the caller as an mlcloud error; a bug does not."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import psutil
import pytest

from mlcloud.config import Profile
from mlcloud.errors import (
    NotFound,
    Origin,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    Transient,
)
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.local import LocalProvider
from providers.local.errors import LocalProcessError, translate

ORIGIN = Origin("local", "here")


@pytest.mark.parametrize(
    ("exc", "cls", "code"),
    [
        (LocalProcessError("still running", code="StopFailed"), ProviderError, "StopFailed"),
        (FileNotFoundError(errno.ENOENT, "No such file", "/no/python"), NotFound, "ENOENT"),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), PermissionDenied, "EACCES"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Transient, "ECONNREFUSED"),
        (OSError(errno.EMFILE, "Too many open files"), Transient, "EMFILE"),
        (OSError(errno.ENOSPC, "No space left on device"), QuotaExceeded, "ENOSPC"),
        (OSError(errno.EIO, "I/O error"), ProviderError, "EIO"),
        (psutil.AccessDenied(pid=1), PermissionDenied, "AccessDenied"),
    ],
)
def test_what_local_raises_maps_onto_the_tree(exc: Exception, cls: type, code: str) -> None:
    mapped = translate(exc, ORIGIN)
    assert type(mapped) is cls
    assert isinstance(mapped, ProviderError)
    assert mapped.code == code and mapped.provider_type == "local" and mapped.profile == "here"


@pytest.mark.parametrize("exc", [KeyError("x"), ValueError("bug"), RuntimeError("bug")])
def test_a_bug_is_not_dressed_up_as_a_provider_error(exc: Exception) -> None:
    assert translate(exc, ORIGIN) is None


def test_a_supervisor_that_cannot_start_is_a_provider_error_and_a_failed_job(
    tmp_path: Path,
) -> None:
    provider = LocalProvider(
        Profile("local", "local", {"python": str(tmp_path / "no-such-python")}), Store.open()
    )
    (tmp_path / "main.py").write_text("pass")
    job = TrainingJob(name="t", source=str(tmp_path), command=[sys.executable, "main.py"])
    plan = provider.plan_job(job)
    with pytest.raises(NotFound, match="no-such-python") as err:
        provider.submit_job(plan)
    assert err.value.provider_type == "local"
    record = provider.store.get_job(plan.id)
    assert record.state is JobState.FAILED, "never left PENDING forever"
    assert "supervisor did not start" in (record.message or "")
