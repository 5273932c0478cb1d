"""Baseline for serving_bench.py: a minimal FastAPI app serving the same model."""

from __future__ import annotations

import os

import numpy as np
import skops.io as sio
from fastapi import FastAPI
from pydantic import BaseModel

_path = os.path.join(os.environ["BENCH_MODEL_DIR"], "model.skops")
model = sio.load(_path, trusted=sio.get_untrusted_types(file=_path))
app = FastAPI()


class Request(BaseModel):
    instances: list[list[float]]


@app.post("/predict")
def predict(request: Request) -> dict[str, list[int]]:
    return {"predictions": model.predict(np.asarray(request.instances)).tolist()}
