"""A character-level GRU language model on the Python reference's topic texts (pydoc_data.topics, shipped with Python).

It reports validation bits per character next to the unigram entropy of the
text (what a model that ignores context would get), then samples some text.
The sequence length is a symbolic dim: the same graph trains on 64-character
windows and samples one character at a time.
"""

import argparse
import math
import time
from pydoc_data.topics import topics

import numpy as np

import dlc
from dlc import nn

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--steps-per-epoch", type=int, default=250)
parser.add_argument("--time-budget", type=float, default=None,
                    help="stop training after this many seconds of steps (the first, compiling step not counted); "
                         "the learning rate's cosine then runs over the budget")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--seq-len", type=int, default=64)
parser.add_argument("--hidden", type=int, default=128)
parser.add_argument("--samples", type=int, default=200, help="characters to generate per sample")
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
print(f"gru_charlm: training a GRU character model for {args.epochs} epochs of {args.steps_per_epoch} steps on target "
      f"{args.target}; the first step compiles", flush=True)

text = "\n".join(topics[k] for k in sorted(topics))
chars = sorted(set(text))
index = {c: i for i, c in enumerate(chars)}
data = np.array([index[c] for c in text], dtype=np.int64)
split = int(0.9 * len(data))
train, val = data[:split], data[split:]
counts = np.bincount(data, minlength=len(chars)) / len(data)
unigram_bits = -np.sum(counts * np.log2(counts))
nn.manual_seed(args.seed)
rng = np.random.default_rng(args.seed)


class CharGRU(nn.Module):
    def __init__(self, vocab, hidden, embed=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids, h0=None):
        out, h_n = self.gru(self.embed(ids), h0)  # (B, T, hidden)
        return self.head(dlc.reshape(out, (-1, out.shape[-1]))), h_n  # logits (B*T, vocab)


model = CharGRU(len(chars), args.hidden)
ids, targets = dlc.input("ids", ("B", "T"), "int64"), dlc.input("targets", ("B", "T"), "int64")
base_lr = 3e-3
opt = dlc.optim.Adam(model.parameters(), lr=base_lr, max_grad_norm=5.0)
# per epoch; with a time budget the cosine runs over the budget instead (in the training loop)
schedule = None if args.time_budget else dlc.optim.CosineLR(opt, t_max=args.epochs)


def loss_fn(ids, targets):
    return nn.cross_entropy(model(ids)[0], dlc.reshape(targets, (-1,)))


step = nn.compile_step(loss_fn, [ids, targets], opt, modules=model, target=args.target)
evaluate = nn.compile_eval(loss_fn, [ids, targets], modules=model, target=args.target)
h0 = dlc.input("h0", (1, "B", args.hidden))
logits, h_n = model(ids, h0)
next_char = dlc.compile([dlc.softmax(logits), h_n], inputs=[ids, h0], target=args.target)


def windows(seq, starts, n):
    return np.stack([seq[s:s + n] for s in starts])


def bits_per_char(seq, n):
    parts = np.array_split(np.arange(0, len(seq) - n - 1, n), 8)
    losses = [float(evaluate(windows(seq, p, n), windows(seq, p + 1, n))) for p in parts]
    return np.average(losses, weights=[len(p) for p in parts]) / math.log(2)


def sample(prefix, length, temperature=0.7):
    ids, h = np.array([[index[c] for c in prefix]]), np.zeros((1, 1, args.hidden), np.float32)
    for _ in range(length):  # the whole prefix first, then one character at a time
        probs, h = next_char(ids, h)
        p = probs[-1].astype(np.float64) ** (1 / temperature)
        ids = np.array([[rng.choice(len(chars), p=p / p.sum())]])
        prefix += chars[ids[0, 0]]
    return prefix


spent, steps_done = 0.0, 0
for epoch in range(1, args.epochs + 1):
    losses = []
    for _ in range(args.steps_per_epoch):
        starts = rng.integers(0, len(train) - args.seq_len - 1, args.batch_size)
        if args.time_budget:  # the cosine runs over the budget (or the steps, if they end first), as gpt_charlm's
            progress = max(steps_done / (args.epochs * args.steps_per_epoch), spent / args.time_budget)
            opt.lr = base_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        t0 = time.perf_counter()
        losses.append(float(step(windows(train, starts, args.seq_len), windows(train, starts + 1, args.seq_len))))
        steps_done += 1
        if steps_done == 1:
            print("compiled; training", flush=True)
        else:
            spent += time.perf_counter() - t0
        if args.time_budget and spent >= args.time_budget:
            break
    if schedule is not None:
        schedule.step()
    print(f"epoch {epoch}  train {np.mean(losses[-50:]) / math.log(2):.3f} bits/char  "
          f"validation {bits_per_char(val, args.seq_len):.3f} bits/char", flush=True)
    if args.time_budget and spent >= args.time_budget:
        break

print(f"{steps_done} steps in {spent:.1f} s of training")

print(f"unigram entropy of the text {unigram_bits:.3f} bits/char; "
      f"validation {bits_per_char(val, args.seq_len):.3f} bits/char")
print("--- samples ---")
for prefix in ("The ", "A list "):
    print(sample(prefix, args.samples))
