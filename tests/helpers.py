"""Shared test utilities: run a DSL function on numpy arrays, and check gradients by central differences."""

from __future__ import annotations

import numpy as np

import dlc
from dlc.graph import Graph

# Central-difference step and tolerances per dtype. float64 is the one to
# trust; float32 is for layers whose parameters are float32 by default.
_FD = {
    "float64": {"eps": 1e-6, "rtol": 1e-5, "atol": 1e-6},
    "float32": {"eps": 1e-2, "rtol": 3e-2, "atol": 3e-3},
}


def _as_inputs(arrays):
    """dlc.input tensors shaped like the arrays: (positional tensors, keyword tensors, feeds by name)."""
    if isinstance(arrays, dict):
        items = list(arrays.items())
    else:
        items = [(f"x{i}", a) for i, a in enumerate(arrays)]
    feeds = {name: np.asarray(a) for name, a in items}
    tensors = {name: dlc.input(name, a.shape, a.dtype.name) for name, a in feeds.items()}
    if isinstance(arrays, dict):
        return [], tensors, feeds
    return list(tensors.values()), {}, feeds


def run(build, *arrays, target="reference", **compile_options):
    """Trace build(*inputs) on inputs shaped like the arrays, compile it and run it once."""
    args, kwargs, feeds = _as_inputs(list(arrays))
    outputs = build(*args, **kwargs)
    fn = dlc.compile(outputs, inputs=args, target=target, **compile_options)
    return fn(**feeds)


def _projected(out, rng):
    """A scalar from any float output: a fixed random weighting catches errors a plain sum would miss."""
    if out.shape == ():
        return out
    weights = rng.uniform(0.5, 1.5, size=tuple(out.shape)).astype(out.dtype)
    return dlc.sum(out * dlc.constant(weights, dtype=out.dtype))


def _entries(size, max_entries, rng):
    if size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, max_entries, replace=False))


def _numeric_grad(loss_at, base: np.ndarray, eps: float, entries) -> np.ndarray:
    """Central differences of loss_at(array) along the chosen flat entries of base (others left at 0)."""
    flat = base.reshape(-1)
    grad = np.zeros(flat.shape, dtype=np.float64)
    for k in entries:
        old = flat[k]
        flat[k] = old + eps
        hi = float(loss_at())
        flat[k] = old - eps
        lo = float(loss_at())
        flat[k] = old
        grad[k] = (hi - lo) / (2 * eps)
    return grad.reshape(base.shape)


def check_grad(build, arrays, *, params=False, target="reference", max_entries=48, eps=None, rtol=None,
               atol=None, seed=0):
    """Check dlc.grad of build(*inputs) against central finite differences.

    build: called with one dlc.input per array (positionally for a list, by
        name for a dict); returns a float Tensor of any shape. A non-scalar
        output is reduced with fixed random weights.
    arrays: numpy arrays; float ones are differentiated, integer ones (ids,
        labels) are fed as they are.
    params: also differentiate every trainable parameter the loss reads
        (perturbing its value in the store), for layers that create their own.
    max_entries: at most this many randomly chosen entries of each array are
        perturbed, so large tensors stay cheap.
    Returns {name: analytic gradient} for further checks.
    """
    rng = np.random.default_rng(seed)
    args, kwargs, feeds = _as_inputs(arrays)
    feeds = {k: v.copy() for k, v in feeds.items()}
    out = build(*args, **kwargs)
    if not dlc.graph.is_float(out.dtype):
        raise TypeError(f"check_grad needs a float output, got {out.dtype}")
    loss = _projected(out, rng)
    inputs = args or list(kwargs.values())
    wrt = {t.name: t for t in inputs if dlc.graph.is_float(t.dtype)}
    store = dlc.default_store()
    if params:
        for node in Graph([loss.node]).params():
            if store.is_trainable(node.attr("name")):
                wrt["param:" + node.attr("name")] = dlc.Tensor(node)
    if not wrt:
        raise ValueError("check_grad: nothing to differentiate (no float inputs or parameters)")
    grads = dlc.grad(loss, list(wrt.values()))
    grad_fn = dlc.compile([loss] + grads, inputs=inputs, target=target)
    loss_fn = dlc.compile(loss, inputs=inputs, target=target)
    analytic = dict(zip(wrt, grad_fn(**feeds)[1:]))

    for name, tensor in wrt.items():
        base = store[name[len("param:"):]] if name.startswith("param:") else feeds[name]
        tol = _FD[tensor.dtype]
        entries = _entries(base.size, max_entries, rng)
        numeric = _numeric_grad(lambda: loss_fn(**feeds), base, eps or tol["eps"], entries)
        got = np.asarray(analytic[name], dtype=np.float64).reshape(-1)[entries]
        want = numeric.reshape(-1)[entries]
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        np.testing.assert_allclose(
            got, want, rtol=rtol or tol["rtol"], atol=(atol or tol["atol"]) * scale,
            err_msg=f"gradient of {name} (shape {base.shape}) differs from central differences "
                    f"at flat entries {list(entries)}")
    return analytic


def rand(rng, shape, dtype="float64", lo=-2.0, hi=2.0):
    """Uniform random values of a shape and dtype."""
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def away_from(rng, shape, points=(0.0,), margin=0.1, dtype="float64", lo=-2.0, hi=2.0):
    """Random values at least `margin` away from each point (kinks of relu, abs, clip)."""
    x = rand(rng, shape, "float64", lo, hi)
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin) * 2
    return x.astype(dtype)
