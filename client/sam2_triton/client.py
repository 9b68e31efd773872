"""``SAM2Client``: the blocking client (tritonclient.grpc or tritonclient.http).

Thin by design: request building, validation, response parsing and error mapping live in
``_core`` and are shared with ``AsyncSAM2Client``; this module only executes steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import spec
from ._base import ClientBase
from ._config import triton_client_kwargs
from ._core import Sleep, Step, decode_options, run_sync
from .errors import ClientClosedError
from .types import (
    DecodeOptions,
    ImageEmbedding,
    Prediction,
    Prompt,
    RemoteEmbedding,
)

logger = logging.getLogger(__name__)


class _Connections:
    """The tritonclient clients of one ``SAM2Client``.

    ``tritonclient.grpc`` clients are thread-safe: one is shared. ``tritonclient.http`` clients
    are not, and (gevent) cannot even be used from another thread than their creator's: each
    thread gets its own, created on first use and closed by ``close()``.
    """

    def __init__(self, factory: Callable[[], Any], shared: bool) -> None:
        self._factory = factory
        self._shared = factory() if shared else None
        self._local = threading.local()
        self._created: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self) -> Any:
        if self._closed:
            raise ClientClosedError("this SAM2Client is closed: create a new SAM2Client")
        if self._shared is not None:
            return self._shared
        triton = getattr(self._local, "triton", None)
        if triton is None:
            triton = self._factory()
            with self._lock:
                self._created.append(triton)
            self._local.triton = triton
        return triton

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._created = self._created, []
            if self._shared is not None:
                clients.append(self._shared)
                self._shared = None
        for triton in clients:
            triton.close()


class SAM2Client(ClientBase):
    """Blocking client for a Triton server serving the sam2-triton encoder and decoder.

    Args:
        url: ``host:port`` (default ``localhost:8001`` for gRPC, ``localhost:8000`` for HTTP);
            an ``https://``/``grpcs://`` prefix turns on ``ssl``.
        protocol: ``"grpc"`` or ``"http"``.
        encoder_model, decoder_model: Triton model names (``spec.ENCODER_MODEL``/``DECODER_MODEL``).
        timeout_s: per-request client timeout in seconds.
        ssl, root_certificates, private_key, certificate_chain, insecure: TLS options (PEM file
            paths; ``insecure`` skips certificate verification, HTTP only).
        headers: extra headers/metadata sent with every request (e.g. restricted-API keys).
        embedding_cache_bytes: byte budget of the LRU embedding cache (0 disables it).
        max_prompts_per_request: most prompts per decoder request.
        use_shared_memory: pass the features to the decoder in system shared memory (client and
            server on the same host only). CUDA shared memory is not available in this build.
        retries: how often to re-send a request that failed with ``ServerBusyError`` (the
            server's queue was full), ``ServerUnavailableError`` (refused or reset, e.g. while
            the server restarts) or the server's queue timeout (``RequestTimeoutError``
            "Request timeout expired": it never ran); 0 (default) raises at once. The client's
            own ``timeout_s`` is never retried (the server may still be computing). Only
            idempotent calls are retried (inference, metadata, shared-memory registration).
            Each retry waits ``retry_backoff_s`` doubled per attempt (capped at 10 s), times a
            random factor in [0.5, 1]; ``timeout_s`` applies to each attempt, not the total.
        retry_backoff_s: the first retry's delay in seconds (default 0.25).
        use_sessions: keep image features on the server (``sam2_session``): ``encode`` uploads
            the image once and returns a ``RemoteEmbedding``; each click then sends only its id
            and the prompt instead of 16.8 MB of features, and an image the server no longer
            holds (evicted, restarted) is uploaded again transparently. None (default): when
            the server has a session model; True: require it; False: never (``encode`` returns
            the features as an ``ImageEmbedding``). Masks are the same either way.
        session_model: Triton name of the session model (``spec.SESSION_MODEL``).

    Thread-safe: concurrent ``encode`` calls become separate requests that Triton's dynamic
    batcher may batch. Use as a context manager or call ``close()``.
    """

    def _setup(self) -> None:
        mod = self._mod
        kwargs = triton_client_kwargs(self.config, aio=False)
        self._connections = _Connections(
            lambda: mod.InferenceServerClient(**kwargs), shared=self.config.protocol == "grpc"
        )

    # --- execution ------------------------------------------------------------------------
    def _execute(self, step: Step) -> Any:
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        return getattr(self._connections.get(), step.method)(**step.kwargs)

    def _run(self, flow: Any) -> Any:
        if self._connections.closed:
            flow.close()
            raise ClientClosedError("this SAM2Client is closed: create a new SAM2Client")
        return run_sync(self._core, flow, self._execute)

    # --- API ------------------------------------------------------------------------------
    def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the server and both models are ready.

        Raises ServerUnavailableError or ModelNotReadyError after ``timeout_s`` seconds.
        """
        self._run(self._core.ready_flow(timeout_s))

    def encode(self, image: Any) -> ImageEmbedding | RemoteEmbedding:
        """Embed one image (path, bytes, PIL image or ``HxWx3`` array); cached by pixels.

        With sessions (``use_sessions``) the image is uploaded to the session model and a
        ``RemoteEmbedding`` (id, size, fingerprint, kept ``[3, 1024, 1024]`` input) comes back;
        otherwise an ``ImageEmbedding`` with the features ``[1, C, h, w]``.
        """
        return self._run(self._core.encode_flow([image]))[0]

    def encode_batch(self, images: Sequence[Any]) -> list[ImageEmbedding | RemoteEmbedding]:
        """Embed several images, sending the cache misses in one ``[B, 3, 1024, 1024]`` request
        (split by the encoder's ``max_batch_size``; with sessions, one upload per image, each
        routable by its id). Results follow the input order."""
        return self._run(self._core.encode_flow(images))

    def decode(
        self,
        embedding: ImageEmbedding | RemoteEmbedding,
        prompts: Prompt | Sequence[Prompt],
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
        mask_threshold: float = spec.MASK_THRESHOLD,
        *,
        options: DecodeOptions | None = None,
    ) -> Prediction | list[Prediction]:
        """Masks for one or many prompts on one embedded image.

        A single ``Prompt`` gives a ``Prediction``, a list gives a list in the same order.
        Prompts are grouped by point count into requests of at most
        ``max_prompts_per_request`` prompts. ``normalize_coords=False`` means coordinates are
        already in ``[0, 1]`` relative to the image, as in SAM 2.
        Raises InvalidPromptError before sending anything, EmbeddingMismatchError if the
        decoder's weights differ from the encoder's that made ``embedding``, UnknownImageError
        if the server lost a ``RemoteEmbedding``'s image even after it was uploaded again.
        """
        return self._run(
            self._core.decode_flow(
                embedding,
                prompts,
                decode_options(
                    options, multimask_output, return_logits, normalize_coords, mask_threshold
                ),
            )
        )

    def fetch_embedding(self, embedding: ImageEmbedding | RemoteEmbedding) -> ImageEmbedding:
        """The features of an embedding as an ``ImageEmbedding`` (``[1, 256, 64, 64]``, ...):
        a ``RemoteEmbedding``'s are downloaded from the session model (16.8 MB in FP32)."""
        return self._run(self._core.features_flow(embedding))

    def close(self) -> None:
        """Release the client's shared-memory regions and close the connections; the client
        cannot be used afterwards (``ClientClosedError``). Closing twice does nothing."""
        if self._connections.closed:
            return
        try:
            run_sync(self._core, self._core.close_flow(), self._execute)
        finally:
            self._connections.close()

    def __enter__(self) -> SAM2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
