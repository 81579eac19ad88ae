"""dlc without layers: a two-hidden-layer perceptron on scikit-learn's handwritten digits.

Everything below builds a graph; dlc.compile turns the whole training step
(forward, backward, SGD update) into one function.
"""

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dlc

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
args = parser.parse_args()
print(f"quickstart: training a two-hidden-layer perceptron on scikit-learn's digits for {args.epochs} epochs "
      f"on target {args.target}", flush=True)

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

rng = np.random.default_rng(0)


def layer(n_in, n_out, name):
    w = dlc.param(rng.normal(0, np.sqrt(2 / n_in), (n_in, n_out)).astype(np.float32), name=f"{name}.w")
    b = dlc.param(np.zeros(n_out, np.float32), name=f"{name}.b")
    return w, b


params = [*layer(64, 128, "fc1"), *layer(128, 64, "fc2"), *layer(64, 10, "out")]
w1, b1, w2, b2, w3, b3 = params

x = dlc.input("x", ("B", 64))
labels = dlc.input("labels", ("B",), "int64")
h = dlc.relu(x @ w1 + b1)
h = dlc.relu(h @ w2 + b2)
logits = h @ w3 + b3
loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 10), axis=1))

grads = dlc.grad(loss, params)
lr = 0.1
train_step = dlc.compile(loss, inputs=[x, labels], updates={p: p - lr * g for p, g in zip(params, grads)},
                         target=args.target)
predict = dlc.compile(dlc.argmax(logits, axis=1), inputs=[x], target=args.target)

for epoch in range(args.epochs):
    order = rng.permutation(len(X_train))
    losses = [train_step(X_train[i], y_train[i]) for i in np.array_split(order, len(order) // 32)]
    if epoch == 0 or epoch % 10 == 9 or epoch == args.epochs - 1:  # the first epoch includes compilation
        print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}")

accuracy = np.mean(predict(X_test) == y_test)
print(f"test accuracy {accuracy:.4f}")
