"""Amazon SageMaker provider (boto3). Importing this package loads neither boto3 nor botocore."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.sagemaker.provider import SageMakerProvider

__all__ = ["SageMakerProvider"]


def __getattr__(name: str) -> Any:
    # Lazy: the planners and helpers of this package are importable without the provider's
    # imports (pydantic settings, the interface).
    if name == "SageMakerProvider":
        from providers.sagemaker.provider import SageMakerProvider

        return SageMakerProvider
    raise AttributeError(name)
