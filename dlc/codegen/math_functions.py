"""The math functions an op's scalar template may call, and how each dialect spells them.

A template (OpDef.scalar) calls functions by their name here: "exp({0})",
"max({0}, 0)". Adding one means one row below, plus its implementation where a
dialect has no builtin: dlc/kernels/cpu/fastmath.py for numba,
dlc/kernels/cuda/prelude.cu (overloaded per dtype) for CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MathFunction:
    numba: str | None                     # the numba spelling for every dtype without a special one
    cuda: str                             # the CUDA spelling (a prelude.cu overload set)
    numba_by_dtype: dict[str, str] = field(default_factory=dict)  # vectorizable versions from fastmath.py


FUNCTIONS: dict[str, MathFunction] = {
    "exp": MathFunction("math.exp", "dlc_exp", {"float32": "exp_f32"}),
    "log": MathFunction("math.log", "dlc_log"),
    "sqrt": MathFunction("np.sqrt", "dlc_sqrt"),
    "tanh": MathFunction("math.tanh", "dlc_tanh", {"float32": "tanh_f32"}),
    "sigmoid": MathFunction(None, "dlc_sigmoid", {"float32": "sigmoid_f32", "float64": "sigmoid_f64"}),
    "softplus": MathFunction(None, "dlc_softplus", {"float32": "softplus_f32", "float64": "softplus_f64"}),
    "erf": MathFunction("math.erf", "dlc_erf", {"float32": "erf_f32"}),
    "sin": MathFunction("math.sin", "dlc_sin"),
    "cos": MathFunction("math.cos", "dlc_cos"),
    "pow": MathFunction("pow_", "dlc_pow"),
    "abs": MathFunction("abs", "dlc_abs"),
    "sign": MathFunction("fsign", "dlc_sign"),
    "max": MathFunction("fmax", "dlc_max"),   # NaN-propagating, like numpy's maximum
    "min": MathFunction("fmin", "dlc_min"),
    "select": MathFunction("select", "dlc_select"),
    "and_": MathFunction("and_", "dlc_and"),
    "or_": MathFunction("or_", "dlc_or"),
    "not_": MathFunction("not_", "dlc_not"),
    "floordiv": MathFunction("floordiv", "dlc_floordiv"),  # integer division rounding down, as numpy's
}


def numba_name(name: str, dtype: str) -> str | None:
    """The numba function a template's `name(` becomes when it computes in dtype (None: none exists)."""
    f = FUNCTIONS.get(name)
    return None if f is None else f.numba_by_dtype.get(dtype, f.numba)


def cuda_name(name: str) -> str | None:
    f = FUNCTIONS.get(name)
    return None if f is None else f.cuda
