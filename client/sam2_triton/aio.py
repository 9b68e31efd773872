"""``AsyncSAM2Client``: the asyncio client (tritonclient.grpc.aio or tritonclient.http.aio).

Same methods, arguments and results as ``SAM2Client``, as coroutines. Validation, request
building, response parsing and error mapping are the same code (``_core``); CPU-heavy steps
(image decoding, mask upsampling) run in worker threads so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from . import spec
from ._config import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_MAX_PROMPTS,
    DEFAULT_RETRY_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    ClientConfig,
    make_config,
    triton_client_kwargs,
)
from ._core import Call, SAM2Core, Sleep, run_async
from .client import _triton_module
from .types import CacheStats, ImageEmbedding, Prediction, Prompt, RemoteEmbedding

logger = logging.getLogger(__name__)


class AsyncSAM2Client:
    """asyncio twin of ``SAM2Client`` (see there for the arguments).

    The underlying tritonclient is created lazily inside the running event loop; one client
    serves all concurrent coroutines. Use ``async with`` or ``await close()``.
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        encoder_model: str = spec.ENCODER_MODEL,
        decoder_model: str = spec.DECODER_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        insecure: bool = False,
        headers: Mapping[str, str] | None = None,
        embedding_cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_prompts_per_request: int = DEFAULT_MAX_PROMPTS,
        use_shared_memory: bool = False,
        verbose: bool = False,
        retries: int = 0,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        use_sessions: bool | None = None,
        session_model: str = spec.SESSION_MODEL,
    ) -> None:
        self.config: ClientConfig = make_config(
            url,
            protocol,
            timeout_s=timeout_s,
            ssl=ssl,
            headers=headers,
            embedding_cache_bytes=embedding_cache_bytes,
            max_prompts_per_request=max_prompts_per_request,
            encoder_model=encoder_model,
            decoder_model=decoder_model,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            insecure=insecure,
            use_shared_memory=use_shared_memory,
            verbose=verbose,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            use_sessions=use_sessions,
            session_model=session_model,
        )
        self._mod = _triton_module(self.config.protocol, aio=True)
        self._core = SAM2Core(self.config, self._mod)
        self._triton: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --- execution ------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._closed:
            raise RuntimeError("the AsyncSAM2Client is closed")
        loop = asyncio.get_running_loop()
        if self._triton is None or self._loop is not loop:
            # tritonclient's aio clients are bound to the loop they were made in; a client used
            # from a new loop (e.g. a second asyncio.run) gets a fresh connection.
            self._triton = self._mod.InferenceServerClient(
                **triton_client_kwargs(self.config, aio=True)
            )
            self._loop = loop
        return self._triton

    async def _execute(self, step: Call | Sleep) -> Any:
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        pending = getattr(self._client(), step.method)(**step.kwargs)
        if self.config.protocol == "http":  # http.aio has no per-request deadline of its own
            return await asyncio.wait_for(pending, self.config.timeout_s)
        return await pending

    async def _run(self, flow: Any) -> Any:
        return await run_async(self._core, flow, self._execute)

    # --- API ------------------------------------------------------------------------------
    async def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the server and both models are ready (see ``SAM2Client``)."""
        await self._run(self._core.ready_flow(timeout_s))

    async def encode(self, image: Any) -> ImageEmbedding | RemoteEmbedding:
        """Embed one image; cached by pixels."""
        return (await self._run(self._core.encode_flow([image])))[0]

    async def encode_batch(self, images: Sequence[Any]) -> list[ImageEmbedding | RemoteEmbedding]:
        """Embed several images in one ``[B, 3, 1024, 1024]`` request (cache misses only)."""
        return await self._run(self._core.encode_flow(images))

    async def decode(
        self,
        embedding: ImageEmbedding | RemoteEmbedding,
        prompts: Prompt | Sequence[Prompt],
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
        mask_threshold: float = spec.MASK_THRESHOLD,
    ) -> Prediction | list[Prediction]:
        """Masks for one or many prompts on one embedded image (see ``SAM2Client.decode``)."""
        return await self._run(
            self._core.decode_flow(
                embedding,
                prompts,
                multimask_output,
                return_logits,
                normalize_coords,
                mask_threshold,
            )
        )

    async def fetch_embedding(self, embedding: ImageEmbedding | RemoteEmbedding) -> ImageEmbedding:
        """The features of an embedding (see ``SAM2Client.fetch_embedding``)."""
        return await self._run(self._core.features_flow(embedding))

    def cache_stats(self) -> CacheStats:
        return self._core.cache.stats()

    def clear_cache(self) -> None:
        self._core.cache.clear()

    async def close(self) -> None:
        """Close the connection; the client cannot be used afterwards."""
        self._closed = True
        triton, self._triton = self._triton, None
        if triton is not None:
            await triton.close()

    async def __aenter__(self) -> AsyncSAM2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        c = self.config
        return f"AsyncSAM2Client(url={c.url!r}, protocol={c.protocol!r})"
