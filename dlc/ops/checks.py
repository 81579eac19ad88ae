"""Attribute checks shared by the shape rules: every attribute is validated where a node is built or decoded.

A shape rule runs for nodes the DSL builds and for nodes decoded from an
artifact (dlc/serialize.py re-runs it), so these checks are what keeps a
crafted attribute (a negative dilation, a stride of 2**40, a bool where an
int belongs) from reaching a backend. Each raises ShapeError naming the
attribute and the value.
"""

from __future__ import annotations

import math

from ..errors import ShapeError
from ..graph import as_shape

# Attribute ints beyond this are refused: no real stride, padding, size or
# axis comes near it, and it keeps index arithmetic far from int64 overflow.
MAX_ATTR_INT = 2 ** 31 - 1


def is_int(v) -> bool:
    """A plain int, not a bool (True is an int to Python, never a size here)."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(v, what: str, low: int | None = None, high: int = MAX_ATTR_INT) -> int:
    """v is an int in [low, high]."""
    if not is_int(v):
        raise ShapeError(f"{what} must be an int, got {v!r}")
    if (low is not None and v < low) or v > high:
        bounds = f">= {low}" if high == MAX_ATTR_INT else f"in [{low}, {high}]"
        raise ShapeError(f"{what} must be {bounds}, got {v!r}")
    return v


def check_ints(v, n: int | None, what: str, low: int | None = None, high: int = MAX_ATTR_INT) -> tuple:
    """v is a tuple (or list) of ints in [low, high], of length n when n is given."""
    if not isinstance(v, (tuple, list)) or (n is not None and len(v) != n):
        count = f"{n} " if n is not None else ""
        raise ShapeError(f"{what} must be a tuple of {count}ints, got {v!r}")
    for x in v:
        check_int(x, what, low, high)
    return tuple(v)


def check_pairs(v, n: int, what: str) -> tuple:
    """v is n (before, after) pairs of ints >= 0 (padding)."""
    if not isinstance(v, (tuple, list)) or len(v) != n:
        raise ShapeError(f"{what} must be {n} (before, after) pairs, got {v!r}")
    for pair in v:
        check_ints(pair, 2, what, 0)
    return tuple(tuple(p) for p in v)


def check_bool(v, what: str) -> bool:
    if not isinstance(v, bool):
        raise ShapeError(f"{what} must be a bool, got {v!r}")
    return v


def check_float(v, what: str, finite: bool = True) -> float:
    """A float (an int is accepted); NaN and infinities only when finite is False."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (finite and not math.isfinite(v)):
        raise ShapeError(f"{what} must be a {'finite ' if finite else ''}float, got {v!r}")
    return float(v)


def check_axes(axes, ndim: int, what: str = "axes") -> tuple:
    """Distinct axes in [0, ndim)."""
    axes = check_ints(axes, None, what)
    for ax in axes:
        if not 0 <= ax < ndim:
            raise ShapeError(f"axis {ax} is out of range for a {ndim}-d tensor")
    if len(set(axes)) != len(axes):
        raise ShapeError(f"{what} {axes} repeat an axis")
    return axes


def check_shape(shape, what: str = "shape") -> tuple:
    """A shape: ints >= 0 or symbolic dims (names, or products like "B*T")."""
    if not isinstance(shape, (tuple, list)):
        raise ShapeError(f"{what} must be a tuple of dims, got {shape!r}")
    for d in shape:
        if isinstance(d, str):
            try:
                as_shape((d,))
            except (TypeError, ValueError) as err:
                raise ShapeError(f"{what}: {err}") from None
        else:
            check_int(d, what, 0)
    return tuple(shape)

