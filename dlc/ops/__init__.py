"""Every op dlc knows, one module per family; importing this package registers them all."""

from . import (  # noqa: F401  (registration)  # noqa: F401  (registration: convolution, pooling, random numbers)
           attention,  # noqa: F401  (registration: fused scaled dot-product attention)
           collective,  # noqa: F401  (registration: MPI collectives, host calls)
           conv,
           elementwise,
           linalg,
           norm,  # noqa: F401  (registration: fused layer normalization)
           pool,
           random,
           reduce,
           scan,  # noqa: F401  (registration: loops over a traced body)
           shape,
           source,
)
from .base import COMPLEX, ELEMENTWISE, INJECTIVE, KINDS, OPAQUE, OPS, REDUCE, SOURCE, OpDef, apply, register

__all__ = ["OPS", "OpDef", "apply", "register", "KINDS", "ELEMENTWISE", "INJECTIVE", "REDUCE", "COMPLEX",
           "OPAQUE", "SOURCE"]
