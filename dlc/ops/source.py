"""Source nodes: graph inputs, parameters (values in a Store) and constants."""

from __future__ import annotations

from .base import SOURCE, register


def _no_ref(xs, a, shape):
    raise RuntimeError("source nodes are bound by the executor, not computed")


def _infer_from_attrs(xs, attrs):
    raise RuntimeError("source nodes are built with their shape and dtype given")


# "input": attrs name; fed by the caller at each call.
register("input", SOURCE, _infer_from_attrs, _no_ref)
# "param": attrs name (the key in a Store); read from the store, written back by updates.
register("param", SOURCE, _infer_from_attrs, _no_ref)
# "const": attrs digest of the value; the array is in Node.value.
register("const", SOURCE, _infer_from_attrs, _no_ref)
