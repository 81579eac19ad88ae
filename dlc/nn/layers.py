"""Basic layers: Linear, Embedding, Dropout, Flatten, Unflatten, Identity."""

from __future__ import annotations

import numpy as np

import dlc.functional as F
import dlc.nn.init as init

from ..ops.random import dropout
from .module import Module, current_state, record_update


class Identity(Module):
    def forward(self, x):
        return x


class Linear(Module):
    """y = x @ weight.T + bias, with weight shaped (out_features, in_features) as in PyTorch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.add_param("weight", init.default_weight((out_features, in_features), rng), dtype=dtype)
        self.bias = self.add_param("bias", init.default_bias(out_features, in_features, rng), dtype=dtype) \
            if bias else None

    def forward(self, x):
        y = F.matmul(x, F.transpose(self.weight))
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: integer ids (any shape) -> rows of weight (num_embeddings, embedding_dim), init N(0, 1).

    padding_idx (as in PyTorch, negative counts from the end): that row starts as zeros and gets no gradient,
    so it stays what it is (zeros, or whatever a state dict loads into it).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, rng=None,
                 dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None:
            if not isinstance(padding_idx, (int, np.integer)) or not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be an int in [-{num_embeddings}, {num_embeddings}), got "
                                 f"{padding_idx!r}")
            padding_idx = int(padding_idx) % num_embeddings
        self.padding_idx = padding_idx
        weight = init.normal((num_embeddings, embedding_dim), rng=rng)
        if padding_idx is not None:
            weight[padding_idx] = 0.0
        self.add_param("weight", weight, dtype=dtype)

    def forward(self, ids):
        rows = F.take(self.weight, ids, axis=0)
        if self.padding_idx is None:
            return rows
        # the padding row's value, with its gradient stopped
        is_padding = F.expand_dims(F.equal(ids, self.padding_idx), -1)
        return F.where(is_padding, F.stop_gradient(rows), rows)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class Flatten(Module):
    """Merge the dims from start_dim on (default: all but the batch dim)."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim)


class Unflatten(Module):
    """Split dim into the given sizes: Unflatten(1, (64, 2, 2)) turns (B, 256) into (B, 64, 2, 2)."""

    def __init__(self, dim: int, sizes):
        super().__init__()
        self.dim, self.sizes = dim, tuple(sizes)

    def forward(self, x):
        dim = self.dim % x.ndim
        return F.reshape(x, tuple(x.shape[:dim]) + self.sizes + tuple(x.shape[dim + 1:]))

    def extra_repr(self) -> str:
        return f"{self.dim}, {self.sizes}"


class Dropout(Module):
    """Zero each element with probability p during training and scale the rest by 1/(1-p); identity in eval.

    The mask comes from a counter-based generator keyed by this layer's seed and
    a step counter (a non-trainable parameter) that each compiled training step
    advances, so every call draws a fresh mask and a run is reproducible.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = int(init.generator().integers(0, 2**31 - 1)) if seed is None else int(seed)
        self.add_param("step", np.array(0, np.int64), trainable=False, persistent=False)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        return dropout(x, self.p, self.seed, self.next_step())

    def next_step(self):
        """The step counter this call draws with; the compiled step advances it (for layers that drop inside
        another op with this layer's seed, as attention does)."""
        step = current_state(self.step)
        record_update(self, self.step, step + 1)
        return step

    def extra_repr(self) -> str:
        return f"p={self.p}"
