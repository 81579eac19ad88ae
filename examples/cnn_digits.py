"""A small conv net (batch norm, max pooling) on scikit-learn's 8x8 handwritten digits, trained with Adam.

Training mode uses batch statistics and updates the running ones inside the
compiled step; the predict function is compiled from the same model in eval
mode, where the running statistics normalize.
"""

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dlc
from dlc import nn

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=15)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--no-progress", action="store_true", help="no progress bar")
parser.add_argument("--data-parallel", action="store_true",
                    help="average gradients over MPI ranks (batch size per rank): "
                         "mpirun -n 2 python3 examples/cnn_digits.py --data-parallel")
args = parser.parse_args()
print(f"cnn_digits: training a conv net on scikit-learn's digits for {args.epochs} epochs on target "
      f"{args.target}", flush=True)

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
y = digits.target.astype(np.int64)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
nn.manual_seed(args.seed)


def conv_block(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class CNN(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            *conv_block(1, 16), *conv_block(16, 16), nn.MaxPool2d(2),   # 16 x 4 x 4
            *conv_block(16, 32), nn.MaxPool2d(2),                       # 32 x 2 x 2
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 2 * 2, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


model = CNN()
x, labels = dlc.input("x", ("B", 1, 8, 8)), dlc.input("labels", ("B",), "int64")
opt = dlc.optim.Adam(model.parameters(), lr=3e-3)
schedule = dlc.optim.CosineLR(opt, t_max=args.epochs)


def loss_fn(x, labels):
    logits = model(x)
    return {"loss": nn.cross_entropy(logits, labels), "acc": nn.accuracy(logits, labels)}


step = nn.compile_step(loss_fn, [x, labels], opt, modules=model, target=args.target, data_parallel=args.data_parallel)
predict = nn.compile_eval(lambda x: dlc.argmax(model(x), axis=1), [x], modules=model, target=args.target)

# with --data-parallel, batch_size is per rank
history = nn.fit(step, X_train, y_train, epochs=args.epochs, batch_size=args.batch_size, schedule=schedule,
                 seed=args.seed, verbose=0 if args.no_progress else 1)
if args.data_parallel and not dlc.distributed.is_main():
    raise SystemExit  # rank 0 reports; every rank holds the same weights
for h in history[4::5]:
    print(f"epoch {h['epoch']:3d}  loss {h['loss']:.4f}  train acc {h['acc']:.4f}")
print(f"{model.num_parameters()} parameters, target {args.target}")
print(f"test accuracy {np.mean(predict(X_test) == y_test):.4f}")
