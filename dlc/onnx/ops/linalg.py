"""ONNX MatMul, Gemm and Einsum (the forms that are a batched matrix product, a transpose or a sum)."""

from __future__ import annotations

import dlc.functional as F

from ...graph import dim_mul
from . import onnx_op


def matmul(a, b):
    """numpy matmul semantics, 1-d operands included."""
    squeeze_a, squeeze_b = a.ndim == 1, b.ndim == 1
    if squeeze_a:
        a = F.reshape(a, (1, a.shape[0]))
    if squeeze_b:
        b = F.reshape(b, (b.shape[0], 1))
    y = F.matmul(a, b)
    if squeeze_a or squeeze_b:
        shape = y.shape[:-2] + (() if squeeze_a else (y.shape[-2],)) + (() if squeeze_b else (y.shape[-1],))
        y = F.reshape(y, shape)
    return y


@onnx_op("MatMul")
def matmul_(n):
    return matmul(n.tensor(0), n.tensor(1))


@onnx_op("Gemm", attrs=("alpha", "beta", "transA", "transB", "broadcast"))
def gemm(n):
    if n.attr("broadcast", 1) != 1:
        raise n.unsupported("broadcast=0", "broadcast=1 (the default)")
    a, b = n.tensor(0), n.tensor(1)
    if n.attr("transA", 0):
        a = F.transpose(a)
    if n.attr("transB", 0):
        b = F.transpose(b)
    y = F.matmul(a, b)
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if n.has(2):
        c = n.tensor(2)
        y = y + (c if beta == 1.0 else c * beta)
    return y


def _parse(n, equation: str, count: int):
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise n.unsupported("an ellipsis in the equation", "explicit subscripts")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != count:
        raise n.invalid(f"equation {equation!r} has {len(terms)} operands, the node {count}")
    if not _:
        letters = sorted(c for c in set(lhs.replace(",", "")) if lhs.count(c) == 1)
        rhs = "".join(letters)
    for t in terms + [rhs]:
        if len(set(t)) != len(t):
            raise n.unsupported(f"a repeated subscript in {t!r} (a diagonal or trace)",
                                "distinct subscripts per operand")
    return terms, rhs


def _sum_unused(x, term, keep: str):
    axes = tuple(k for k, c in enumerate(term) if c not in keep)
    if axes:
        x = F.sum(x, axes)
        term = "".join(c for c in term if c in keep)
    return x, term


def _permute(x, term, order):
    return F.transpose(x, [term.index(c) for c in order]) if term != order else x


@onnx_op("Einsum", attrs=("equation",))
def einsum(n):
    xs = n.tensors()
    terms, out = _parse(n, n.attr("equation"), len(xs))
    if len(xs) == 1:
        x, term = _sum_unused(xs[0], terms[0], out)
        return _permute(x, term, out)
    if len(xs) != 2:
        raise n.unsupported(f"{len(xs)} operands", "one or two")
    (a, ta), (b, tb) = (_sum_unused(x, t, out + (terms[1 - k])) for k, (x, t) in enumerate(zip(xs, terms)))
    dims = {c: d for x, t in ((a, ta), (b, tb)) for c, d in zip(t, x.shape)}
    batch = [c for c in ta if c in tb and c in out]
    contract = [c for c in ta if c in tb and c not in out]
    left = [c for c in ta if c not in tb]
    right = [c for c in tb if c not in ta]
    size = lambda cs: dim_mul(*(dims[c] for c in cs)) if cs else 1  # noqa: E731
    a3 = F.reshape(_permute(a, ta, "".join(batch + left + contract)),
                   tuple(dims[c] for c in batch) + (size(left), size(contract)))
    b3 = F.reshape(_permute(b, tb, "".join(batch + contract + right)),
                   tuple(dims[c] for c in batch) + (size(contract), size(right)))
    y = F.matmul(a3, b3)
    order = "".join(batch + left + right)
    y = F.reshape(y, tuple(dims[c] for c in order))
    return _permute(y, order, out)
