"""Loss functions, numerically stable at extreme logits, and their module forms.

Every loss takes reduction="mean" | "sum" | "none". Classification losses work
on logits through log_softmax and softplus, which never exponentiate a
positive number, so logits of +-1e4 give finite losses and gradients.
"""

from __future__ import annotations

import operator

import dlc.functional as F

from ..errors import DTypeError, ShapeError
from ..graph import INT_DTYPES, shape_str, user_location
from .module import Module

REDUCTIONS = ("mean", "sum", "none")


def _where() -> str:
    loc = user_location()
    return f" at {loc}" if loc else ""


def _reduce(loss, reduction: str):
    if reduction == "mean":
        return F.mean(loss)
    if reduction == "sum":
        return F.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _classes_last(x, labels, what: str):
    """Logits (N, C) or (N, C, d1, ...) with labels (N,) or (N, d1, ...): move the class axis last."""
    if labels.dtype not in INT_DTYPES:
        raise DTypeError(f"{what}{_where()}: labels must be int32 or int64 class indices, got {labels.dtype}")
    if x.ndim < 2 or x.ndim != labels.ndim + 1 or tuple(x.shape[:1] + x.shape[2:]) != tuple(labels.shape):
        raise ShapeError(f"{what}{_where()}: expected scores (N, C, ...) and labels (N, ...), got scores "
                         f"{shape_str(x.shape)} and labels {shape_str(labels.shape)}")
    if x.ndim > 2:
        x = F.transpose(x, (0,) + tuple(range(2, x.ndim)) + (1,))
    return x


def _check_ignore_index(ignore_index):
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not hasattr(type(ignore_index), "__index__"):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    return operator.index(ignore_index)


def _reduce_labelled(per_row, hot, reduction: str, ignore_index):
    """Reduce per-row losses; "mean" divides by the rows whose label is not ignored, as PyTorch."""
    if reduction == "mean" and ignore_index is not None:
        return F.sum(per_row) / F.sum(hot)
    return _reduce(per_row, reduction)


def nll_loss(log_probs, labels, reduction: str = "mean", ignore_index: int | None = -100):
    """-log_probs[label] per sample; log_probs (N, C, ...) as log_softmax gives them, labels (N, ...).

    Labels must be in [0, C): any other label raises IndexRangeError (an
    IndexError) when the function runs, on every target, except a label equal
    to ignore_index (-100 by default, as PyTorch; None ignores nothing): such
    rows contribute 0 and the mean is over the other rows.
    """
    lp = _classes_last(log_probs, labels, "nll_loss")
    hot = F.one_hot(labels, lp.shape[-1], lp.dtype, _check_ignore_index(ignore_index))
    return _reduce_labelled(-F.sum(lp * hot, axis=-1), hot, reduction, ignore_index)


def cross_entropy(logits, labels, reduction: str = "mean", label_smoothing: float = 0.0,
                  ignore_index: int | None = -100):
    """Softmax cross-entropy from logits (N, C, ...) and integer labels (N, ...).

    With label smoothing e the target is (1 - e) * one_hot + e / C. Labels must
    be in [0, C) (else IndexRangeError at run time, on every target), except
    a label equal to ignore_index (-100 by default, as PyTorch; None ignores
    nothing): such rows contribute 0 and the mean is over the other rows.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    z = _classes_last(logits, labels, "cross_entropy")
    lp = F.log_softmax(z, axis=-1)
    hot = F.one_hot(labels, z.shape[-1], z.dtype, _check_ignore_index(ignore_index))
    nll = -F.sum(lp * hot, axis=-1)
    if label_smoothing:
        smooth = -F.mean(lp, axis=-1)
        if ignore_index is not None:
            smooth = smooth * F.sum(hot, axis=-1)  # 0 on ignored rows
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    return _reduce_labelled(nll, hot, reduction, ignore_index)


def _same_shape(a, b, what: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ShapeError(f"{what}{_where()}: input {shape_str(a.shape)} and target {shape_str(b.shape)} "
                         f"must have the same shape")


def binary_cross_entropy_with_logits(logits, targets, reduction: str = "mean", pos_weight=None):
    """-[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))], computed as softplus(x) - x*y (stable for any x).

    pos_weight (a scalar or one value per class) scales the positive term.
    """
    _same_shape(logits, targets, "binary_cross_entropy_with_logits")
    if pos_weight is None:
        loss = F.softplus(logits) - logits * targets
    else:
        # y * pw * softplus(-x) + (1 - y) * softplus(x)
        loss = targets * pos_weight * F.softplus(-logits) + (1.0 - targets) * F.softplus(logits)
    return _reduce(loss, reduction)


def binary_cross_entropy(probs, targets, reduction: str = "mean"):
    """BCE on probabilities; the logs are clamped at -100 as in PyTorch (prefer the _with_logits form)."""
    _same_shape(probs, targets, "binary_cross_entropy")
    log_p = F.maximum(F.log(probs), -100.0)
    log_1mp = F.maximum(F.log(1.0 - probs), -100.0)
    return _reduce(-(targets * log_p + (1.0 - targets) * log_1mp), reduction)


def mse_loss(input, target, reduction: str = "mean"):  # noqa: A002  (the conventional name)
    _same_shape(input, target, "mse_loss")
    return _reduce(F.square(input - target), reduction)


def l1_loss(input, target, reduction: str = "mean"):  # noqa: A002
    _same_shape(input, target, "l1_loss")
    return _reduce(F.abs(input - target), reduction)


def accuracy(logits, labels):
    """The fraction of rows whose largest logit is at the label (a metric, not differentiable)."""
    return F.mean(F.cast(F.equal(F.argmax(logits, axis=1), F.cast(labels, "int64")), logits.dtype))


class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0, ignore_index: int | None = -100):
        super().__init__(reduction)
        self.label_smoothing = label_smoothing
        self.ignore_index = _check_ignore_index(ignore_index)

    def forward(self, logits, labels):
        return cross_entropy(logits, labels, self.reduction, self.label_smoothing, self.ignore_index)


class NLLLoss(_Loss):
    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100):
        super().__init__(reduction)
        self.ignore_index = _check_ignore_index(ignore_index)

    def forward(self, log_probs, labels):
        return nll_loss(log_probs, labels, self.reduction, self.ignore_index)


class BCEWithLogitsLoss(_Loss):
    def __init__(self, reduction: str = "mean", pos_weight=None):
        super().__init__(reduction)
        self.pos_weight = pos_weight

    def forward(self, logits, targets):
        return binary_cross_entropy_with_logits(logits, targets, self.reduction, self.pos_weight)


class BCELoss(_Loss):
    def forward(self, probs, targets):
        return binary_cross_entropy(probs, targets, self.reduction)


class MSELoss(_Loss):
    def forward(self, input, target):  # noqa: A002
        return mse_loss(input, target, self.reduction)


class L1Loss(_Loss):
    def forward(self, input, target):  # noqa: A002
        return l1_loss(input, target, self.reduction)
