"""Errors a user sees: each names what was wrong and where."""


class DlcError(Exception):
    """Base class of every error dlc raises on purpose."""


class ShapeError(DlcError, ValueError):
    """Shapes that do not fit an op, or a call's argument of the wrong shape."""


class DTypeError(DlcError, TypeError):
    """A dtype an op does not accept, or a call's argument of the wrong dtype."""


class GradientError(DlcError):
    """A gradient that dlc cannot build (for example a second-order one)."""


class ArtifactError(DlcError):
    """A corrupt, tampered, foreign or newer-version artifact file."""


class IndexRangeError(DlcError, IndexError):
    """An index (take) or class label (one_hot, the classification losses) outside what the op accepts.

    Raised at run time by every backend: the numpy references, the generated
    Numba code (which raises it before writing anything) and the CUDA runtime
    (from the status word a kernel sets). `where` is " at file:line" of the
    user's line that built the op, or "".
    """

    def __init__(self, op: str, value: int, low: int, high: int, where: str = ""):
        self.op, self.value, self.low, self.high = str(op), int(value), int(low), int(high)
        if self.op.startswith("take"):
            what = f"index {self.value} is out of range [{self.low}, {self.high}) for an axis of size {self.high}"
        else:
            what = f"label {self.value} is out of range [{self.low}, {self.high}) for {self.high} classes"
        super().__init__(f"{self.op}{where}: {what}")
        self.where = str(where)

    def __reduce__(self):
        return type(self), (self.op, self.value, self.low, self.high, self.where)

    def located(self, loc) -> "IndexRangeError":
        """The same error naming the user's line `loc` (a SourceLoc or None), unless it already names one."""
        if self.where or loc is None:
            return self
        return type(self)(self.op, self.value, self.low, self.high, f" at {loc}")


class DistributedError(DlcError):
    """Ranks that disagree (different programs or parameters), or a collective that cannot run."""


class CollectiveTimeoutError(DistributedError):
    """A collective whose ranks did not all arrive within the time limit (dlc/distributed.py).

    `where` is " at file:line" of the user's line that built the op, or "";
    `details` says which ranks had arrived and which had not.
    """

    def __init__(self, op: str, details: str, where: str = ""):
        self.op, self.details, self.where = str(op), str(details), str(where)
        super().__init__(f"{self.op}{self.where}: {self.details}")

    def __reduce__(self):
        return type(self), (self.op, self.details, self.where)

    def located(self, loc) -> "CollectiveTimeoutError":
        """The same error naming the user's line `loc` (a SourceLoc or None), unless it already names one."""
        if self.where or loc is None:
            return self
        return type(self)(self.op, self.details, f" at {loc}")


class DTypeWarning(UserWarning):
    """Data converted to a narrower dtype on its way in (float64 arrays to float32): said once per entry point."""
