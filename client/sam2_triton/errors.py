"""Typed exceptions of the sam2-triton client: catch ``SAM2TritonError`` for all of them."""

from __future__ import annotations


class SAM2TritonError(Exception):
    """Base class of every error this package raises on purpose."""


# --- the caller's input ----------------------------------------------------------------------
class InvalidInputError(SAM2TritonError, ValueError):
    """An argument was rejected before anything was sent to the server."""


class InvalidImageError(InvalidInputError):
    """The image cannot be decoded, is empty, too large, or of an unsupported mode/dtype."""


class InvalidPromptError(InvalidInputError):
    """Points, labels, boxes or mask inputs are malformed (shape, range, NaN/inf, ...)."""


# --- calls in the wrong order or on the wrong object --------------------------------------------
class UsageError(SAM2TritonError, RuntimeError):
    """A method was called in the wrong order or on the wrong object; the message says what to
    call first. Also a ``RuntimeError``, which SAM 2 raises in these situations (e.g.
    ``SAM2ImagePredictor.predict`` before ``set_image``), so code written for SAM 2 catches it
    unchanged."""


class ImageNotSetError(UsageError):
    """``SAM2ImagePredictor.predict``/``get_image_embedding`` (or the batch methods) before
    ``set_image`` (``set_image_batch``): call that first. SAM 2 raises a RuntimeError here."""


class ClientClosedError(UsageError):
    """A ``SAM2Client``/``AsyncSAM2Client`` (or a predictor built on one) was used after
    ``close()``: create a new client."""


class EmbeddingMismatchError(UsageError, InvalidInputError):
    """An embedding was computed by other model weights (another export, or another server)
    than the decoder's: encode the image again with this client. Also a ``ValueError``, as it
    always was."""


# --- the server ------------------------------------------------------------------------------
class ServerError(SAM2TritonError):
    """The server answered with an error that fits no narrower class."""


class ServerUnavailableError(ServerError, ConnectionError):
    """The server cannot be reached (refused connection, DNS failure, connection reset)."""


class ModelNotReadyError(ServerError):
    """The model is missing from the repository, not loaded, or not ready."""


class ServerBusyError(ServerError):
    """The server rejected the request because its queue is full; retrying later may succeed."""


class RequestTimeoutError(ServerError, TimeoutError):
    """The request did not complete within the client's or the server's timeout.

    ``never_ran`` is True when the server dropped the request from a model's queue after its
    queue timeout ("Request timeout expired"): it was never executed, so sending it again is
    safe. After the client's own deadline it is False: the server may still be computing.
    """

    never_ran: bool = False


class InferenceError(ServerError):
    """The server ran the request and reported a failure (bad tensor shape, model error, ...)."""


class AccessDeniedError(ServerError, PermissionError):
    """The server restricts this API (Triton's ``--http-restricted-api`` /
    ``--grpc-restricted-protocol``) and the request lacked the right key: pass
    ``headers={"admin-key": KEY}`` (HTTP) or ``{"triton-grpc-protocol-admin-key": KEY}`` (gRPC).
    Inference, health and metadata are never restricted by sam2-triton's deployment; model
    config, statistics and shared-memory registration (``use_shared_memory``) are."""


class UnknownImageError(ServerError):
    """The server's session model does not hold the image id sent (never uploaded to this server,
    evicted from its byte-budgeted store, or the server restarted). The clients handle it by
    uploading the image again; you only see it when that did not help (e.g. a store too small to
    keep the image between the upload and the next request)."""


class UnknownVideoError(ServerError):
    """The server's ``sam2_video`` model does not hold the video id sent: it was closed, idle for
    longer than the server's ``video_idle_ttl_s``, or the server restarted (video state is never
    persisted). Call ``init_state`` again and re-add the prompts."""
