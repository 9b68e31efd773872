"""CPU flavour: run this version's model.onnx with onnxruntime."""

from sam2_triton_server.onnx_model import TritonPythonModel  # noqa: F401
