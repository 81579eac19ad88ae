"""ONNX MatMul, Gemm and Einsum (the forms that are a batched matrix product, a transpose or a sum)."""

from __future__ import annotations

import numpy as np

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


def _parse(n, equation: str, xs):
    """The operand terms and the output term, an ellipsis spelled out as letters the equation does not use (numpy's
    rule: the ellipsis dims are right-aligned across operands and lead the implicit output)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(xs):
        raise n.invalid(f"equation {equation!r} has {len(terms)} operands, the node {len(xs)}")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
    ranks = [x.ndim - (len(t) - 3) for x, t in zip(xs, terms) if "..." in t]
    if any(r < 0 for r in ranks) or len(spare) < max(ranks, default=0):
        raise n.invalid(f"equation {equation!r} does not fit the operands' ranks")
    ellipsis = "".join(spare[:max(ranks, default=0)])
    for k, (x, t) in enumerate(zip(xs, terms)):
        if "..." in t:
            terms[k] = t.replace("...", ellipsis[len(ellipsis) - (x.ndim - (len(t) - 3)):])
        if len(terms[k]) != x.ndim:
            raise n.invalid(f"term {t!r} of equation {equation!r} names {len(terms[k])} dims of a rank-{x.ndim} "
                            f"operand")
    if not arrow:
        letters = sorted(c for c in set(lhs.replace(",", "").replace(".", "")) if lhs.count(c) == 1)
        rhs = ellipsis + "".join(letters)
    rhs = rhs.replace("...", ellipsis)
    if len(set(rhs)) != len(rhs):
        raise n.unsupported(f"a repeated subscript in the output {rhs!r}", "distinct output subscripts")
    return terms, rhs


def _diagonals(x, term: str):
    """x with each subscript repeated in its term (a diagonal, "ii") taken once: the diagonal, gathered from the
    two axes flattened into one."""
    while len(set(term)) != len(term):
        c = next(c for c in term if term.count(c) > 1)
        p, q = term.index(c), term.index(c, term.index(c) + 1)
        if x.shape[p] != x.shape[q]:
            raise ValueError(f"subscript {c!r} labels dims of sizes {x.shape[p]} and {x.shape[q]}")
        rest = [k for k in range(x.ndim) if k not in (p, q)]
        size = x.shape[p]
        flat = F.reshape(F.transpose(x, rest + [p, q]), tuple(x.shape[k] for k in rest) + (dim_mul(size, size),))
        x = F.take(flat, F.constant(np.arange(size, dtype=np.int64) * (size + 1)), axis=len(rest))
        term = "".join(term[k] for k in rest) + c
    return x, term


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
    terms, out = _parse(n, n.attr("equation"), xs)
    xs, terms = zip(*(_diagonals(x, t) for x, t in zip(xs, terms)))
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
