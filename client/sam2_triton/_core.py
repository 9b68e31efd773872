"""The transport-free core shared by ``SAM2Client`` and ``AsyncSAM2Client``.

Every operation (encode, decode, wait-until-ready) is written once, as a *flow*: a generator
that yields the I/O it needs (``Call`` a tritonclient method, ``Sleep``, or ``Compute`` a
CPU-heavy function) and receives the answers. ``run_sync``/``run_async`` execute the yielded
steps with a blocking or an asyncio tritonclient, map transport errors with
``map_transport_error`` and throw them back into the flow, so cleanup (shared memory) runs in
the flow's ``finally``. Sync and async therefore cannot drift apart: they only differ in how a
step is executed.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
from tritonclient.utils import InferenceServerException

from . import _wire, spec
from ._cache import EmbeddingCache, image_key
from ._config import ClientConfig
from ._validate import plan_decode, validate_prompt, validate_prompts
from .errors import (
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    ModelNotReadyError,
    RequestTimeoutError,
    SAM2TritonError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
)
from .types import ImageEmbedding, Prediction, Prompt

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


# --- steps a flow yields -----------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """Call ``method(**kwargs)`` on the tritonclient; ``model`` names it in error messages."""

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Compute:
    """CPU-heavy pure work (image decoding, mask upsampling): async runs it in a thread."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


Step = Call | Sleep | Compute
Flow = Generator[Step, Any, T]


# --- error mapping -----------------------------------------------------------------------------
_BUSY = ("exceeds maximum queue size", "queue is full", "too many requests")
_TIMEOUT = ("request timeout expired", "deadline exceeded")
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
        if any(s in low for s in _BUSY) or status in ("StatusCode.RESOURCE_EXHAUSTED", "429"):
            mapped = ServerBusyError(f"{what}server busy, retry later: {msg}")
        elif status in ("StatusCode.DEADLINE_EXCEEDED", "408", "504") or any(
            s in low for s in _TIMEOUT
        ):
            mapped = RequestTimeoutError(f"{what}request timed out: {msg}")
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


# --- the core ----------------------------------------------------------------------------------
class SAM2Core:
    """Configuration, cached model metadata, embedding cache and the flows of one client."""

    def __init__(self, config: ClientConfig, triton_module: ModuleType) -> None:
        self.config = config
        self.mod = triton_module
        self.cache = EmbeddingCache(config.embedding_cache_bytes)
        self._grpc = config.protocol == "grpc"
        self._encoder: _wire.EncoderInfo | None = None
        self._decoder: _wire.DecoderInfo | None = None
        self._lock = threading.Lock()

    # steps
    def call(
        self, method: str, model: str | None = None, timeout_s: float | None = None, **kwargs: Any
    ) -> Call:
        """A ``Call`` with this client's headers and (gRPC) deadline added."""
        headers = dict(self.config.headers or {})
        if self._grpc:  # gRPC metadata keys must be lowercase
            headers = {k.lower(): v for k, v in headers.items()}
        else:  # aiohttp asks for gzip by default: Triton would compress 17 MB per response
            headers = {"Accept-Encoding": "identity", **headers}
        kwargs["headers"] = headers or None
        if self._grpc:
            kwargs["client_timeout"] = timeout_s or self.config.timeout_s
            if method in ("get_model_metadata", "get_model_config"):
                kwargs["as_json"] = True
        return Call(method, kwargs, model)

    def map_error(self, exc: BaseException, step: Step) -> BaseException:
        """The exception to throw into the flow: mapped (``Call`` steps only), or ``exc``."""
        if not isinstance(step, Call):
            return exc
        mapped = map_transport_error(exc, step.model)
        if mapped is None:
            return exc
        if isinstance(mapped, (InferenceError, ModelNotReadyError)):
            self.forget_models()  # the repository may have changed: rediscover dtypes
        logger.debug("%s -> %s", type(exc).__name__, type(mapped).__name__)
        return mapped

    def forget_models(self) -> None:
        with self._lock:
            self._encoder = self._decoder = None

    # model discovery
    def encoder_info(self) -> Flow[_wire.EncoderInfo]:
        info = self._encoder
        if info is None:
            model = self.config.encoder_model
            meta = yield self.call("get_model_metadata", model, model_name=model)
            try:
                cfg = yield self.call("get_model_config", model, model_name=model)
            except InferenceError as exc:  # e.g. a restricted model-config API
                logger.warning(
                    "cannot read %r config (%s); sending one image per request", model, exc
                )
                cfg = {}
            info = _wire.parse_encoder_info(meta, cfg, model)
            with self._lock:
                self._encoder = info
        return info

    def decoder_info(self) -> Flow[_wire.DecoderInfo]:
        info = self._decoder
        if info is None:
            model = self.config.decoder_model
            meta = yield self.call("get_model_metadata", model, model_name=model)
            info = _wire.parse_decoder_info(meta, model)
            with self._lock:
                self._decoder = info
        return info

    # flows
    def ready_flow(self, timeout_s: float) -> Flow[None]:
        deadline = time.monotonic() + timeout_s
        models = (self.config.encoder_model, self.config.decoder_model)
        while True:
            problem: ServerError | None = None
            budget = max(0.1, min(self.config.timeout_s, deadline - time.monotonic()))
            try:
                if not (yield self.call("is_server_ready", timeout_s=budget)):
                    problem = ServerUnavailableError(f"server {self.config.url} is not ready")
                else:
                    for m in models:
                        ready = yield self.call("is_model_ready", m, timeout_s=budget, model_name=m)
                        if not ready:
                            problem = ModelNotReadyError(f"model {m!r} is not ready")
                            break
            except (ServerUnavailableError, ModelNotReadyError, RequestTimeoutError) as exc:
                problem = exc
            if problem is None:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise type(problem)(f"not ready after {timeout_s:g} s: {problem}") from problem
            yield Sleep(min(0.25, remaining))

    def encode_flow(self, images: Sequence[object]) -> Flow[list[ImageEmbedding]]:
        """Embeddings of ``images`` (cache hits skipped; misses in batches of max_batch_size)."""
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise InvalidImageError(f"images must be a list of images, got {type(images).__name__}")
        if len(images) == 0:
            raise InvalidImageError("images is empty: give at least one image")
        out: list[ImageEmbedding | None] = [None] * len(images)
        pending: dict[bytes | int, tuple[list[int], tuple[int, int], Any]] = {}
        info: _wire.EncoderInfo | None = None
        for i, image in enumerate(images):
            image01 = yield Compute(_wire.load_image01, (image,))
            key: bytes | int = i
            if self.cache.enabled:
                key = yield Compute(image_key, (image01,))
                hit = self.cache.get(key)
                if hit is not None:
                    out[i] = hit
                    continue
                if key in pending:  # the same picture twice in one batch
                    pending[key][0].append(i)
                    continue
            info = info or (yield from self.encoder_info())
            wire = yield Compute(_wire.to_wire_image, (image01, info.image_dtype))
            pending[key] = ([i], image01.shape[:2], wire)
            del image01
        items = list(pending.items())
        step = info.max_batch_size if info else 1
        for start in range(0, len(items), step):
            batch = items[start : start + step]
            pixels = np.ascontiguousarray(np.stack([w for _, (_, _, w) in batch]))
            result = yield self.call(
                "infer",
                self.config.encoder_model,
                model_name=self.config.encoder_model,
                inputs=[_wire.data_input(self.mod, spec.ENCODER_IMAGE, pixels)],
                outputs=_wire.requested_outputs(self.mod, _wire.ENCODER_OUTPUTS),
            )
            embs = _wire.parse_encoder_result(result, [hw for _, (_, hw, _) in batch])
            for (key, (idx, _, _)), emb in zip(batch, embs):
                if isinstance(key, bytes):
                    self.cache.put(key, emb)
                for i in idx:
                    out[i] = emb
        return [e for e in out if e is not None]

    def decode_flow(
        self,
        embedding: object,
        prompts: Prompt | Sequence[Prompt],
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
        mask_threshold: float = spec.MASK_THRESHOLD,
    ) -> Flow[Prediction | list[Prediction]]:
        """Predictions for ``prompts`` on one image, in the caller's order."""
        if not isinstance(embedding, ImageEmbedding):
            raise InvalidInputError(
                f"embedding must be an ImageEmbedding from encode(), got {type(embedding).__name__}"
            )
        single = isinstance(prompts, Prompt)
        if single:
            wire = [validate_prompt(prompts, "prompt", embedding.orig_hw, normalize_coords)]
        elif isinstance(prompts, Sequence) and not isinstance(prompts, (str, bytes)):
            wire = validate_prompts(prompts, embedding.orig_hw, normalize_coords)
        else:
            raise InvalidInputError(
                f"prompts must be a Prompt or a list of Prompts, got {type(prompts).__name__}"
            )
        chunks = plan_decode(wire, self.config.max_prompts_per_request)
        info = yield from self.decoder_info()
        features = _wire.decoder_features(embedding, info.feature_dtype)
        model = self.config.decoder_model
        results: list[Prediction | None] = [None] * len(wire)
        region: _wire.FeatureRegion | None = None
        registered = False
        try:
            if self.config.use_shared_memory:
                region = _wire.FeatureRegion(features)
                yield self.call(
                    "register_system_shared_memory",
                    name=region.name,
                    key=region.key,
                    byte_size=region.byte_size,
                )
                registered = True
                feature_inputs = region.inputs(self.mod)
            else:
                feature_inputs = [_wire.data_input(self.mod, n, a) for n, a in features.items()]
            for chunk in chunks:
                result = yield self.call(
                    "infer",
                    model,
                    model_name=model,
                    inputs=[*feature_inputs, *_wire.chunk_inputs(self.mod, chunk)],
                    outputs=_wire.requested_outputs(self.mod, _wire.DECODER_OUTPUTS),
                )
                preds = yield Compute(
                    _wire.parse_decoder_result,
                    (
                        result,
                        len(chunk.indices),
                        embedding,
                        model,
                        multimask_output,
                        return_logits,
                        mask_threshold,
                    ),
                )
                for i, p in zip(chunk.indices.tolist(), preds):
                    results[i] = p
        finally:
            if region is not None:
                if registered:
                    try:
                        yield self.call("unregister_system_shared_memory", name=region.name)
                    except ServerError as exc:
                        logger.warning("could not unregister shm region %s: %s", region.name, exc)
                region.destroy()
        preds_out = [p for p in results if p is not None]
        return preds_out[0] if single else preds_out


# --- drivers -----------------------------------------------------------------------------------
def run_sync(core: SAM2Core, flow: Flow[T], execute: Callable[[Step], Any]) -> T:
    """Drive ``flow`` with a blocking ``execute``; return its value or raise its error."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        try:
            reply = step.fn(*step.args) if isinstance(step, Compute) else execute(step)
        except BaseException as exc:  # noqa: BLE001 - handed to the flow, which re-raises it
            error = core.map_error(exc, step)


async def run_async(core: SAM2Core, flow: Flow[T], execute: Callable[[Step], Awaitable[Any]]) -> T:
    """``run_sync`` for asyncio; ``Compute`` steps run in a worker thread."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        try:
            if isinstance(step, Compute):
                reply = await asyncio.to_thread(step.fn, *step.args)
            else:
                reply = await execute(step)
        except BaseException as exc:  # noqa: BLE001 - handed to the flow, which re-raises it
            error = core.map_error(exc, step)
