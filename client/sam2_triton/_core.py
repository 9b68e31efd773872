"""The transport-free core shared by ``SAM2Client`` and ``AsyncSAM2Client``.

Every operation (encode, decode, wait-until-ready) is written once, as a *flow*: a generator
that yields the I/O it needs (``Call`` a tritonclient method, ``Sleep``, or ``Compute`` a
CPU-heavy function) and receives the answers. ``run_sync``/``run_async`` execute the yielded
steps with a blocking or an asyncio tritonclient, map transport errors with
``_errormap.map_transport_error`` and throw them back into the flow, so cleanup (shared memory) runs in
the flow's ``finally``. Sync and async therefore cannot drift apart: they only differ in how a
step is executed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from . import _wire, spec
from ._cache import EmbeddingCache, image_key
from ._config import MAX_RETRY_BACKOFF_S, ClientConfig
from ._errormap import RETRY_METHODS, RETRYABLE, map_transport_error
from ._shm import FeatureRegion, RegionRegistry
from .errors import (
    AccessDeniedError,
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    UnknownImageError,
)
from .prompts import DecodeChunk, plan_decode, validate_prompt, validate_prompts
from .types import DecodeOptions, ImageEmbedding, Prediction, Prompt, RemoteEmbedding

logger = logging.getLogger(__name__)

T = TypeVar("T")


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


def decode_options(
    options: DecodeOptions | None,
    multimask_output: bool,
    return_logits: bool,
    normalize_coords: bool,
    mask_threshold: float,
) -> DecodeOptions:
    """The one ``DecodeOptions`` of a ``decode`` call: ``options`` if given (then the keyword
    arguments must keep their defaults), else built from the keywords."""
    if options is None:
        return DecodeOptions(multimask_output, return_logits, normalize_coords, mask_threshold)
    if not isinstance(options, DecodeOptions):
        raise InvalidInputError(f"options must be a DecodeOptions, got {type(options).__name__}")
    if (multimask_output, return_logits, normalize_coords, mask_threshold) != (
        True,
        False,
        True,
        spec.MASK_THRESHOLD,
    ):
        raise InvalidInputError(
            "give either options=DecodeOptions(...) or the keyword arguments multimask_output, "
            "return_logits, normalize_coords, mask_threshold, not both"
        )
    return options


# --- the core ----------------------------------------------------------------------------------
class SAM2Core:
    """Configuration, cached model metadata, embedding cache and the flows of one client."""

    def __init__(self, config: ClientConfig, triton_module: ModuleType) -> None:
        self.config = config
        self.mod = triton_module
        self.cache = EmbeddingCache(config.embedding_cache_bytes)
        self.regions = RegionRegistry()
        self._grpc = config.protocol == "grpc"
        self._encoder: _wire.EncoderInfo | None = None
        self._decoder: _wire.DecoderInfo | None = None
        self._session: _wire.SessionInfo | None = None
        self._session_checked = False  # whether self._session says what the server has
        self._lock = threading.Lock()

    # steps
    def call(
        self,
        method: str,
        model: str | None = None,
        timeout_s: float | None = None,
        extra_headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Call:
        """A ``Call`` with this client's headers (plus ``extra_headers``) and (gRPC) deadline."""
        headers = {**(self.config.headers or {}), **(extra_headers or {})}
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
        # Transports keep their exception in a local of a frame on its own traceback (gevent's
        # connect does): a cycle that holds every finished frame below the driver, with the
        # request tensors, until the cyclic GC runs. Clearing those frames' locals breaks it;
        # the traceback (files, lines) stays readable as ``mapped.__cause__``.
        traceback.clear_frames(exc.__traceback__)
        return mapped

    def forget_models(self) -> None:
        with self._lock:
            self._encoder = self._decoder = self._session = None
            self._session_checked = False

    def retry_delay(self, error: BaseException, step: Step, attempt: int) -> float | None:
        """Seconds to wait before re-sending ``step`` after ``error``, or None to give up.

        Only with ``config.retries > 0`` (opt-in), only for transient errors (``ServerBusyError``:
        the server's queue was full; ``ServerUnavailableError``: refused/reset, e.g. during a
        restart; a ``RequestTimeoutError`` from the server's *queue* timeout, "Request timeout
        expired": the request waited too long and never ran, unlike the client's own deadline,
        after which the server may still be computing) and only for idempotent calls
        (inference, metadata, shared-memory registration; readiness polls loop on their own).
        ``attempt`` is the number of retries already made. The delay doubles from ``retry_backoff_s`` up to ``MAX_RETRY_BACKOFF_S``,
        times a random factor in [0.5, 1] so that concurrent clients do not retry in lockstep.
        """
        if (
            attempt >= self.config.retries
            or not isinstance(step, Call)
            or step.method not in RETRY_METHODS
            or not (
                isinstance(error, RETRYABLE)
                or (isinstance(error, RequestTimeoutError) and error.never_ran)
            )
        ):
            return None
        base = min(MAX_RETRY_BACKOFF_S, self.config.retry_backoff_s * 2.0**attempt)
        delay = base * random.uniform(0.5, 1.0)
        logger.info("%s; retry %d/%d in %.2f s", error, attempt + 1, self.config.retries, delay)
        return delay

    # model discovery
    def encoder_info(self) -> Flow[_wire.EncoderInfo]:
        info = self._encoder
        if info is None:
            model = self.config.encoder_model
            meta = yield self.call("get_model_metadata", model, model_name=model)
            try:
                cfg = yield self.call("get_model_config", model, model_name=model)
            except (InferenceError, AccessDeniedError) as exc:  # e.g. restricted model-config
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

    def session_info(self) -> Flow[_wire.SessionInfo | None]:
        """The session model's info, or None when the client does not use sessions.

        ``use_sessions`` None: sessions when the server serves a session model (detected once
        from its metadata, again after a model error); True: required (ModelNotReadyError
        otherwise); False: never.
        """
        mode = self.config.use_sessions
        if mode is False:
            return None
        with self._lock:
            checked, info = self._session_checked, self._session
        if checked:
            return info
        model = self.config.session_model
        try:
            meta = yield self.call("get_model_metadata", model, model_name=model)
            info = _wire.parse_session_info(meta, model)
        except (ModelNotReadyError, InferenceError) as exc:
            if mode:
                raise ModelNotReadyError(
                    f"use_sessions=True, but the server has no usable session model "
                    f"{model!r}: {exc}"
                ) from exc
            logger.info("no session model %r (%s): sending features with every click", model, exc)
            info = None
        with self._lock:
            self._session, self._session_checked = info, True
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

    def encode_flow(self, images: Sequence[object]) -> Flow[list[ImageEmbedding | RemoteEmbedding]]:
        """Embeddings of ``images`` (cache hits skipped; misses in batches of max_batch_size).

        With a session model (see ``session_info``) the images are uploaded to it and the
        results are ``RemoteEmbedding``s; otherwise the encoder's features come back as
        ``ImageEmbedding``s.
        """
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise InvalidImageError(f"images must be a list of images, got {type(images).__name__}")
        if len(images) == 0:
            raise InvalidImageError("images is empty: give at least one image")
        out: list[ImageEmbedding | RemoteEmbedding | None] = [None] * len(images)
        pending: dict[bytes | int, tuple[list[int], tuple[int, int], Any]] = {}
        info: _wire.EncoderInfo | None = None
        session: _wire.SessionInfo | None = None
        checked = False
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
            if not checked:
                session, checked = (yield from self.session_info()), True
            if session is None:
                info = info or (yield from self.encoder_info())
            dtype = session.image_dtype if session is not None else info.image_dtype
            wire = yield Compute(_wire.to_wire_image, (image01, dtype))
            pending[key] = ([i], image01.shape[:2], wire)
            del image01
        items = list(pending.items())
        if session is not None:
            for key, (idx, hw, wire) in items:  # one image per upload: one routing key each
                emb = yield from self.upload_flow(wire, hw)
                if isinstance(key, bytes):
                    self.cache.put(key, emb)
                for i in idx:
                    out[i] = emb
            return [e for e in out if e is not None]
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
        options: DecodeOptions,
    ) -> Flow[Prediction | list[Prediction]]:
        """Predictions for ``prompts`` on one image, in the caller's order.

        A ``RemoteEmbedding`` is decoded by the session model (the click carries its id; an
        image the server no longer holds is uploaded again and the click re-sent); if the
        server has no session model any more, its kept image is encoded and decoded the
        features way.
        """
        if not isinstance(embedding, (ImageEmbedding, RemoteEmbedding)):
            raise InvalidInputError(
                f"embedding must be an ImageEmbedding or RemoteEmbedding from encode(), got "
                f"{type(embedding).__name__}"
            )
        if not isinstance(options, DecodeOptions):
            raise InvalidInputError(
                f"options must be a DecodeOptions, got {type(options).__name__}"
            )
        single = isinstance(prompts, Prompt)
        orig_hw, normalize = embedding.orig_hw, options.normalize_coords
        if single:
            wire = [validate_prompt(prompts, "prompt", orig_hw, normalize)]
        elif isinstance(prompts, Sequence) and not isinstance(prompts, (str, bytes)):
            wire = validate_prompts(prompts, orig_hw, normalize)
        else:
            raise InvalidInputError(
                f"prompts must be a Prompt or a list of Prompts, got {type(prompts).__name__}"
            )
        chunks = plan_decode(wire, self.config.max_prompts_per_request)
        if isinstance(embedding, RemoteEmbedding):
            session = yield from self.session_info()
            if session is not None:
                try:
                    preds = yield from self._session_decode(
                        embedding, chunks, len(wire), options, session
                    )
                    return preds[0] if single else preds
                except ModelNotReadyError:
                    if not (yield from self._session_gone()):
                        raise
            embedding = yield from self._local_embedding(embedding)
        info = yield from self.decoder_info()
        features = _wire.decoder_features(embedding, info.feature_dtype)
        model = self.config.decoder_model
        results: list[Prediction | None] = [None] * len(wire)
        yield from self.release_regions(self.regions.take_released())
        region: FeatureRegion | None = None
        if self.config.use_shared_memory:
            region = yield from self._region(embedding, features)

        def infer(region: FeatureRegion | None, chunk: DecodeChunk) -> Call:
            return self.call(
                "infer",
                model,
                model_name=model,
                inputs=self._decoder_inputs(features, region, chunk),
                outputs=_wire.requested_outputs(self.mod, _wire.DECODER_OUTPUTS),
            )

        for chunk in chunks:
            try:
                result = yield infer(region, chunk)
            except InferenceError as exc:
                if region is None or not _lost_region(exc):
                    raise
                # The server forgot the region (restarted, or it was released under us):
                # register it again, once, and re-send.
                logger.info("shm region %s unknown to the server: registering again", region.name)
                self.regions.drop(embedding, region)
                region = yield from self._region(embedding, features)
                result = yield infer(region, chunk)
            preds = yield Compute(
                _wire.parse_decoder_result, (result, len(chunk.indices), embedding, model, options)
            )
            for i, p in zip(chunk.indices.tolist(), preds):
                results[i] = p
        preds_out = [p for p in results if p is not None]
        return preds_out[0] if single else preds_out

    def _decoder_inputs(
        self, features: dict[str, np.ndarray], region: FeatureRegion | None, chunk: DecodeChunk
    ) -> list[Any]:
        """The decoder's inputs for one chunk: the features (or their shm region) and the
        prompts; with a region, a chunk without masks points at its all-zero "no mask" map
        instead of sending 256 kB of zeros."""
        if region is None:
            feats = [_wire.data_input(self.mod, n, a) for n, a in features.items()]
            return [*feats, *_wire.chunk_inputs(self.mod, chunk)]
        no_mask = not chunk.has_mask_input.any() and chunk.mask_input.shape[0] == 1
        mask = region.no_mask_input(self.mod) if no_mask else None
        return [*region.inputs(self.mod), *_wire.chunk_inputs(self.mod, chunk, mask)]

    def _region(
        self, embedding: ImageEmbedding, features: dict[str, np.ndarray]
    ) -> Flow[FeatureRegion]:
        """``embedding``'s registered shm region: reused, or created and registered now."""
        dtype = features[spec.IMAGE_EMBED].dtype
        region = self.regions.lookup(embedding, dtype)
        if region is not None:
            return region
        region = FeatureRegion(features)
        try:
            yield self.call(
                "register_system_shared_memory",
                name=region.name,
                key=region.key,
                byte_size=region.byte_size,
            )
        except BaseException:
            region.destroy()
            raise
        self.regions.add(embedding, region)
        # beyond the client's limit, the least recently used regions go now, not on a later call
        yield from self.release_regions(self.regions.take_released())
        return region

    def release_regions(self, regions: Sequence[FeatureRegion]) -> Flow[None]:
        """Unregister ``regions`` on the server and destroy them here (never raises)."""
        for region in regions:
            try:
                yield from self._unregister_region(region.name)
            finally:
                region.destroy()

    def close_flow(self) -> Flow[None]:
        """Release every shm region of this client (``close``)."""
        yield from self.release_regions(self.regions.release_all())

    def _unregister_region(self, name: str) -> Flow[None]:
        """Unregister a system shared-memory region, never raising (a finally's cleanup).

        Triton releases a request's inputs just after sending its response, so an unregister
        right after the last response can get "currently in use": that is retried for up to
        ``_SHM_RELEASE_S`` seconds. Anything else is logged.
        """
        deadline = time.monotonic() + _SHM_RELEASE_S
        delay = 0.005
        while True:
            try:
                yield self.call("unregister_system_shared_memory", name=name)
                return
            except ServerError as exc:
                if "in use" not in str(exc).lower() or time.monotonic() >= deadline:
                    logger.warning("could not unregister shm region %s: %s", name, exc)
                    return
            yield Sleep(delay)
            delay = min(2 * delay, 0.1)

    # sessions
    def upload_flow(self, wire: np.ndarray, hw: tuple[int, int]) -> Flow[RemoteEmbedding]:
        """op "encode": upload one encoder input ``[3, 1024, 1024]``, get its id.

        The id is computed here too (the same sha256 as the server's) and sent as the
        ``spec.SESSION_ROUTING_HEADER`` header with every request about the image, so that a
        gateway in front of several replicas can route all of them to one replica.
        """
        image_id = yield Compute(_wire.session_image_id, (wire, hw))
        model = self.config.session_model
        result = yield self.call(
            "infer",
            model,
            extra_headers={spec.SESSION_ROUTING_HEADER: image_id},
            model_name=model,
            inputs=_wire.session_encode_inputs(self.mod, [wire], [hw]),
            outputs=_wire.requested_outputs(self.mod, _wire.SESSION_ENCODE_OUTPUTS),
        )
        ((served_id, served_hw, fingerprint),) = _wire.parse_session_encode(result, 1)
        if served_id != image_id:
            logger.warning(
                "session model %r computes image ids differently (%s, here %s): using its id",
                model,
                served_id[:12],
                image_id[:12],
            )
        return RemoteEmbedding(
            image_id=served_id, orig_hw=served_hw, fingerprint=fingerprint, wire_image=wire
        )

    def _session_call(
        self, embedding: RemoteEmbedding, inputs: list[Any], outputs: Sequence[str]
    ) -> Flow[Any]:
        """One session request about ``embedding``. If the server no longer holds the image
        (UnknownImageError), the request is sent once more with the image attached: the server
        encodes it and answers from it (the fingerprint check of the answer then catches a
        replaced model)."""
        model = self.config.session_model
        route = {spec.SESSION_ROUTING_HEADER: embedding.image_id}
        try:
            return (
                yield self.call(
                    "infer",
                    model,
                    extra_headers=route,
                    model_name=model,
                    inputs=inputs,
                    outputs=_wire.requested_outputs(self.mod, outputs),
                )
            )
        except UnknownImageError:
            logger.info(
                "server does not hold image %s (evicted or restarted): sending it again",
                embedding.image_id[:12],
            )
        attached = _wire.session_image_inputs(self.mod, embedding.wire_image, embedding.orig_hw)
        return (
            yield self.call(
                "infer",
                model,
                extra_headers=route,
                model_name=model,
                inputs=[*inputs, *attached],
                outputs=_wire.requested_outputs(self.mod, outputs),
            )
        )

    def _session_decode(
        self,
        embedding: RemoteEmbedding,
        chunks: Sequence[DecodeChunk],
        n: int,
        options: DecodeOptions,
        session: _wire.SessionInfo,
    ) -> Flow[list[Prediction]]:
        """Decode by the session model, which answers what the call needs: only the selected
        mask tokens (``spec.SESSION_MULTIMASK``: 3 or 1 of the 4 low-res maps), or, when the
        caller needs no low-res logits, the masks themselves (``spec.SESSION_MASK_THRESHOLD``);
        either way computed by the same ``transforms`` functions, so the masks are the same."""
        results: list[Prediction | None] = [None] * n
        model = self.config.session_model
        masks_only = (
            session.returns_masks and not options.low_res_logits and not options.return_logits
        )
        multimask = options.multimask_output if session.selects_tokens else None
        threshold = options.mask_threshold if masks_only else None
        tokens = _wire.selected_tokens(options) if session.selects_tokens else spec.NUM_MASK_TOKENS
        for chunk in chunks:
            result = yield from self._session_call(
                embedding,
                _wire.session_decode_inputs(
                    self.mod, embedding.image_id, chunk, multimask, threshold
                ),
                _wire.SESSION_MASK_OUTPUTS if masks_only else _wire.DECODER_OUTPUTS,
            )
            if masks_only:
                step = Compute(
                    _wire.parse_session_masks,
                    (result, len(chunk.indices), embedding, model, options),
                )
            else:
                step = Compute(
                    _wire.parse_decoder_result,
                    (result, len(chunk.indices), embedding, model, options, tokens),
                )
            preds = yield step
            for i, p in zip(chunk.indices.tolist(), preds):
                results[i] = p
        return [p for p in results if p is not None]

    def features_flow(self, embedding: object) -> Flow[ImageEmbedding]:
        """The features of an embedding: an ``ImageEmbedding`` as it is; a ``RemoteEmbedding``'s
        downloaded from the session model (op "features"), or computed from its kept image when
        the server has no session model."""
        if isinstance(embedding, ImageEmbedding):
            return embedding
        if not isinstance(embedding, RemoteEmbedding):
            raise InvalidInputError(
                f"embedding must be an ImageEmbedding or RemoteEmbedding from encode(), got "
                f"{type(embedding).__name__}"
            )
        session = yield from self.session_info()
        if session is None:
            return (yield from self._local_embedding(embedding))
        try:
            result = yield from self._session_call(
                embedding,
                _wire.session_features_inputs(self.mod, embedding.image_id),
                _wire.SESSION_FEATURE_OUTPUTS,
            )
        except ModelNotReadyError:
            if not (yield from self._session_gone()):
                raise
            return (yield from self._local_embedding(embedding))
        (features,) = yield Compute(_wire.parse_encoder_result, (result, [embedding.orig_hw]))
        _wire.check_fingerprint(features.fingerprint, embedding, self.config.session_model)
        return features

    def _session_gone(self) -> Flow[bool]:
        """After a ModelNotReadyError from the session model (the models were forgotten): True
        if, automatic mode, the server has no session model any more (fall back to features)."""
        if self.config.use_sessions is not None:
            return False
        return (yield from self.session_info()) is None

    def _local_embedding(self, embedding: RemoteEmbedding) -> Flow[ImageEmbedding]:
        """Encode a ``RemoteEmbedding``'s kept image with the encoder (no session model now)."""
        key = b"remote:" + embedding.image_id.encode()
        hit = self.cache.get(key) if self.cache.enabled else None
        if isinstance(hit, ImageEmbedding):
            return hit
        logger.info("no session model: encoding image %s again", embedding.image_id[:12])
        info = yield from self.encoder_info()
        pixels = np.ascontiguousarray(embedding.wire_image[None], dtype=info.image_dtype)
        result = yield self.call(
            "infer",
            self.config.encoder_model,
            model_name=self.config.encoder_model,
            inputs=[_wire.data_input(self.mod, spec.ENCODER_IMAGE, pixels)],
            outputs=_wire.requested_outputs(self.mod, _wire.ENCODER_OUTPUTS),
        )
        (local,) = _wire.parse_encoder_result(result, [embedding.orig_hw])
        if self.cache.enabled:
            self.cache.put(key, local)
        return local


_SHM_RELEASE_S = 5.0  # how long an shm region may stay "in use" after the last response


def _lost_region(exc: BaseException) -> bool:
    """Whether a decoder error says the server does not know the shm region it was sent
    (Triton: "Unable to find shared memory region: '<name>'")."""
    low = str(exc).lower()
    return "unable to find" in low and "shared memory" in low


# --- drivers -----------------------------------------------------------------------------------
def run_sync(core: SAM2Core, flow: Flow[T], execute: Callable[[Step], Any]) -> T:
    """Drive ``flow`` with a blocking ``execute``; return its value or raise its error.

    A failed step is re-sent after a backoff while ``core.retry_delay`` allows it.
    """
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value
        except BaseException:
            # The error leaves through this frame, whose traceback would keep ``error`` and so
            # itself alive in a reference cycle, with the request buffers (17 MB) it refers
            # to, until the cyclic GC runs: under a burst of failures memory grew by GBs.
            error = None
            raise
        attempt = 0
        while True:
            reply, error = None, None
            try:
                reply = step.fn(*step.args) if isinstance(step, Compute) else execute(step)
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which re-raises it
                error = core.map_error(exc, step)
            delay = None if error is None else core.retry_delay(error, step, attempt)
            if delay is None:
                break
            attempt += 1
            execute(Sleep(delay))


async def run_async(core: SAM2Core, flow: Flow[T], execute: Callable[[Step], Awaitable[Any]]) -> T:
    """``run_sync`` for asyncio; ``Compute`` steps run in a worker thread."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value
        except BaseException:
            error = None  # no reference cycle through this frame (see run_sync)
            raise
        attempt = 0
        while True:
            reply, error = None, None
            try:
                if isinstance(step, Compute):
                    reply = await asyncio.to_thread(step.fn, *step.args)
                else:
                    reply = await execute(step)
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which re-raises it
                error = core.map_error(exc, step)
            delay = None if error is None else core.retry_delay(error, step, attempt)
            if delay is None:
                break
            attempt += 1
            await execute(Sleep(delay))
