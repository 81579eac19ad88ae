"""Normalization layers: BatchNorm1d/2d (batch statistics in training, running statistics in eval) and LayerNorm."""

from __future__ import annotations

import numpy as np

import dlc.functional as F
import dlc.nn.init as init

from ..errors import ShapeError
from ..graph import shape_str, user_location
from .module import Module, current_state, record_update


def _where() -> str:
    loc = user_location()
    return f" at {loc}" if loc else ""


class _BatchNorm(Module):
    """Normalizes over every axis but the channel axis (1).

    Training: the batch mean and biased variance normalize; the running mean
    and the unbiased variance move by `momentum` (PyTorch's convention:
    running = (1 - momentum) * running + momentum * batch). Eval: the running
    statistics normalize. In data-parallel training each rank normalizes with
    its own batch's statistics; sync=True averages them over the ranks (two
    all_reduces per layer; every rank's batch must have the same size), so N
    ranks compute what one process with the N batches together would.
    """

    ndims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 sync: bool = False):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.sync = sync
        if affine:
            self.add_param("weight", init.ones((num_features,)))
            self.add_param("bias", init.zeros((num_features,)))
        self.add_param("running_mean", init.zeros((num_features,)), trainable=False)
        self.add_param("running_var", init.ones((num_features,)), trainable=False)

    def _check(self, x) -> None:
        if x.ndim not in self.ndims or x.shape[1] != self.num_features:
            want = " or ".join(f"{n}-d" for n in self.ndims)
            raise ShapeError(f"{type(self).__name__}({self.num_features}){_where()}: expected a {want} input "
                             f"with {self.num_features} channels on axis 1, got {shape_str(x.shape)}")

    def forward(self, x):
        self._check(x)
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, self.num_features) + (1,) * (x.ndim - 2)
        if self.training:
            mean, var, n = self._batch_statistics(x, axes)
            self._update_running(F.reshape(mean, (self.num_features,)), F.reshape(var, (self.num_features,)), n)
        else:
            mean = F.reshape(self.running_mean, bshape)
            var = F.reshape(self.running_var, bshape)
        y = (x - mean) * F.rsqrt(var + self.eps)
        if self.affine:
            y = y * F.reshape(self.weight, bshape) + F.reshape(self.bias, bshape)
        return y

    def _batch_statistics(self, x, axes):
        """(mean, biased variance, rows) of this rank's batch, or of every rank's batches with sync."""
        if not self.sync:
            return F.mean(x, axes, keepdims=True), F.var(x, axes, keepdims=True), F.size(x, axes)
        from .. import distributed

        mean = distributed.all_reduce(F.mean(x, axes, keepdims=True), "mean")
        var = distributed.all_reduce(F.mean(F.square(x - mean), axes, keepdims=True), "mean", after=mean)
        return mean, var, F.size(x, axes) * distributed.world_size()

    def _update_running(self, mean, var, n) -> None:
        m = self.momentum
        unbiased = var * (n / F.maximum(n - 1.0, 1.0))
        rm, rv = current_state(self.running_mean), current_state(self.running_var)
        record_update(self, self.running_mean, F.stop_gradient((1.0 - m) * rm + m * mean))
        record_update(self, self.running_var, F.stop_gradient((1.0 - m) * rv + m * unbiased))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}" + \
            (", sync=True" if self.sync else "")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs."""

    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs."""

    ndims = (4,)


class LayerNorm(Module):
    """Normalizes over the trailing dims given by normalized_shape, with a per-element scale and shift."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = tuple(int(d) for d in shape), eps, elementwise_affine
        if elementwise_affine:
            self.add_param("weight", init.ones(self.normalized_shape), dtype=dtype)
            self.add_param("bias", init.zeros(self.normalized_shape), dtype=dtype)

    def forward(self, x):
        k = len(self.normalized_shape)
        if tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            raise ShapeError(f"LayerNorm{self.normalized_shape}{_where()}: the input's last dims must be "
                             f"{self.normalized_shape}, got {shape_str(x.shape)}")
        if self.elementwise_affine:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
