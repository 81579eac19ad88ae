"""The table of ONNX op mappings: one small function per ONNX op, grouped by family in this package.

    math.py     elementwise arithmetic, activations, comparisons, logic, Cast, Where, Clip
    nn.py       Conv, ConvTranspose, pooling, normalisations, LRN, Dropout
    tensor.py   shapes and indexing: Reshape, Transpose, Concat, Slice, Gather, Pad, Shape, Constant, Range...
    reduce.py   Reduce*, ArgMax/ArgMin, Softmax/LogSoftmax/Hardmax
    linalg.py   MatMul, Gemm, Einsum
    rnn.py      LSTM, GRU, RNN

A mapping is `fn(node) -> output value(s)`, registered with `@onnx_op("Name", attrs=(...))`;
`node` (importer.NodeContext) gives the inputs as dlc Tensors or as static numpy arrays. Any
attribute not listed in `attrs` makes the import fail with UnsupportedError, so nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpMapping:
    name: str
    fn: object
    attrs: frozenset
    family: str


TABLE: dict[str, OpMapping] = {}


def onnx_op(*names: str, attrs=()):
    def register(fn):
        family = fn.__module__.rsplit(".", 1)[-1]
        for name in names:
            if name in TABLE:
                raise ValueError(f"ONNX op {name} mapped twice")
            TABLE[name] = OpMapping(name, fn, frozenset(attrs), family)
        return fn
    return register


def load_all() -> dict[str, OpMapping]:
    from . import linalg, math, nn, reduce, rnn, tensor  # noqa: F401  (each registers its mappings)

    return TABLE
