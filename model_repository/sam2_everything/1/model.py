"""sam2_everything: segment everything in one request (BLS)."""

from sam2_triton_server.everything import TritonPythonModel  # noqa: F401
