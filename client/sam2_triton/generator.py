"""``SAM2AutomaticMaskGenerator``: a drop-in for ``sam2.automatic_mask_generator``'s class that
runs on Triton (``sam2_everything``: one request per image, all the work on the server).

Same parameters, defaults and ``generate(image)`` records as SAM 2's. Differences: the
constructor takes a client (or ``url``/``protocol``) instead of a model; ``generate`` also takes a
path, encoded bytes, a PIL image or a ``RemoteEmbedding`` (an image the server holds; no crops);
``min_mask_region_area`` > 0 is refused (see ``sam2_triton.amg.GeneratorOptions``); unknown
keyword arguments are an error, not ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import amg, spec
from ._everything import generate_flow
from .aio import AsyncSAM2Client
from .amg import GeneratorOptions
from .client import SAM2Client
from .errors import InferenceError, InvalidInputError

DEFAULT_TIMEOUT_S = 600.0  # a new client's request timeout: one request segments a whole image


def sam2_records(result: dict[str, Any], output_mode: str) -> list[dict[str, Any]]:
    """SAM 2's records from a ``sam2_everything`` result (COCO RLE): ``segmentation`` as a bool
    ``(H, W)`` array (``"binary_mask"``), ``mask_to_rle_pytorch``'s dict (``"uncompressed_rle"``)
    or ``coco_encode_rle``'s dict (``"coco_rle"``)."""
    from pycocotools import mask as coco_mask

    try:
        records = [dict(r) for r in result["masks"]]
    except (KeyError, TypeError) as exc:
        raise InferenceError(f"{spec.EVERYTHING_MODEL} returned no mask records: {exc}") from None
    if output_mode == "coco_rle" or not records:
        return records
    rles = [
        {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
        for r in records
    ]
    masks = coco_mask.decode(rles)  # (H, W, K) uint8
    for k, record in enumerate(records):
        mask = masks[:, :, k].astype(bool)
        record["segmentation"] = (
            mask if output_mode == "binary_mask" else amg.rle_to_uncompressed(mask)
        )
    return records


def _options(kwargs: dict[str, Any]) -> GeneratorOptions:
    grids = kwargs.get("point_grids")
    if grids is not None:
        kwargs = {**kwargs, "point_grids": tuple(grids)}
    return GeneratorOptions.from_mapping(kwargs, "SAM2AutomaticMaskGenerator")


class SAM2AutomaticMaskGenerator:
    """Generates masks for a whole image, as SAM 2's ``SAM2AutomaticMaskGenerator`` does.

    Arguments after ``client``/``url``/``protocol``/``model`` are SAM 2's (same names and
    defaults, see ``GeneratorOptions``); other keyword arguments configure a new ``SAM2Client``,
    whose ``timeout_s`` defaults to ``DEFAULT_TIMEOUT_S`` here: one request does a whole image
    (well under a second per 64 points on a GPU, seconds per 64 points on a CPU).
    """

    def __init__(
        self,
        client: SAM2Client | None = None,
        *,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = spec.EVERYTHING_MODEL,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        **client_kwargs: Any,
    ) -> None:
        self.options = _options(
            dict(
                points_per_side=points_per_side,
                points_per_batch=points_per_batch,
                pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_score_thresh,
                stability_score_offset=stability_score_offset,
                mask_threshold=mask_threshold,
                box_nms_thresh=box_nms_thresh,
                crop_n_layers=crop_n_layers,
                crop_nms_thresh=crop_nms_thresh,
                crop_overlap_ratio=crop_overlap_ratio,
                crop_n_points_downscale_factor=crop_n_points_downscale_factor,
                point_grids=point_grids,
                min_mask_region_area=min_mask_region_area,
                output_mode=output_mode,
                use_m2m=use_m2m,
                multimask_output=multimask_output,
            )
        )
        if client is not None and not isinstance(client, SAM2Client):
            raise InvalidInputError(f"client must be a SAM2Client, got {type(client).__name__}")
        if client is not None and (url is not None or protocol != "grpc" or client_kwargs):
            raise InvalidInputError(
                "pass either client= or the options of a new client (url, protocol, ...), not both"
            )
        self._owns_client = client is None
        client_kwargs.setdefault("timeout_s", DEFAULT_TIMEOUT_S)
        self.client = client or SAM2Client(url, protocol, **client_kwargs)
        self.model = model

    def generate(self, image: Any) -> list[dict[str, Any]]:
        """SAM 2's records for every mask of ``image`` (an ``H x W x 3`` uint8 array, as SAM 2
        takes it; or a path, encoded bytes, a PIL image, a ``RemoteEmbedding``)."""
        flow = generate_flow(self.client._core, image, self.options, self.model)
        return sam2_records(self.client._run(flow), self.options.output_mode)

    def close(self) -> None:
        """Close the client if this generator created it."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> SAM2AutomaticMaskGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSAM2AutomaticMaskGenerator:
    """The asyncio twin of ``SAM2AutomaticMaskGenerator``, on an ``AsyncSAM2Client`` (same flow):
    ``AsyncSAM2AutomaticMaskGenerator(client, points_per_side=16, ...)``."""

    def __init__(
        self, client: AsyncSAM2Client, model: str = spec.EVERYTHING_MODEL, **generator_kwargs: Any
    ) -> None:
        if not isinstance(client, AsyncSAM2Client):
            raise InvalidInputError(
                f"client must be an AsyncSAM2Client, got {type(client).__name__}"
            )
        self.options = _options(generator_kwargs)
        self.client = client
        self.model = model

    async def generate(self, image: Any) -> list[dict[str, Any]]:
        """See ``SAM2AutomaticMaskGenerator.generate``."""
        flow = generate_flow(self.client._core, image, self.options, self.model)
        return sam2_records(await self.client._run(flow), self.options.output_mode)
