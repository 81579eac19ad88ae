"""An LSTM reads each of scikit-learn's 8x8 handwritten digits row by row (8 steps of 8 pixels) and classifies it.

The recurrence is one scan node whatever the sequence length; its gradient is
a reverse scan (backpropagation through time), compiled with the rest of the
training step.
"""

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dlc
from dlc import nn

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--hidden", type=int, default=64)
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--no-progress", action="store_true", help="no progress bar")
parser.add_argument("--data-parallel", action="store_true",
                    help="average gradients over MPI ranks (batch size per rank): "
                         "mpirun -n 2 python3 examples/lstm_digits.py --data-parallel")
args = parser.parse_args()
print(f"lstm_digits: training an LSTM that reads digits row by row for {args.epochs} epochs on target "
      f"{args.target}", flush=True)

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32).reshape(-1, 8, 8)  # (N, rows = time steps, pixels)
y = digits.target.astype(np.int64)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
nn.manual_seed(args.seed)


class RowReader(nn.Module):
    def __init__(self, hidden, n_classes=10):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        _, (h_n, _) = self.lstm(x)
        return self.head(h_n[0])  # the last layer's final hidden state


model = RowReader(args.hidden)
x, labels = dlc.input("x", ("B", 8, 8)), dlc.input("labels", ("B",), "int64")
opt = dlc.optim.Adam(model.parameters(), lr=1e-2)
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
