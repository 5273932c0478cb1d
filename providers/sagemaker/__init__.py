"""Amazon SageMaker provider (boto3). Importing this package loads neither boto3 nor botocore."""

from providers.sagemaker.provider import SageMakerProvider

__all__ = ["SageMakerProvider"]
