"""Export and reload for deployment: ONNX (checked against PyTorch) and ONNX Runtime as a module."""
from .onnx import OnnxExport, OnnxRuntimeModule, export_onnx

__all__ = ["OnnxExport", "OnnxRuntimeModule", "export_onnx"]
