"""dlc.nn.functional: the losses and the layer functions in one namespace (as torch.nn.functional)."""

from ..functional import (  # noqa: F401
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    softmax,
    softplus,
    tanh,
)
from .losses import (  # noqa: F401
    accuracy,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    l1_loss,
    mse_loss,
    nll_loss,
)


def __getattr__(name):
    # the convolution, pooling and dropout functions live in dlc's core ops
    from .. import functional as core

    if name in ("conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                "dropout") and hasattr(core, name):
        return getattr(core, name)
    raise AttributeError(f"module 'dlc.nn.functional' has no attribute {name!r}")
