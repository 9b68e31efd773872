"""What the python-backend models share: ``pb_utils``, config parameters and request errors."""

from __future__ import annotations

from typing import Any

try:  # only importable inside the python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton (tests, docs, linters)
    pb_utils = None


class RequestError(Exception):
    """A request that cannot be served as sent; ``code`` names a ``pb_utils.TritonError`` code."""

    def __init__(self, message: str, code: str = "INVALID_ARG") -> None:
        super().__init__(message)
        self.code = code


def require_triton() -> Any:
    """``pb_utils``, or a RuntimeError when not running inside Triton's python backend."""
    if pb_utils is None:
        raise RuntimeError("triton_python_backend_utils is missing: run inside Triton")
    return pb_utils


def parameter(config: dict[str, Any], key: str, default: str | None = None) -> str | None:
    """The model config parameter ``key`` (``string_value``, stripped); ``default`` when absent
    or blank."""
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value.strip() if isinstance(value, str) and value.strip() else default


def int_parameter(config: dict[str, Any], key: str, default: int, minimum: int = 1) -> int:
    """An integer parameter ``>= minimum`` (``default`` when absent); ValueError names it."""
    raw = parameter(config, key, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(
            f"model config parameter {key} must be an integer >= {minimum}, got {raw!r}"
        )
    return value


def error_response(model: str, exc: RequestError) -> Any:
    """A ``pb_utils.InferenceResponse`` carrying ``exc`` (message prefixed by the model name)."""
    code = getattr(pb_utils.TritonError, exc.code, pb_utils.TritonError.INTERNAL)
    message = str(exc)
    if not message.startswith(f"{model}:"):
        message = f"{model}: {message}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def send_final(sender: Any, response: Any) -> None:
    """Send a request's one and only response through its response sender."""
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
