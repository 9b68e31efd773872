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


class EmbeddingMismatchError(InvalidInputError):
    """An ImageEmbedding was produced by other model weights than the decoder's."""


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
    """The request did not complete within the client's or the server's timeout."""


class InferenceError(ServerError):
    """The server ran the request and reported a failure (bad tensor shape, model error, ...)."""
