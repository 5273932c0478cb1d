"""Container images: the user's image, a framework shortcut from a checked-in table, or defaults.

The training command runs through mlcloud's bootstrap (``python3`` + the shipped launcher), so
any image with python3 works; the framework table only picks an AWS-built image that already has
the framework installed. Requested versions map onto the image that AWS publishes for them;
where AWS has no image for a version the table says which one is used (visible in every plan).
"""

from __future__ import annotations

from mlcloud.errors import UnsupportedFeature

# AWS Deep Learning Containers are published from one account in the commercial regions.
DLC_ACCOUNT = "763104351884"
# SageMaker's own scikit-learn / XGBoost images live in a per-region account.
SKLEARN_ACCOUNTS = {
    "us-east-1": "683313688378",
    "us-east-2": "257758044811",
    "us-west-1": "746614075791",
    "us-west-2": "246618743249",
    "eu-west-1": "141502667606",
    "eu-west-2": "764974769150",
    "eu-central-1": "492215442770",
    "ap-northeast-1": "354813040037",
    "ap-southeast-1": "121021644041",
    "ap-southeast-2": "783357654285",
}

# requested "major.minor" -> (image framework version, python tag)
PYTORCH = {
    "1.13": ("1.13.1", "py39"),
    "2.0": ("2.0.1", "py310"),
    "2.1": ("2.1.0", "py310"),
    "2.2": ("2.2.0", "py310"),
    "2.3": ("2.3.0", "py311"),
    "2.4": ("2.4.0", "py311"),
    "2.5": ("2.5.1", "py311"),
    "2.6": ("2.6.0", "py312"),
}
# requested "major.minor" -> SageMaker image tag. 1.5 and 1.6 have no SageMaker image: the
# newest (1.4-2) is used and shows in the plan's TrainingImage.
SKLEARN = {
    "1.0": "1.0-1",
    "1.2": "1.2-1",
    "1.3": "1.2-1",
    "1.4": "1.4-2",
    "1.5": "1.4-2",
    "1.6": "1.4-2",
}
XGBOOST = {"1.5": "1.5-1", "1.7": "1.7-1", "2.0": "1.7-1"}


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def framework_image(name: str, version: str, region: str, gpu: bool, where: str) -> str:
    """The AWS image for ``framework: {name, version}`` in ``region``."""
    mm = _major_minor(version)
    if name == "pytorch":
        if mm not in PYTORCH:
            raise UnsupportedFeature(
                f"framework pytorch {version}", where, hint="versions: " + ", ".join(PYTORCH)
            )
        full, py = PYTORCH[mm]
        proc = "gpu" if gpu else "cpu"
        return f"{DLC_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/pytorch-training:{full}-{proc}-{py}"
    table, repo = (
        (SKLEARN, "sagemaker-scikit-learn") if name == "sklearn" else (XGBOOST, "sagemaker-xgboost")
    )
    if mm not in table:
        raise UnsupportedFeature(
            f"framework {name} {version}", where, hint="versions: " + ", ".join(table)
        )
    account = SKLEARN_ACCOUNTS.get(region)
    if account is None:
        raise UnsupportedFeature(
            f"framework {name} in region {region}",
            where,
            hint="set image: (any image with python3) or training_image in the profile",
        )
    if name == "sklearn" and gpu:
        raise UnsupportedFeature(
            "sklearn on a GPU instance", where, hint="drop resources.accelerators, or set image:"
        )
    suffix = "-cpu-py3" if name == "sklearn" else ""
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repo}:{table[mm]}{suffix}"


def default_training_image(region: str, gpu: bool) -> str:
    """No image and no framework: the newest PyTorch DLC (python3 + torchrun for distributed)."""
    return framework_image("pytorch", "2.5", region, gpu, "sagemaker")
