"""CPU flavour: run this version's model.onnx with onnxruntime (shared implementation)."""

from sam2_triton_serve.python_backend import TritonPythonModel  # noqa: F401
