"""sam2_session: image features held on the server (BLS)."""

from sam2_triton_server.session import TritonPythonModel  # noqa: F401
