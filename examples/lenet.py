"""LeNet-5 as a model script for the dlc command (`dlc inspect` / `dlc export examples/lenet.py`).

The command runs this file and calls dlc_model(), which returns the compiled
function to inspect or export (here a whole training step: forward, backward
and the SGD-with-momentum update). Run directly, it trains one step on random
data and prints the loss.
"""

import numpy as np

import dlc
from dlc import nn


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),    # 6 x 14 x 14
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),              # 16 x 5 x 5
        nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def dlc_model(target=None):
    model = lenet5()
    x, labels = dlc.input("x", ("B", 1, 28, 28)), dlc.input("labels", ("B",), "int64")
    opt = dlc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = nn.compile_step(lambda x, labels: nn.cross_entropy(model(x), labels), [x, labels], opt,
                           modules=model, target=target)
    return step.function


if __name__ == "__main__":
    print("lenet: one training step of LeNet-5 on random data (the first call compiles)", flush=True)
    step = dlc_model()
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)
    print(f"loss {float(step(images, labels)['loss']):.4f}")
