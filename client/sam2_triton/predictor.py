"""``SAM2ImagePredictor``: a drop-in for ``sam2.sam2_image_predictor.SAM2ImagePredictor`` that runs
on Triton through ``SAM2Client`` (no torch).

Same methods, arguments, defaults, return types, shapes and dtypes as SAM 2's, with these
differences: the constructor takes a client (or ``url``/``protocol``) instead of a model;
``get_image_embedding`` returns a numpy array instead of a torch tensor; prompts are validated
(points/boxes outside the image, labels other than 0/1, empty prompts raise
``InvalidPromptError`` instead of being run); ``max_hole_area``/``max_sprinkle_area`` > 0 are
not supported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import spec
from .client import SAM2Client
from .errors import ImageNotSetError, InvalidImageError, InvalidInputError, InvalidPromptError
from .types import DecodeOptions, ImageEmbedding, Prediction, Prompt, RemoteEmbedding

logger = logging.getLogger(__name__)


def _batch(name: str, value: Any, item_ndim: int) -> np.ndarray | None:
    """``value`` as an array with a leading batch axis (added when it has ``item_ndim`` dims)."""
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64 if name != "point_labels" else None)
    except (TypeError, ValueError) as exc:
        raise InvalidPromptError(f"{name} must be a numeric array") from exc
    if arr.ndim == item_ndim:
        return arr[None]
    if arr.ndim == item_ndim + 1:
        return arr
    raise InvalidPromptError(
        f"{name} must have {item_ndim} dims (one object) or {item_ndim + 1} (a batch of "
        f"objects), got shape {arr.shape}"
    )


def prompts_from_sam2_args(
    point_coords: Any, point_labels: Any, box: Any, mask_input: Any
) -> list[Prompt]:
    """Split SAM 2 ``predict`` arguments into one ``Prompt`` per object, like SAM 2 batches them.

    ``point_coords`` ``(P, 2)`` or ``(B, P, 2)`` with ``point_labels`` ``(P,)``/``(B, P)``;
    ``box`` ``(4,)`` or ``(B, 4)``; ``mask_input`` ``(1, 256, 256)`` (shared by all objects) or
    ``(B, 1, 256, 256)``.
    """
    if point_coords is not None and point_labels is None:
        raise InvalidPromptError("point_labels must be supplied if point_coords is supplied")
    coords = _batch("point_coords", point_coords, 2)
    labels = _batch("point_labels", point_labels, 1) if coords is not None else None
    if labels is not None and coords is not None and labels.shape[:1] != coords.shape[:1]:
        raise InvalidPromptError(
            f"point_labels {labels.shape} and point_coords {coords.shape} disagree on the "
            "number of objects"
        )
    boxes = _batch("box", box, 1)
    if mask_input is not None and np.ndim(mask_input) == 2:  # (256, 256): one shared mask
        mask_input = np.asarray(mask_input)[None]
    masks = _batch("mask_input", mask_input, 3)
    sizes = {n: a.shape[0] for n, a in (("point_coords", coords), ("box", boxes)) if a is not None}
    if len(set(sizes.values())) > 1:
        raise InvalidPromptError(
            f"point_coords and box must describe the same number of objects, got {sizes}"
        )
    n = next(iter(sizes.values()), masks.shape[0] if masks is not None else 1)
    if masks is not None and masks.shape[0] not in (1, n):
        raise InvalidPromptError(
            f"mask_input holds {masks.shape[0]} masks for {n} objects; give 1 (shared) or {n}"
        )
    return [
        Prompt(
            point_coords=None if coords is None else coords[i],
            point_labels=None if labels is None else labels[i],
            box=None if boxes is None else boxes[i],
            mask_input=None if masks is None else masks[i if masks.shape[0] > 1 else 0],
        )
        for i in range(n)
    ]


class SAM2ImagePredictor:
    """SAM 2's image predictor API on a Triton server. Arrays in, numpy arrays out.

    Args:
        client: a ``SAM2Client`` to use (not closed by ``close()``); if ``None`` a client is
            created from ``url``, ``protocol`` and ``client_kwargs`` and owned by the predictor.
        mask_threshold: threshold for turning mask logits into binary masks.
        max_hole_area, max_sprinkle_area: must be 0 (not supported).
    """

    def __init__(
        self,
        client: SAM2Client | None = None,
        *,
        url: str | None = None,
        protocol: str = "grpc",
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        **client_kwargs: Any,
    ) -> None:
        if max_hole_area > 0 or max_sprinkle_area > 0:
            raise InvalidInputError(
                "max_hole_area / max_sprinkle_area > 0 (hole filling and sprinkle removal, SAM 2's "
                "optional CUDA post-processing) are not supported by sam2-triton; pass 0 and "
                "post-process the returned masks yourself"
            )
        if client is not None and not isinstance(client, SAM2Client):
            raise InvalidInputError(f"client must be a SAM2Client, got {type(client).__name__}")
        if client is not None and (url is not None or protocol != "grpc" or client_kwargs):
            given = sorted([*(["url"] if url is not None else []), *client_kwargs])
            given += ["protocol"] if protocol != "grpc" else []
            raise InvalidInputError(
                f"pass either client= or the options of a new client, not both (got {given} "
                "with client=); they would be ignored"
            )
        self._owns_client = client is None
        self.client = client or SAM2Client(url, protocol, **client_kwargs)
        self.mask_threshold = float(mask_threshold)
        self.reset_predictor()

    # --- state ----------------------------------------------------------------------------
    def reset_predictor(self) -> None:
        """Resets the image embeddings and other state variables."""
        self._is_image_set = False
        self._embeddings: list[ImageEmbedding | RemoteEmbedding] = []
        self._orig_hw: list[tuple[int, int]] | None = None
        self._is_batch = False

    @property
    def _features(self) -> dict[str, Any] | None:
        """SAM 2's feature dict, as numpy: ``image_embed`` [B,256,64,64], ``high_res_feats``."""
        if not self._embeddings:
            return None
        embs = self._local_embeddings()
        cat = [np.concatenate([getattr(e, n) for e in embs]) for n in spec.FEATURE_NAMES]
        return {"image_embed": cat[0], "high_res_feats": cat[1:]}

    def set_image(self, image: Any) -> None:
        """Computes the embedding of one image (``HxWx3`` RGB array in [0, 255], PIL image, path
        or encoded bytes) for ``predict``."""
        self.reset_predictor()
        emb = self.client.encode(image)
        self._embeddings = [emb]
        self._orig_hw = [emb.orig_hw]
        self._is_image_set = True

    def set_image_batch(self, image_list: list[Any]) -> None:
        """Computes the embeddings of a list of images (one request) for ``predict_batch``."""
        self.reset_predictor()
        if not isinstance(image_list, list):
            raise InvalidImageError(
                f"image_list must be a list of images, got {type(image_list).__name__}"
            )
        self._embeddings = self.client.encode_batch(image_list)
        self._orig_hw = [e.orig_hw for e in self._embeddings]
        self._is_image_set = True
        self._is_batch = True

    def get_image_embedding(self) -> np.ndarray:
        """The image embedding(s), ``[B, 256, 64, 64]`` numpy (SAM 2 returns a torch tensor).

        With sessions the features stay on the server; this downloads them (16.8 MB each).
        """
        if not self._is_image_set:
            raise ImageNotSetError(
                "An image must be set with .set_image(...) to generate an embedding."
            )
        return np.concatenate([e.image_embed for e in self._local_embeddings()])

    def _local_embeddings(self) -> list[ImageEmbedding]:
        return [self.client.fetch_embedding(e) for e in self._embeddings]

    # --- prediction -----------------------------------------------------------------------
    def _predict(
        self,
        img_idx: int,
        point_coords: Any,
        point_labels: Any,
        box: Any,
        mask_input: Any,
        multimask_output: bool,
        return_logits: bool,
        normalize_coords: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prompts = prompts_from_sam2_args(point_coords, point_labels, box, mask_input)
        options = DecodeOptions(
            multimask_output=multimask_output,
            return_logits=return_logits,
            normalize_coords=normalize_coords,
            mask_threshold=self.mask_threshold,
        )
        preds = self.client.decode(self._embeddings[img_idx], prompts, options=options)
        return _stack(preds if isinstance(preds, list) else [preds])

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for the prompts on the image set with ``set_image``.

        Args (as SAM 2): ``point_coords`` ``(P, 2)`` xy pixels or ``(B, P, 2)`` for B objects,
        ``point_labels`` ``(P,)``/``(B, P)`` in {0, 1}, ``box`` ``(4,)``/``(B, 4)`` xyxy,
        ``mask_input`` ``(1, 256, 256)`` low-res logits (or ``(B, 1, 256, 256)``).

        Returns:
            masks ``[C, H, W]`` float32 0/1 (logits if ``return_logits``), iou ``[C]`` float32,
            low-res logits ``[C, 256, 256]`` float32; with B > 1 objects each gains a leading
            ``B`` axis. ``C`` is 3 with ``multimask_output`` else 1.
        """
        if not self._is_image_set:
            raise ImageNotSetError(
                "An image must be set with .set_image(...) before mask prediction."
            )
        return self._predict(
            -1,
            point_coords,
            point_labels,
            box,
            mask_input,
            multimask_output,
            return_logits,
            normalize_coords,
        )

    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray] | None = None,
        point_labels_batch: Sequence[np.ndarray] | None = None,
        box_batch: Sequence[np.ndarray] | None = None,
        mask_input_batch: Sequence[np.ndarray] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """``predict`` for each image set with ``set_image_batch``; the i-th entry of each
        ``*_batch`` list is that image's argument. Returns lists of masks, ious, low-res logits."""
        if not self._is_batch:
            raise ImageNotSetError(
                "predict_batch should only be used after set_image_batch(...); "
                "call set_image_batch first"
            )
        if not self._is_image_set:
            raise ImageNotSetError(
                "An image must be set with .set_image_batch(...) before mask prediction."
            )
        out: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        for i in range(len(self._embeddings)):
            args = [
                None if b is None else b[i]
                for b in (point_coords_batch, point_labels_batch, box_batch, mask_input_batch)
            ]
            for acc, arr in zip(
                out, self._predict(i, *args, multimask_output, return_logits, normalize_coords)
            ):
                acc.append(arr)
        return out

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the client if this predictor created it."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> SAM2ImagePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stack(preds: list[Prediction]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAM 2's ``squeeze(0).float()``: drop the object axis when there is one object."""
    masks = np.stack([p.masks for p in preds]).astype(np.float32)
    ious = np.stack([p.scores for p in preds]).astype(np.float32)
    low = np.stack([p.low_res_logits for p in preds]).astype(np.float32)
    if len(preds) == 1:
        return masks[0], ious[0], low[0]
    return masks, ious, low
