"""The symbolic Tensor users write models with: a handle on a graph node, with Python operators."""

from __future__ import annotations

from .graph import Node, shape_str

# The operators below call into dlc.functional, which builds Tensors and so imports this module: it binds
# itself here when it is imported (the last line of functional.py), rather than the two importing each other.
F = None


class Tensor:
    """A symbolic value. Nothing is computed: every operation adds a node to the graph."""

    __slots__ = ("node",)
    __array_priority__ = 1000  # numpy scalars on the left defer to our operators

    def __init__(self, node: Node):
        self.node = node

    # ---- description
    @property
    def shape(self) -> tuple:
        return self.node.shape

    @property
    def dtype(self) -> str:
        return self.node.dtype

    @property
    def ndim(self) -> int:
        return len(self.node.shape)

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def name(self) -> str | None:
        return self.node.attr("name")

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"Tensor({self.node.op}{name}, {self.dtype}{shape_str(self.shape)})"

    def __len__(self):
        d = self.shape[0] if self.shape else None
        if not isinstance(d, int):
            raise TypeError(f"len() of a tensor whose first dim is {d!r}")
        return d

    def __bool__(self):
        raise TypeError("a symbolic Tensor has no truth value; use dlc.where for a data-dependent choice")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __hash__(self):
        return id(self.node)

    # ---- arithmetic
    def __add__(self, o): return F.add(self, o)
    def __radd__(self, o): return F.add(o, self)
    def __sub__(self, o): return F.sub(self, o)
    def __rsub__(self, o): return F.sub(o, self)
    def __mul__(self, o): return F.mul(self, o)
    def __rmul__(self, o): return F.mul(o, self)
    def __truediv__(self, o): return F.div(self, o)
    def __rtruediv__(self, o): return F.div(o, self)
    def __pow__(self, o): return F.pow(self, o)
    def __rpow__(self, o): return F.pow(o, self)
    def __matmul__(self, o): return F.matmul(self, o)
    def __rmatmul__(self, o): return F.matmul(o, self)
    def __neg__(self): return F.neg(self)
    def __pos__(self): return self
    def __abs__(self): return F.abs(self)

    # ---- comparisons build bool tensors
    def __eq__(self, o): return F.equal(self, o)  # type: ignore[override]
    def __ne__(self, o): return F.not_equal(self, o)  # type: ignore[override]
    def __lt__(self, o): return F.less(self, o)
    def __le__(self, o): return F.less_equal(self, o)
    def __gt__(self, o): return F.greater(self, o)
    def __ge__(self, o): return F.greater_equal(self, o)
    def __and__(self, o): return F.logical_and(self, o)
    def __or__(self, o): return F.logical_or(self, o)
    def __invert__(self): return F.logical_not(self)

    def __getitem__(self, index):
        return F.getitem(self, index)

    # ---- methods mirroring the functions
    # (reductions also take PyTorch's dim= and keepdim=)
    def sum(self, axis=None, keepdims=None, **torch_names): return F.sum(self, axis, keepdims, **torch_names)
    def mean(self, axis=None, keepdims=None, **torch_names): return F.mean(self, axis, keepdims, **torch_names)
    def max(self, axis=None, keepdims=None, **torch_names): return F.max(self, axis, keepdims, **torch_names)
    def min(self, axis=None, keepdims=None, **torch_names): return F.min(self, axis, keepdims, **torch_names)
    def prod(self, axis=None, keepdims=None, **torch_names): return F.prod(self, axis, keepdims, **torch_names)
    def var(self, axis=None, keepdims=False, ddof=0): return F.var(self, axis, keepdims, ddof)
    def argmax(self, axis=-1, keepdims=False): return F.argmax(self, axis, keepdims)
    def argmin(self, axis=-1, keepdims=False): return F.argmin(self, axis, keepdims)
    def reshape(self, *shape): return F.reshape(self, _one_or_many(shape))
    def transpose(self, *perm): return F.transpose(self, _one_or_many(perm) or None)
    def astype(self, dtype): return F.cast(self, dtype)
    def exp(self): return F.exp(self)
    def log(self): return F.log(self)
    def tanh(self): return F.tanh(self)
    def sigmoid(self): return F.sigmoid(self)
    def relu(self): return F.relu(self)
    def sqrt(self): return F.sqrt(self)
    def flatten(self, start_axis=1): return F.flatten(self, start_axis)
    def softmax(self, axis=None, **torch_names): return F.softmax(self, axis, **torch_names)
    def unsqueeze(self, dim): return F.unsqueeze(self, dim)

    # ---- PyTorch spellings
    def size(self, dim=None):
        """The shape (as torch's Tensor.size()), or one dim of it; symbolic dims are names like "B"."""
        return self.shape if dim is None else self.shape[dim]

    def view(self, *shape): return F.reshape(self, _one_or_many(shape))
    def float(self): return F.cast(self, "float32")
    def double(self): return F.cast(self, "float64")
    def long(self): return F.cast(self, "int64")
    def int(self): return F.cast(self, "int32")
    def bool(self): return F.cast(self, "bool")

    @property
    def T(self):
        return F.transpose(self)


def _one_or_many(args: tuple):
    """x.reshape(2, 3) and x.reshape((2, 3)) mean the same, as in numpy."""
    return args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)



__all__ = ["Tensor", "is_tensor"]
