"""Weight initializers: numpy arrays drawn with the conventional fan-in/fan-out scalings.

Each function takes a shape and returns a float32 array. Randomness comes from
`rng` (a seed or a numpy Generator), else from the module-wide generator that
`manual_seed` resets, so a script with a fixed seed builds the same model.
Fans follow the usual definition for (out, in, *kernel) weights:
fan_in = in * prod(kernel), fan_out = out * prod(kernel).
"""

from __future__ import annotations

import math

import numpy as np

_GLOBAL = [np.random.default_rng(0)]


def manual_seed(seed: int) -> None:
    """Reset the generator that initializers (and dropout seeds) draw from when given no rng."""
    _GLOBAL[0] = np.random.default_rng(seed)


def generator(rng=None) -> np.random.Generator:
    """A numpy Generator from a seed, a Generator, or None (the module-wide one)."""
    if rng is None:
        return _GLOBAL[0]
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel)."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fan-in and fan-out need a weight with at least 2 dims, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (as in the Kaiming and Glorot papers)."""
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope * slope))
    if nonlinearity == "selu":
        return 0.75
    raise ValueError(f"no gain known for nonlinearity {nonlinearity!r}")


def _fan(shape, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(shape)
    return fan_in if mode == "fan_in" else fan_out


def zeros(shape) -> np.ndarray:
    return np.zeros(shape, np.float32)


def ones(shape) -> np.ndarray:
    return np.ones(shape, np.float32)


def constant(shape, value: float) -> np.ndarray:
    return np.full(shape, value, np.float32)


def uniform(shape, low: float = 0.0, high: float = 1.0, rng=None) -> np.ndarray:
    return generator(rng).uniform(low, high, shape).astype(np.float32)


def normal(shape, mean: float = 0.0, std: float = 1.0, rng=None) -> np.ndarray:
    return generator(rng).normal(mean, std, shape).astype(np.float32)


def xavier_uniform(shape, gain: float = 1.0, rng=None) -> np.ndarray:
    """Glorot & Bengio (2010): U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -a, a, rng)


def xavier_normal(shape, gain: float = 1.0, rng=None) -> np.ndarray:
    """Glorot & Bengio (2010): N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return normal(shape, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng)


def kaiming_uniform(shape, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    rng=None) -> np.ndarray:
    """He et al. (2015): U(-b, b) with b = gain * sqrt(3 / fan)."""
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(shape, mode))
    return uniform(shape, -bound, bound, rng)


def kaiming_normal(shape, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                   rng=None) -> np.ndarray:
    """He et al. (2015): N(0, std^2) with std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    return normal(shape, 0.0, std, rng)


glorot_uniform, glorot_normal = xavier_uniform, xavier_normal
he_uniform, he_normal = kaiming_uniform, kaiming_normal


def default_weight(shape, rng=None) -> np.ndarray:
    """The default of Linear and convolution layers: kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in))."""
    return kaiming_uniform(shape, a=math.sqrt(5.0), rng=rng)


def default_bias(n: int, fan_in: int, rng=None) -> np.ndarray:
    """The default bias of Linear and convolution layers: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform((n,), -bound, bound, rng)
