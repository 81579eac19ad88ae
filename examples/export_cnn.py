"""Train a small conv net on scikit-learn's digits, export it to one file, and run that file in a fresh process.

The second process is the `dlc run` command: it has no model code and traces
nothing; it loads the artifact (checking every member's sha256), feeds the
test images and writes the logits, from which this script computes the
accuracy and checks it against the in-process model bit for bit.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dlc
from dlc import nn

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--out", default="runs", help="folder for the artifact (created if missing)")
parser.add_argument("--no-progress", action="store_true", help="no progress bar")
args = parser.parse_args()
print(f"export_cnn: training a small conv net on scikit-learn's digits for {args.epochs} epochs on target "
      f"{args.target}, then exporting it", flush=True)

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
y = digits.target.astype(np.int64)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
nn.manual_seed(0)

model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 8 x 4 x 4
    nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 16 x 2 x 2
    nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
)
x, labels = dlc.input("x", ("B", 1, 8, 8)), dlc.input("labels", ("B",), "int64")
opt = dlc.optim.Adam(model.parameters(), lr=1e-2)
step = nn.compile_step(lambda x, labels: nn.cross_entropy(model(x), labels), [x, labels], opt, modules=model,
                       target=args.target)
nn.fit(step, X_train, y_train, epochs=args.epochs, batch_size=32, verbose=0 if args.no_progress else 1)

# the deployable function: eval mode, logits out
predict = nn.compile_eval(lambda x: {"logits": model(x)}, [x], modules=model, target=args.target)
os.makedirs(args.out, exist_ok=True)
artifact = os.path.join(args.out, "cnn_digits.dlc")
dlc.export(predict, artifact, golden_inputs={"x": X_test[:4]})
print(f"exported {artifact} ({os.path.getsize(artifact) / 1e3:.1f} kB, target {args.target})")

# run it from a fresh process with the dlc command, on inputs and outputs in files (removed afterwards)
with tempfile.TemporaryDirectory(prefix="dlc-export-cnn-") as folder:
    np.save(os.path.join(folder, "x_test.npy"), X_test)
    outputs = os.path.join(folder, "logits.npz")
    subprocess.run([sys.executable, "-m", "dlc", "run", artifact, "--verify", "--input", f"x={folder}/x_test.npy",
                    "--output", outputs], check=True)
    with np.load(outputs) as out:
        logits = out["logits"]

accuracy = np.mean(np.argmax(logits, axis=1) == y_test)
same = np.array_equal(logits, predict(X_test)["logits"])
print(f"test accuracy of the exported model, run by `dlc run`: {accuracy:.4f}")
print(f"identical to the in-process model's logits: {same}")
