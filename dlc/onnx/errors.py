"""The errors an ONNX import raises: a malformed model, or an op/attribute dlc does not map."""

from ..errors import DlcError


class OnnxImportError(DlcError, ValueError):
    """A model file that is not valid ONNX, or one dlc refuses to read (cycles, sizes, external paths)."""


class UnsupportedError(OnnxImportError):
    """An ONNX op, attribute, dtype or opset that dlc does not map; the message names what is supported."""
