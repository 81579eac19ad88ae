"""The parameter store: weights, optimizer state and statistics shared by compiled functions."""

from __future__ import annotations

import re

import numpy as np


class Store:
    """Named arrays that live between calls.

    Compiled functions read parameters from their store at every call and
    write updates back in place, so several functions (a GAN's discriminator
    and generator steps) share one set of weights. Values keep their shape and
    dtype for life: assignment copies into the existing array.
    """

    def __init__(self):
        self._values: dict[str, np.ndarray] = {}
        self._trainable: dict[str, bool] = {}

    def add(self, name: str | None, value, trainable: bool = True) -> str:
        """Add a value under a fresh key (name, or name_1, name_2, ... if taken); returns the key."""
        base = name or "param"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", base):
            raise ValueError(f"parameter name {base!r} must be letters, digits, '_' and '.'")
        key, i = base, 0
        while key in self._values:
            i += 1
            key = f"{base}_{i}"
        arr = np.array(value, copy=True, order="C")
        self._values[key] = arr
        self._trainable[key] = trainable
        return key

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def _device_sync(self) -> None:
        """Copy back values a device holds newer copies of (a CUDA step's updates) before a host read."""
        for device_copy in self.__dict__.get("_device_hooks", ()):
            device_copy.sync()

    def __getitem__(self, key: str) -> np.ndarray:
        self._device_sync()
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(f"no parameter {key!r} in this store") from None

    def __setitem__(self, key: str, value) -> None:
        cur = self[key]
        value = np.asarray(value)
        if value.shape != cur.shape:
            raise ValueError(f"parameter {key!r} has shape {cur.shape}, cannot assign shape {value.shape}")
        np.copyto(cur, value.astype(cur.dtype, copy=False))
        for device_copy in self.__dict__.get("_device_hooks", ()):
            device_copy.invalidate(key)  # the host value is now the newest: upload it again

    def keys(self):
        return list(self._values)

    def items(self):
        self._device_sync()
        return list(self._values.items())

    def is_trainable(self, key: str) -> bool:
        return self._trainable[key]

    def __len__(self) -> int:
        return len(self._values)

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._values.values())

    def __repr__(self) -> str:
        return f"Store({len(self)} arrays, {self.nbytes() / 1e6:.2f} MB)"


_DEFAULT = Store()


def default_store() -> Store:
    return _DEFAULT


def reset_default_store() -> Store:
    """Start a fresh default store (scripts that build several models in one process)."""
    global _DEFAULT
    _DEFAULT = Store()
    return _DEFAULT
