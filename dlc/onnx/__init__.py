"""ONNX import: `dlc.onnx.load_model("net.onnx", target="cpu")` compiles a model dlc did not write.

Needs the `onnx` package (pip install 'dlc[onnx]'); `import dlc` does not. The op
mappings live in dlc/onnx/ops/, one function per ONNX op, grouped by family.
"""

from .errors import OnnxImportError, UnsupportedError
from .importer import OnnxModule, describe_import, load_model, to_module
from .reader import MAX_OPSET, MIN_OPSET


def supported_ops() -> list[str]:
    """The ONNX ops (default domain) that dlc maps."""
    from .ops import load_all

    return sorted(load_all())


__all__ = ["load_model", "to_module", "describe_import", "OnnxModule", "OnnxImportError", "UnsupportedError",
           "supported_ops", "MIN_OPSET", "MAX_OPSET"]
