"""Sequence classification: a transformer encoder and an LSTM learn whether a passage's words are in their order.

No labelled sentiment corpus ships with Python or its packages, and nothing
can be downloaded here, so the labels are made from text that does ship: the
Python reference's topic texts (pydoc_data.topics, the text gru_charlm.py and
gpt_charlm.py model). The text is cut into words and punctuation marks; each
example is a window of --length consecutive tokens, labelled 1 when it is as
written and 0 when the tokens of one random span of --span of them have been
shuffled (redrawn until the order changes). Both classes have the same
tokens, so counting words decides nothing: a model must read the order.
Training windows come from the first 90% of the text, the test windows (a
fixed set, half of each class) from the last 10%.

Both models see the same examples in the same order and train for the same
--time-budget seconds of steps (the first, compiling step not counted), with
Adam and a learning rate that decays over the budget; then each is scored on
the same test windows. The transformer: token and learned position
embeddings, pre-norm TransformerEncoderLayers (attention dropout in training),
mean over positions, a linear head. The LSTM: the same embedding, one LSTM
layer, a linear head on its last hidden state.
"""

import argparse
import math
import re
import time
from collections import Counter
from pydoc_data.topics import topics

import numpy as np

import dlc
from dlc import nn

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--time-budget", type=float, default=60.0,
                    help="seconds of training steps per model (the first, compiling step not counted)")
parser.add_argument("--max-steps", type=int, default=100_000, help="stop a model earlier after this many steps")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--length", type=int, default=32, help="tokens per example")
parser.add_argument("--span", type=int, default=8, help="tokens shuffled in a negative example")
parser.add_argument("--d-model", type=int, default=64, help="the transformer's width (and both embeddings')")
parser.add_argument("--heads", type=int, default=4)
parser.add_argument("--layers", type=int, default=2)
parser.add_argument("--dropout", type=float, default=0.1, help="the transformer's dropout (attention included)")
parser.add_argument("--hidden", type=int, default=128, help="the LSTM's hidden size")
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--test-size", type=int, default=2000)
parser.add_argument("--target", default=dlc.default_target(), help="reference | cpu | cuda")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
if not 2 <= args.span <= args.length:
    parser.error(f"--span must be between 2 and --length ({args.length}), got {args.span}")
print(f"word_order: training a transformer encoder and an LSTM for {args.time_budget:g} s each to tell "
      f"{args.length}-token passages from ones with {args.span} tokens shuffled, on target {args.target}", flush=True)

text = "\n".join(topics[k] for k in sorted(topics)).lower()
tokens = re.findall(r"[a-z]+|[0-9]+|[^a-z0-9\s]", text)
split = int(0.9 * len(tokens))
counts = Counter(tokens[:split])
vocab = ["<unk>"] + sorted(w for w, c in counts.items() if c >= 3)  # rarer words share one id
index = {w: i for i, w in enumerate(vocab)}
ids = np.array([index.get(w, 0) for w in tokens], dtype=np.int64)
train_ids, test_ids = ids[:split], ids[split:]


def make_examples(seq, n, rng):
    """n windows of seq, labels 1 (as written) or 0 (one span shuffled), half of each in random order."""
    x = np.empty((n, args.length), np.int64)
    labels = rng.permutation(np.arange(n) % 2)
    for row, label in enumerate(labels):
        while True:
            start = rng.integers(0, len(seq) - args.length + 1)
            window = seq[start:start + args.length].copy()
            if label == 1:
                break
            at = rng.integers(0, args.length - args.span + 1)
            span = window[at:at + args.span]
            if len(set(span.tolist())) > 1:  # a span of one repeated token cannot be put out of order
                while True:
                    shuffled = rng.permutation(span)
                    if not np.array_equal(shuffled, span):
                        break
                window[at:at + args.span] = shuffled
                break
        x[row] = window
    return x, labels.astype(np.int64)


class TransformerClassifier(nn.Module):
    def __init__(self, vocab_size, length, d_model, heads, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.LearnedPositionalEncoding(length, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=dropout, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 2)

    def forward(self, x):
        h = self.position(self.embed(x))
        for block in self.blocks:
            h = block(h)
        return self.head(dlc.mean(self.norm(h), axis=1))


class LSTMClassifier(nn.Module):
    def __init__(self, vocab_size, embed, hidden):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        _, (h_n, _) = self.lstm(self.embed(x))
        return self.head(h_n[0])


def train_and_test(name, model, x_test, y_test):
    """Train on fresh examples for the time budget, then the accuracy on the test windows."""
    x, labels = dlc.input("x", ("B", args.length), "int64"), dlc.input("labels", ("B",), "int64")
    opt = dlc.optim.Adam(model.parameters(), lr=args.lr, max_grad_norm=1.0)

    def loss_fn(x, labels):
        logits = model(x)
        return {"loss": nn.cross_entropy(logits, labels), "acc": nn.accuracy(logits, labels)}

    step = nn.compile_step(loss_fn, [x, labels], opt, modules=model, target=args.target)
    predict = nn.compile_eval(lambda x: dlc.argmax(model(x), axis=1), [x], modules=model, target=args.target)
    rng = np.random.default_rng(args.seed)  # the same training examples, in the same order, for both models
    spent, steps, recent = 0.0, 0, []
    while steps < args.max_steps and spent < args.time_budget:
        opt.lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(spent / args.time_budget, 1.0)))
        batch = make_examples(train_ids, args.batch_size, rng)
        t0 = time.perf_counter()
        metrics = step(*batch)
        steps += 1
        if steps > 1:
            spent += time.perf_counter() - t0
        recent = (recent + [float(metrics["acc"])])[-50:]
    correct = sum(int(np.sum(predict(xb) == yb)) for xb, yb in zip(np.array_split(x_test, 8),
                                                                    np.array_split(y_test, 8)))
    accuracy = correct / len(y_test)
    print(f"{name:11s}  {model.num_parameters():7d} parameters  {steps:5d} steps in {spent:5.1f} s  "
          f"train accuracy (last 50 steps) {np.mean(recent):.3f}  test accuracy {accuracy:.4f}", flush=True)
    return accuracy


x_test, y_test = make_examples(test_ids, args.test_size, np.random.default_rng(args.seed + 1))
print(f"{len(tokens)} tokens, vocabulary {len(vocab)}; {args.test_size} test windows, half of them shuffled")
nn.manual_seed(args.seed)
transformer = TransformerClassifier(len(vocab), args.length, args.d_model, args.heads, args.layers, args.dropout)
lstm = LSTMClassifier(len(vocab), args.d_model, args.hidden)
results = {"transformer": train_and_test("transformer", transformer, x_test, y_test),
           "LSTM": train_and_test("LSTM", lstm, x_test, y_test)}
print("test accuracy: " + ", ".join(f"{name} {acc:.4f}" for name, acc in results.items())
      + " (chance 0.5)")
