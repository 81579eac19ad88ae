"""A small decoder-only transformer (GPT) character model on the Python reference's topic texts (pydoc_data.topics).

The same data, split and validation measure as gru_charlm.py (bits per
character over 64-character windows, next to the unigram entropy), so the two
can be compared; --time-budget stops training after that many seconds of
steps in both. The model: token and learned position embeddings, pre-norm
TransformerEncoderLayers with causal self-attention (one fused attention op
per layer), a final LayerNorm and a linear head. It is small (2 layers of
width 64) and trained with a high learning rate (AdamW, 1e-2 after 100 steps
of warm-up, then a cosine decay to a tenth of it over the time budget; weight
decay 0.1, which kept it from overfitting the 418,000 training characters in
long runs) on batches of 16 windows: on two CPU cores, many cheap steps learn
more in a fixed time than a few expensive ones (a 3-layer model of width 128
on batches of 32 made 57 steps in 120 s and reached 3.26 bits/char).

Sampling feeds the last --context characters (right-padded: causal attention
never lets a position see the padding after it) and draws from the
temperature-scaled top-k distribution; the sample is printed and written to
--out.
"""

import argparse
import math
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np

import dlc
from dlc import nn

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--steps-per-epoch", type=int, default=500)
parser.add_argument("--time-budget", type=float, default=None,
                    help="stop training after this many seconds of steps (the first, compiling step not counted)")
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--context", type=int, default=64, help="characters the model sees (its training windows)")
parser.add_argument("--d-model", type=int, default=64)
parser.add_argument("--heads", type=int, default=4)
parser.add_argument("--layers", type=int, default=2)
parser.add_argument("--dropout", type=float, default=0.0, help="dropout in training (attention's included)")
parser.add_argument("--lr", type=float, default=1e-2, help="the peak learning rate")
parser.add_argument("--warmup", type=int, default=100, help="steps of linear warm-up to the peak learning rate")
parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's decoupled weight decay")
parser.add_argument("--samples", type=int, default=200, help="characters to generate per sample")
parser.add_argument("--temperature", type=float, default=0.8)
parser.add_argument("--top-k", type=int, default=10)
parser.add_argument("--out", default="runs", help="folder for the outputs (created if missing)")
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
budget = f" or {args.time_budget:g} s" if args.time_budget else ""
print(f"gpt_charlm: training a {args.layers}-layer transformer character model for {args.epochs} epochs of "
      f"{args.steps_per_epoch} steps{budget} on target {args.target}; the first step compiles", flush=True)

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


class CharGPT(nn.Module):
    def __init__(self, vocab, context, d_model, heads, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.LearnedPositionalEncoding(context, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=dropout, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids):
        x = self.position(self.embed(ids))
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self.head(self.norm(x))  # logits (B, T, vocab)


model = CharGPT(len(chars), args.context, args.d_model, args.heads, args.layers, args.dropout)
T = args.context
ids, targets = dlc.input("ids", ("B", T), "int64"), dlc.input("targets", ("B", T), "int64")
opt = dlc.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, max_grad_norm=1.0)


def learning_rate(steps_done, spent):
    """Linear warm-up, then a cosine decay to a tenth of the peak over the steps or the time budget, whichever
    runs out first."""
    progress = steps_done / (args.epochs * args.steps_per_epoch)
    if args.time_budget:
        progress = max(progress, spent / args.time_budget)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return args.lr * min(1.0, (steps_done + 1) / args.warmup) * (0.1 + 0.9 * cosine)


def loss_fn(ids, targets):
    return nn.cross_entropy(dlc.reshape(model(ids), (-1, len(chars))), dlc.reshape(targets, (-1,)))


step = nn.compile_step(loss_fn, [ids, targets], opt, modules=model, target=args.target)
evaluate = nn.compile_eval(loss_fn, [ids, targets], modules=model, target=args.target)
window = dlc.input("window", (1, T), "int64")
next_logits = nn.compile_eval(model, [window], modules=model, target=args.target)


def windows(seq, starts, n):
    return np.stack([seq[s:s + n] for s in starts])


def bits_per_char(seq, n):
    parts = np.array_split(np.arange(0, len(seq) - n - 1, n), 8)
    losses = [float(evaluate(windows(seq, p, n), windows(seq, p + 1, n))) for p in parts]
    return np.average(losses, weights=[len(p) for p in parts]) / math.log(2)


def sample(prefix, length):
    """Temperature and top-k sampling, one character at a time from the last T characters."""
    out = [index[c] for c in prefix]
    for _ in range(length):
        context = out[-T:]
        padded = np.zeros((1, T), np.int64)
        padded[0, :len(context)] = context
        logits = next_logits(padded)[0, len(context) - 1].astype(np.float64) / args.temperature
        top = np.argsort(logits)[-args.top_k:]
        p = np.exp(logits[top] - logits[top].max())
        out.append(int(top[rng.choice(len(top), p=p / p.sum())]))
    return "".join(chars[i] for i in out)


spent, steps_done = 0.0, 0
for epoch in range(1, args.epochs + 1):
    losses = []
    for _ in range(args.steps_per_epoch):
        starts = rng.integers(0, len(train) - T - 1, args.batch_size)
        opt.lr = learning_rate(steps_done, spent)
        t0 = time.perf_counter()
        losses.append(float(step(windows(train, starts, T), windows(train, starts + 1, T))))
        steps_done += 1
        if steps_done == 1:
            print("compiled; training", flush=True)
        else:
            spent += time.perf_counter() - t0
        if args.time_budget and spent >= args.time_budget:
            break
    print(f"epoch {epoch}  train {np.mean(losses[-50:]) / math.log(2):.3f} bits/char  "
          f"validation {bits_per_char(val, T):.3f} bits/char", flush=True)
    if args.time_budget and spent >= args.time_budget:
        break

print(f"{steps_done} steps in {spent:.1f} s of training")
print(f"unigram entropy of the text {unigram_bits:.3f} bits/char; validation {bits_per_char(val, T):.3f} bits/char")
print("--- samples ---")
samples = [sample(prefix, args.samples) for prefix in ("The ", "A list ")]
print("\n".join(samples))
Path(args.out).mkdir(parents=True, exist_ok=True)
(Path(args.out) / "gpt_charlm_samples.txt").write_text("\n\n".join(samples) + "\n")
