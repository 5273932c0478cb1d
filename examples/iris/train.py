"""Train a logistic regression on iris with the mlcloud runtime contract.

Runs unchanged on every provider: the data comes from MLCLOUD_INPUT_TRAIN, hyperparameters
from MLCLOUD_HPARAMS, and the model goes to MLCLOUD_MODEL_DIR. Params and the test accuracy go to
metrics.json in MLCLOUD_OUTPUT_DIR (`mlcloud jobs compare` reads them; MLflow too when configured).
"""

import csv

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from mlcloud import runtime

params = runtime.hparams()
with open(runtime.input_dir("train") / "iris.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
features = [[float(r[k]) for k in list(r)[:4]] for r in rows]
labels = [int(r["species"]) for r in rows]
x_train, x_test, y_train, y_test = train_test_split(
    features, labels, test_size=0.2, random_state=0, stratify=labels
)
C, max_iter = float(params.get("C", 1.0)), int(params.get("max_iter", 500))
runtime.log_params({"C": C, "max_iter": max_iter, "train_rows": len(x_train)})
model = LogisticRegression(C=C, max_iter=max_iter)
model.fit(x_train, y_train)
accuracy = model.score(x_test, y_test)
runtime.log_metrics({"accuracy": accuracy, "train_accuracy": model.score(x_train, y_train)})
print(f"test accuracy: {accuracy:.3f}", flush=True)

path = runtime.save_model(
    model,
    framework="sklearn",
    signature={"inputs": {"shape": [-1, 4], "dtype": "float64"}},
    example=[features[0]],
    reference=x_train,  # the drift baseline `mlcloud monitor` compares served requests with
    reference_target=y_train,
    feature_names=list(rows[0])[:4],
)
print(f"model saved to {path}", flush=True)
