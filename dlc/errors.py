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


class DTypeWarning(UserWarning):
    """Data converted to a narrower dtype on its way in (float64 arrays to float32): said once per entry point."""
