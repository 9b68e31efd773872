"""Text prompts: ``LangSAM``, a drop-in for Lang-SAM's ``lang_sam.LangSAM`` that runs on Triton.

One ``sam2_text`` request per image (contract: ``text_spec``): the server runs Grounding DINO
on the text prompt, keeps the boxes above the thresholds and turns every box into a SAM 2 mask,
as ``LangSAM.predict`` does. The flows are written once on the core's ``Call``/``Compute``
steps (``text_flows``), so ``LangSAM`` (blocking) and ``AsyncLangSAM`` (asyncio) cannot drift
apart.

    from PIL import Image
    from sam2_triton import LangSAM

    with LangSAM(url="localhost:8001") as model:
        (result,) = model.predict([Image.open("cats.jpg")], ["cat."])
        result["masks"]  # [N, H, W] float32 0/1, one per box in result["boxes"]
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from typing import Any, TypeVar

from PIL import Image

from . import text_spec
from ._core import Flow
from .aio import AsyncSAM2Client
from .client import SAM2Client
from .errors import ClientClosedError, InvalidInputError
from .text_flows import (
    TextSegmentation,
    check_concurrency,
    check_text,
    check_threshold,
    lang_sam_flow,
    lang_sam_result,
    parse_result,
    predict_args,
    result_document,
    segment_text_flow,
    segmentation_flow,
    text_ready_flow,
)

# the classes, and the names of text_flows that callers import from here
__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_TIMEOUT_S",
    "AsyncLangSAM",
    "LangSAM",
    "TextSegmentation",
    "check_text",
    "check_threshold",
    "lang_sam_flow",
    "lang_sam_result",
    "parse_result",
    "result_document",
    "segment_text_flow",
    "segmentation_flow",
    "text_ready_flow",
]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0  # a new client's request timeout: one request detects and segments
DEFAULT_MAX_CONCURRENCY = 4  # images of one predict() call in flight at once


class LangSAM:
    """Lang-SAM's ``LangSAM`` on Triton: ``predict(images_pil, texts_prompt, box_threshold=0.3,
    text_threshold=0.25)`` with the same arguments, defaults and result dicts (shapes, dtypes
    and quirks: see ``lang_sam_result``).

    Differences: the constructor takes a ``SAM2Client`` (or ``url``/``protocol`` and the other
    ``SAM2Client`` options) instead of ``sam_type``/checkpoints/``device``: the server's
    export decides the models. Inputs are validated (``InvalidInputError``...) where Lang-SAM
    would fail deep inside transformers or torch. Images of one call go as separate requests,
    up to ``max_concurrency`` at once, instead of one padded batch: Grounding DINO then sees
    each image padded to its own canvas (``text_spec``), not to the batch's largest image.
    New clients get ``timeout_s=DEFAULT_TIMEOUT_S`` unless given. Thread-safe.
    """

    def __init__(
        self,
        client: SAM2Client | None = None,
        *,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = text_spec.TEXT_MODEL,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        **client_kwargs: Any,
    ) -> None:
        if client is not None and not isinstance(client, SAM2Client):
            raise InvalidInputError(
                f"client must be a SAM2Client, got {type(client).__name__} (Lang-SAM's "
                "sam_type/checkpoints are the server's export: give url=... or client=...)"
            )
        if client is not None and (url is not None or protocol != "grpc" or client_kwargs):
            raise InvalidInputError(
                "pass either client= or the options of a new client (url, protocol, ...), not both"
            )
        self.max_concurrency = check_concurrency(max_concurrency)
        self.model = model
        self._owns_client = client is None
        client_kwargs.setdefault("timeout_s", DEFAULT_TIMEOUT_S)
        self.client = client or SAM2Client(url, protocol, **client_kwargs)
        # one pool for the predictor's life (threads start on demand): HTTP connections are
        # per thread, so fresh threads per call would open fresh connections
        self._pool = cf.ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="sam2-langsam")
        self._closed = False

    def _run(self, flow: Flow[T]) -> T:
        if self._closed:
            flow.close()
            raise ClientClosedError("this LangSAM is closed: create a new one")
        return self.client._run(flow)

    def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the server, SAM 2's models and ``sam2_text`` are ready
        (ServerUnavailableError or ModelNotReadyError after ``timeout_s`` seconds)."""
        self._run(text_ready_flow(self.client._core, self.model, timeout_s))

    def segment(
        self,
        image: object,
        text: str,
        box_threshold: float = text_spec.BOX_THRESHOLD,
        text_threshold: float = text_spec.TEXT_THRESHOLD,
    ) -> TextSegmentation:
        """What ``text`` names in ``image`` (a PIL image or ``H x W x 3`` uint8 array: its raw
        pixels; a path or encoded bytes: decoded by the server with EXIF orientation applied),
        as a ``TextSegmentation`` (``masks`` ``[N, H, W]`` bool, ``boxes`` ``[N, 4]`` float32,
        ``scores``/``mask_scores`` ``[N]`` float32, ``labels``, COCO ``rles``)."""
        core = self.client._core
        return self._run(
            segmentation_flow(core, image, text, box_threshold, text_threshold, self.model)
        )

    def _predict_one(self, item: tuple[Image.Image, str, float, float]) -> dict[str, Any]:
        image, text, bt, tt = item
        return self._run(lang_sam_flow(self.client._core, image, text, bt, tt, self.model))

    def predict(
        self,
        images_pil: list[Image.Image],
        texts_prompt: list[str],
        box_threshold: float = text_spec.BOX_THRESHOLD,
        text_threshold: float = text_spec.TEXT_THRESHOLD,
    ) -> list[dict[str, Any]]:
        """Lang-SAM's ``LangSAM.predict``: masks of what ``texts_prompt[i]`` names in
        ``images_pil[i]``, one ``sam2_text`` request per image (up to ``max_concurrency`` in
        flight), results in input order.

        Args:
            images_pil: PIL images; sent as their stored pixels, like Lang-SAM (no EXIF
                transpose); non-RGB modes are converted as ``.convert("RGB")`` would.
            texts_prompt: one prompt per image, e.g. "cat. remote control."; "." is appended
                on the server unless the prompt ends with one (the caller's list is not
                changed, as in current Lang-SAM).
            box_threshold, text_threshold: in ``[0, 1]``, strict ``>`` as in transformers.

        Returns:
            Per image Lang-SAM's dict (see ``lang_sam_result``): ``scores`` [N] float32,
            ``boxes`` [N, 4] float32 xyxy pixels, ``labels``/``text_labels`` list[str],
            ``masks`` [N, H, W] float32 0/1 and ``mask_scores`` [N] float32 (0-d when N == 1);
            with N == 0 ``masks`` and ``mask_scores`` are ``[]``.

        Raises:
            InvalidInputError: lists of different lengths, empty, thresholds outside [0, 1];
            InvalidImageError: not a PIL image, too large; InvalidPromptError: a blank or
            too long prompt (all before anything is sent). InferenceError: the server refused
            the request (e.g. INVALID_ARG) or failed; ModelNotReadyError: no ``sam2_text``.
        """
        items = predict_args(images_pil, texts_prompt, box_threshold, text_threshold)
        if len(items) == 1 or self._closed:  # closed: _run raises ClientClosedError
            return [self._predict_one(items[0])]
        return list(self._pool.map(self._predict_one, items))

    def close(self) -> None:
        """Stop the worker threads; close the client if this predictor created it. Closing
        twice does nothing; ``predict`` afterwards raises ClientClosedError."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> LangSAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLangSAM:
    """The asyncio twin of ``LangSAM`` on an ``AsyncSAM2Client`` (same flows):
    ``await AsyncLangSAM(client).predict([image], ["cat."])``. The client stays the caller's."""

    def __init__(
        self,
        client: AsyncSAM2Client,
        *,
        model: str = text_spec.TEXT_MODEL,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        if not isinstance(client, AsyncSAM2Client):
            raise InvalidInputError(
                f"client must be an AsyncSAM2Client, got {type(client).__name__}"
            )
        self.client = client
        self.model = model
        self.max_concurrency = check_concurrency(max_concurrency)

    async def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        """See ``LangSAM.wait_until_ready``."""
        await self.client._run(text_ready_flow(self.client._core, self.model, timeout_s))

    async def segment(
        self,
        image: object,
        text: str,
        box_threshold: float = text_spec.BOX_THRESHOLD,
        text_threshold: float = text_spec.TEXT_THRESHOLD,
    ) -> TextSegmentation:
        """See ``LangSAM.segment``."""
        flow = segmentation_flow(
            self.client._core, image, text, box_threshold, text_threshold, self.model
        )
        return await self.client._run(flow)

    async def predict(
        self,
        images_pil: list[Image.Image],
        texts_prompt: list[str],
        box_threshold: float = text_spec.BOX_THRESHOLD,
        text_threshold: float = text_spec.TEXT_THRESHOLD,
    ) -> list[dict[str, Any]]:
        """See ``LangSAM.predict``."""
        items = predict_args(images_pil, texts_prompt, box_threshold, text_threshold)
        gate = asyncio.Semaphore(self.max_concurrency)
        core = self.client._core

        async def one(item: tuple[Image.Image, str, float, float]) -> dict[str, Any]:
            image, text, bt, tt = item
            async with gate:
                flow = lang_sam_flow(core, image, text, bt, tt, self.model)
                return await self.client._run(flow)

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one image failed: the others are not needed any more
                task.cancel()
            raise
