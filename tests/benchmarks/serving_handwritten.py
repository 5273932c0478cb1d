"""Baseline for serving_bench.py: the minimal BentoML service a user would write by hand."""

from __future__ import annotations

import os

import bentoml
import numpy as np
import skops.io as sio


@bentoml.service
class IrisClassifier:
    def __init__(self) -> None:
        path = os.path.join(os.environ["BENCH_MODEL_DIR"], "model.skops")
        self.model = sio.load(path, trusted=sio.get_untrusted_types(file=path))

    @bentoml.api
    def predict(self, instances: np.ndarray) -> np.ndarray:
        return self.model.predict(instances)
