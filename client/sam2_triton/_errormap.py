"""Transport errors of tritonclient (gRPC, HTTP, their asyncio variants) mapped to this
package's error classes, and which of them an opt-in retry may re-send."""

from __future__ import annotations

import asyncio
import http.client

from tritonclient.utils import InferenceServerException

from . import spec, video_spec
from .errors import (
    AccessDeniedError,
    InferenceError,
    ModelNotReadyError,
    RequestTimeoutError,
    SAM2TritonError,
    ServerBusyError,
    ServerUnavailableError,
    UnknownImageError,
    UnknownVideoError,
)

try:  # the HTTP clients' transports; both ship with tritonclient[http]
    import aiohttp

    _AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover
    _AIOHTTP_ERRORS = ()
try:
    import gevent

    _GEVENT_TIMEOUT: tuple[type[BaseException], ...] = (gevent.Timeout,)
except ImportError:  # pragma: no cover
    _GEVENT_TIMEOUT = ()
try:
    from geventhttpclient.useragent import ConnectionError as _GhcConnectionError

    _GEVENT_CONNECTION: tuple[type[BaseException], ...] = (_GhcConnectionError,)
except ImportError:  # pragma: no cover
    _GEVENT_CONNECTION = ()


_BUSY = ("exceeds maximum queue size", "queue is full", "too many requests")
_QUEUE_TIMEOUT = "request timeout expired"  # Triton's queue policy: the request never ran
_TIMEOUT = (_QUEUE_TIMEOUT, "deadline exceeded")
_RESTRICTED = ("is restricted, expecting header",)
_FORBIDDEN = ("403", "StatusCode.PERMISSION_DENIED")
_NOT_READY = (
    "unknown model",
    "is not ready",
    "not at ready state",
    "model not found",
    "no available versions",
    "is not found",
    "failed to load",
)
_UNAVAILABLE = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "dns resolution",
    "name resolution",
    "socket closed",
    "connection reset",
    "broken pipe",
    "failed to establish",
    "not reachable",
)


def map_transport_error(exc: BaseException, model: str | None = None) -> SAM2TritonError | None:
    """Map an exception of tritonclient or of its transports to this package's hierarchy.

    Returns ``None`` for exceptions that are not transport errors (they propagate unchanged).
    The result's ``__cause__`` is ``exc``.
    """
    what = f"model {model!r}: " if model else ""
    mapped: SAM2TritonError
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        msg = str(exc.message() or exc)
        low = f"{status} {msg}".lower()
        if spec.SESSION_UNKNOWN_IMAGE in low:  # before NOT_FOUND: the model itself is there
            mapped = UnknownImageError(f"{what}{msg}")
        elif video_spec.VIDEO_UNKNOWN in low:  # likewise
            mapped = UnknownVideoError(f"{what}{msg}")
        elif status in _FORBIDDEN or any(s in low for s in _RESTRICTED):
            # before UNAVAILABLE: Triton answers a restricted gRPC protocol with UNAVAILABLE
            mapped = AccessDeniedError(
                f"{what}access denied: the server restricts this API to clients that send its "
                "admin key (headers={'admin-key': KEY} over HTTP, "
                f"{{'triton-grpc-protocol-admin-key': KEY}} over gRPC): {msg} [{status}]"
            )
        elif any(s in low for s in _BUSY) or status in ("StatusCode.RESOURCE_EXHAUSTED", "429"):
            mapped = ServerBusyError(f"{what}server busy, retry later: {msg}")
        elif status in ("StatusCode.DEADLINE_EXCEEDED", "408", "504") or any(
            s in low for s in _TIMEOUT
        ):
            mapped = RequestTimeoutError(f"{what}request timed out: {msg}")
            mapped.never_ran = _QUEUE_TIMEOUT in low
        elif "unable to find shared memory region" in low:  # NOT_FOUND, but not the model
            mapped = InferenceError(f"{what}{msg}")
        elif any(s in low for s in _NOT_READY) or status == "StatusCode.NOT_FOUND":
            mapped = ModelNotReadyError(f"{what}{msg}")
        elif status in ("StatusCode.UNAVAILABLE", "502", "503") or any(
            s in low for s in _UNAVAILABLE
        ):
            mapped = ServerUnavailableError(f"server unavailable: {msg} [{status}]")
        elif "timed out" in low or "timeout" in low:
            mapped = RequestTimeoutError(f"{what}request timed out: {msg}")
        else:
            mapped = InferenceError(f"{what}{msg} [{status}]" if status else f"{what}{msg}")
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError, *_GEVENT_TIMEOUT)):
        mapped = RequestTimeoutError(f"{what}request timed out: {exc!r}")
    elif isinstance(
        exc, (OSError, http.client.HTTPException, *_AIOHTTP_ERRORS, *_GEVENT_CONNECTION)
    ):  # refused, reset, DNS (socket.gaierror), closed connection, aiohttp client errors
        mapped = ServerUnavailableError(f"server unavailable: {exc!r}")
    else:
        return None
    mapped.__cause__ = exc
    return mapped


# Opt-in retries (``retries``): transient errors only, idempotent calls only.
RETRYABLE = (ServerBusyError, ServerUnavailableError)
RETRY_METHODS = frozenset(
    {
        "infer",
        "get_model_metadata",
        "get_model_config",
        "register_system_shared_memory",
        "unregister_system_shared_memory",
    }
)
