"""A DCGAN-style GAN whose convolutional generator (ConvTranspose2d) draws 8x8 handwritten digits.

It saves a grid of samples, and scores them with a logistic-regression
classifier trained on the real digits: how many of the 10 classes the samples
cover, and how confidently they are recognized.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import dlc  # noqa: E402
from dlc import nn  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--steps", type=int, default=3000)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--plot", default="gan_digits.png", help="file name of the plot in --out ('' for none)")
parser.add_argument("--out", default="runs", help="folder for the outputs (created if missing)")
args = parser.parse_args()
print(f"gan_digits: training a GAN on scikit-learn's digits for {args.steps} steps on target {args.target}; the first "
      "step compiles", flush=True)

LATENT = 32
digits = load_digits()
images = (digits.data / 16.0 * 2 - 1).astype(np.float32).reshape(-1, 1, 8, 8)   # in [-1, 1]
rng = np.random.default_rng(args.seed)
nn.manual_seed(args.seed)

G = nn.Sequential(
    nn.Linear(LATENT, 64 * 2 * 2), nn.Unflatten(1, (64, 2, 2)), nn.BatchNorm2d(64), nn.ReLU(),
    nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),   # 32 x 4 x 4
    nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1), nn.Tanh(),                        # 1 x 8 x 8
)
D = nn.Sequential(
    nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.LeakyReLU(0.2),                         # 32 x 4 x 4
    nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),                        # 64 x 2 x 2
    nn.Flatten(), nn.Linear(64 * 2 * 2, 1),
)
real, z = dlc.input("real", ("B", 1, 8, 8)), dlc.input("z", ("B", LATENT))
opt_d = dlc.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
opt_g = dlc.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))

d_step = nn.compile_step(lambda real, z: dlc.mean(dlc.softplus(-D(real))) + dlc.mean(dlc.softplus(D(G(z)))),
                         [real, z], opt_d, modules=[D, G], target=args.target)
g_step = nn.compile_step(lambda z: dlc.mean(dlc.softplus(-D(G(z)))), [z], opt_g, modules=[D, G], target=args.target)
sample = nn.compile_eval(lambda z: G(z), [z], modules=G, target=args.target)


def noise(n):
    return rng.normal(size=(n, LATENT)).astype(np.float32)


for i in range(1, args.steps + 1):
    d_loss = d_step(images[rng.integers(0, len(images), args.batch_size)], noise(args.batch_size))
    g_loss = g_step(noise(args.batch_size))
    if i == 1:
        print("compiled; training", flush=True)
    if i % 500 == 0 or i == args.steps:
        print(f"step {i:5d}  D loss {d_loss:.4f}  G loss {g_loss:.4f}")

fakes = sample(noise(1000))
classifier = LogisticRegression(max_iter=2000).fit(images.reshape(len(images), -1), digits.target)
probs = classifier.predict_proba(fakes.reshape(len(fakes), -1))
counts = np.bincount(probs.argmax(axis=1), minlength=10)
print(f"classes covered (>= 2% of samples) {int(np.sum(counts >= 20))} / 10, samples per class {counts.tolist()}")
print(f"mean classifier confidence {probs.max(axis=1).mean():.3f}")

if args.plot:
    os.makedirs(args.out, exist_ok=True)
    plot = os.path.join(args.out, args.plot)
    fig, axes = plt.subplots(8, 8, figsize=(6, 6))
    for ax, img in zip(axes.flat, fakes):
        ax.imshow(img[0], cmap="gray_r", vmin=-1, vmax=1)
        ax.axis("off")
    fig.suptitle(f"dlc GAN samples after {args.steps} steps")
    fig.savefig(plot, dpi=80, bbox_inches="tight")
    print(f"saved {plot}")
