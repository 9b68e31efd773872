"""sam2_segment: one-shot segmentation over plain REST (BLS)."""

from sam2_triton_server.segment import TritonPythonModel  # noqa: F401
