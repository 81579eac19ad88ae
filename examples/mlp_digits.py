"""A deep feed-forward net (3 hidden layers, dropout) on scikit-learn's handwritten digits, trained with AdamW.

The model is written as in the mainstream frameworks, but every call builds
graph: dlc.nn.compile_step compiles forward, backward and the AdamW update
into one function, and the cosine schedule changes its learning rate between
epochs without recompiling.
"""

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dlc
from dlc import nn

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=40)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--no-progress", action="store_true", help="no progress bar")
parser.add_argument("--data-parallel", action="store_true",
                    help="average gradients over MPI ranks: mpirun -n 2 python3 examples/mlp_digits.py --data-parallel")
args = parser.parse_args()
print(f"mlp_digits: training an MLP on scikit-learn's digits for {args.epochs} epochs on target "
      f"{args.target}", flush=True)

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
nn.manual_seed(args.seed)


class MLP(nn.Module):
    def __init__(self, sizes=(64, 256, 128, 64), n_classes=10, p_drop=0.2):
        super().__init__()
        layers = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(p_drop)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], n_classes)

    def forward(self, x):
        return self.head(self.body(x))


model = MLP()
x, labels = dlc.input("x", ("B", 64)), dlc.input("labels", ("B",), "int64")
opt = dlc.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
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
for h in history[9::10]:
    print(f"epoch {h['epoch']:3d}  loss {h['loss']:.4f}  train acc {h['acc']:.4f}")
print(f"{model.num_parameters()} parameters, target {args.target}")
print(f"test accuracy {np.mean(predict(X_test) == y_test):.4f}")
