"""``AsyncSAM2Client``: the asyncio client (tritonclient.grpc.aio or tritonclient.http.aio).

Same methods, arguments and results as ``SAM2Client``, as coroutines. Validation, request
building, response parsing and error mapping are the same code (``_core``); CPU-heavy steps
(image decoding, mask upsampling) run in worker threads so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from . import spec
from ._base import ClientBase
from ._config import triton_client_kwargs
from ._core import Call, Sleep, decode_options, run_async
from .errors import ClientClosedError
from .types import (
    DecodeOptions,
    ImageEmbedding,
    Prediction,
    Prompt,
    RemoteEmbedding,
)

logger = logging.getLogger(__name__)


class AsyncSAM2Client(ClientBase):
    """asyncio twin of ``SAM2Client`` (see there for the arguments).

    The underlying tritonclient is created lazily inside the running event loop; one client
    serves all concurrent coroutines. Use ``async with`` or ``await close()``.
    """

    _aio = True

    def _setup(self) -> None:
        self._triton: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --- execution ------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._closed:
            raise ClientClosedError("this AsyncSAM2Client is closed: create a new one")
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
        if self._closed:
            flow.close()
            raise ClientClosedError("this AsyncSAM2Client is closed: create a new one")
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
        *,
        options: DecodeOptions | None = None,
    ) -> Prediction | list[Prediction]:
        """Masks for one or many prompts on one embedded image (see ``SAM2Client.decode``)."""
        return await self._run(
            self._core.decode_flow(
                embedding,
                prompts,
                decode_options(
                    options, multimask_output, return_logits, normalize_coords, mask_threshold
                ),
            )
        )

    async def fetch_embedding(self, embedding: ImageEmbedding | RemoteEmbedding) -> ImageEmbedding:
        """The features of an embedding (see ``SAM2Client.fetch_embedding``)."""
        return await self._run(self._core.features_flow(embedding))

    async def close(self) -> None:
        """Release the client's shared-memory regions and close the connection; the client
        cannot be used afterwards (``ClientClosedError``). Closing twice does nothing."""
        if self._closed:
            return
        try:
            if self._triton is not None:
                await run_async(self._core, self._core.close_flow(), self._execute)
            else:  # never connected: nothing registered on a server
                for region in self._core.regions.release_all():
                    region.destroy()
        finally:
            self._closed = True
        triton, self._triton = self._triton, None
        if triton is not None:
            await triton.close()

    async def __aenter__(self) -> AsyncSAM2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
