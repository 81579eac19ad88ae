"""Every op dlc knows, one module per family; importing this package registers them all."""

from . import elementwise, linalg, reduce, shape, source  # noqa: F401  (registration)
from . import conv, pool, random  # noqa: F401  (registration: convolution, pooling, random numbers)
from . import scan  # noqa: F401  (registration: loops over a traced body)
from .base import COMPLEX, ELEMENTWISE, INJECTIVE, KINDS, OPAQUE, OPS, REDUCE, SOURCE, OpDef, apply, register

__all__ = ["OPS", "OpDef", "apply", "register", "KINDS", "ELEMENTWISE", "INJECTIVE", "REDUCE", "COMPLEX",
           "OPAQUE", "SOURCE"]
