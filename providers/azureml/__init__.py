"""Azure ML: command jobs and managed online endpoints through azure-ai-ml's ``MLClient``.

Nothing heavy is imported here: the provider class lives in ``provider.py`` and azure-ai-ml
(~1.7 s) is imported inside the functions that need it, so ``mlcloud --help`` and the other
providers never pay for it.

* jobs: ``job_plan.py`` builds the command job and prints its REST body; ``jobs.py`` stages
  the job's source, the stdlib launcher and the vendored runtime into one directory given to the
  command job as ``code`` (Azure ML uploads it as a content-hashed code asset). Azure ML has no
  retry setting for command jobs, so mlcloud re-submits a failed attempt itself, up to
  ``max_restarts``: a status refresh records that a re-submission is due, ``advance_job``
  submits it.
* endpoints: ``endpoint_plan.py`` / ``endpoints.py``: a model asset version, a
  ManagedOnlineEndpoint and one ManagedOnlineDeployment per model version; an update is
  blue/green.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.azureml.provider import AzureMLProvider

__all__ = ["AzureMLProvider"]


def __getattr__(name: str) -> Any:
    if name == "AzureMLProvider":
        from providers.azureml.provider import AzureMLProvider

        return AzureMLProvider
    raise AttributeError(name)
