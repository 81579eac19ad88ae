"""A PyTorch-trained CNN brought into dlc through ONNX: export, import, compile, compare, then fine-tune in dlc.

PyTorch trains a small conv net on scikit-learn's 8x8 digits and exports it
with torch.onnx.export (a symbolic batch dim). dlc.onnx imports the file,
compiles it for the CPU and must classify the test set exactly as PyTorch
does. The same file, imported as a dlc Module (dlc.onnx.to_module), is then
fine-tuned for one epoch with dlc.optim (batch norm keeps its imported
running statistics).

Needs torch and onnx (pip install torch onnx; onnxruntime is compared if installed).
"""

import argparse
import os
import tempfile
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dlc
import dlc.onnx
from dlc import nn

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=8, help="PyTorch training epochs")
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--onnx", default=None, help="where to write the exported model (default: a temp dir)")
args = parser.parse_args()

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
y = digits.target.astype(np.int64)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

# ---- 1. train in PyTorch
torch.manual_seed(args.seed)
net = torch.nn.Sequential(
    torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
    torch.nn.Flatten(), torch.nn.Linear(32 * 2 * 2, 10),
)
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
rng = np.random.default_rng(args.seed)
for _ in range(args.epochs):
    net.train()
    for idx in np.array_split(rng.permutation(len(X_train)), len(X_train) // 32):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(X_train[idx])), torch.from_numpy(y_train[idx]))
        loss.backward()
        opt.step()
net.eval()
with torch.no_grad():
    torch_pred = net(torch.from_numpy(X_test)).argmax(1).numpy()
torch_acc = float(np.mean(torch_pred == y_test))

# ---- 2. export to ONNX
path = args.onnx or os.path.join(tempfile.mkdtemp(), "digits_cnn.onnx")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notice
    torch.onnx.export(net, (torch.from_numpy(X_test[:2]),), path, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)

# ---- 3. import and compile in dlc
infer = dlc.onnx.load_model(path, target=args.target)
logits = infer(X_test)
dlc_acc = float(np.mean(logits.argmax(1) == y_test))
print(f"imported {path}: {infer}")
print(f"PyTorch test accuracy {torch_acc:.4f}")
print(f"dlc test accuracy {dlc_acc:.4f}")
print(f"same predictions {int(np.sum(logits.argmax(1) == torch_pred))} / {len(y_test)}")
try:
    import onnxruntime as ort

    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": X_test})[0]
    print(f"max |dlc - onnxruntime| {np.abs(logits - ref).max():.2e}")
except ImportError:
    pass

# ---- 4. fine-tune the imported net for one epoch in dlc
model = dlc.onnx.to_module(path)
x, labels = dlc.input("x", ("B", 1, 8, 8)), dlc.input("labels", ("B",), "int64")
sgd = dlc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, store=model.store)


def loss_fn(x, labels):
    out = model(x)
    return {"loss": nn.cross_entropy(out, labels), "acc": nn.accuracy(out, labels)}


step = nn.compile_step(loss_fn, [x, labels], sgd, modules=model, target=args.target)
predict = nn.compile_eval(lambda x: dlc.argmax(model(x), axis=1), [x], modules=model, target=args.target)
history = nn.fit(step, X_train, y_train, epochs=1, batch_size=32, seed=args.seed, progress=False, log=None)
print(f"fine-tune epoch 1  loss {history[-1]['loss']:.4f}  train acc {history[-1]['acc']:.4f}")
print(f"fine-tuned test accuracy {np.mean(predict(X_test) == y_test):.4f}")
