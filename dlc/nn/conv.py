"""Convolution and pooling layers (NCHW / NCL), over the dlc.conv*/pool ops."""

from __future__ import annotations

import dlc.nn.init as init

from ..ops.conv import conv1d, conv2d, conv_transpose2d
from ..ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .module import Module


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


class _ConvNd(Module):
    """Shared weight/bias setup: weight (out, in/groups, *kernel), PyTorch's default init."""

    def __init__(self, in_channels, out_channels, kernel_size: tuple, stride, padding, dilation, groups, bias,
                 rng, weight_shape: tuple):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.add_param("weight", init.default_weight(weight_shape, rng))
        fan_in = init.fans(weight_shape)[0]
        self.bias = self.add_param("bias", init.default_bias(out_channels, fan_in, rng)) if bias else None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}" + (f", groups={self.groups}" if self.groups != 1 else "")
                + ("" if self.bias is not None else ", bias=False"))


class Conv1d(_ConvNd):
    """x (N, C_in, L) -> (N, C_out, L_out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True, rng=None):
        k = int(kernel_size)
        super().__init__(in_channels, out_channels, k, stride, padding, dilation, groups, bias, rng,
                         (out_channels, in_channels // groups, k))

    def forward(self, x):
        return conv1d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation, groups=self.groups)


class Conv2d(_ConvNd):
    """x (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, rng=None):
        k = _pair(kernel_size)
        super().__init__(in_channels, out_channels, k, stride, padding, dilation, groups, bias, rng,
                         (out_channels, in_channels // groups) + k)

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation, groups=self.groups)


class ConvTranspose2d(_ConvNd):
    """The gradient of Conv2d with respect to its input, used to upsample; weight (C_in, C_out/groups, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, rng=None):
        k = _pair(kernel_size)
        # PyTorch computes the default init's fan-in from dim 1 of this weight (C_out/groups * kh * kw)
        super().__init__(in_channels, out_channels, k, stride, padding, dilation, groups, bias, rng,
                         (in_channels, out_channels // groups) + k)
        self.output_padding = output_padding

    def forward(self, x):
        return conv_transpose2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                  output_padding=self.output_padding, groups=self.groups, dilation=self.dilation)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x):
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
