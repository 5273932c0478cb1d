"""Score a trained iris model on the held-out split and log the metrics the gate reads.

Runs on every provider: the model comes from MLCLOUD_INPUT_MODEL (the train step's model dir,
checked against its manifest), the data from MLCLOUD_INPUT_DATA; runtime.log_metrics writes
metrics.json, which mlcloud collects into the job record when the job ends.
"""

import csv

from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from mlcloud import modeldir, runtime

root = runtime.input_dir("model")
manifest = modeldir.verify(root)  # a model changed since it was written is refused
entry = manifest["entry"]
if entry.get("format") == "skops":
    import skops.io as sio

    path = root / entry["file"]
    model = sio.load(path, trusted=sio.get_untrusted_types(file=path))
else:
    import joblib

    model = joblib.load(root / entry["file"])

with open(runtime.input_dir("data") / "iris.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
features = [[float(r[k]) for k in list(r)[:4]] for r in rows]
labels = [int(r["species"]) for r in rows]
_, x_test, _, y_test = train_test_split(
    features, labels, test_size=0.2, random_state=0, stratify=labels
)
predicted = model.predict(x_test)
accuracy = accuracy_score(y_test, predicted)
runtime.log_metrics(
    {"accuracy": accuracy, "f1_macro": f1_score(y_test, predicted, average="macro")}
)
print(f"held-out accuracy: {accuracy:.3f} on {len(y_test)} rows", flush=True)
