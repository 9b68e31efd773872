"""Public value types of the sam2-triton client: prompts in, embeddings and predictions out.

All arrays are numpy arrays. Shapes use ``H, W`` for the original image size, ``C`` for the
number of masks per prompt (3 with ``multimask_output=True``, else 1) and ``N`` for prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import spec
from .errors import InvalidInputError

__all__ = [
    "CacheStats",
    "DecodeOptions",
    "ImageEmbedding",
    "Prediction",
    "Prompt",
    "RemoteEmbedding",
]


@dataclass(frozen=True, eq=False)
class Prompt:
    """One object prompt for one image, in the conventions of ``SAM2ImagePredictor.predict``.

    Any combination of points, a box and a mask is allowed, but at least one must be given.

    Attributes:
        point_coords: ``(P, 2)`` array-like of ``(x, y)`` points, in pixels of the original image
            (or in ``[0, 1]`` when decoding with ``normalize_coords=False``), or ``None``.
        point_labels: ``(P,)`` array-like of ints, 1 = foreground, 0 = background; required
            exactly when ``point_coords`` is given.
        box: ``(4,)`` array-like ``x0, y0, x1, y1`` (same units as the points), or ``None``.
        mask_input: ``(1, 256, 256)`` or ``(256, 256)`` float low-resolution mask logits, usually
            ``Prediction.low_res_logits[i:i+1]`` of an earlier prediction, or ``None``.
    """

    point_coords: Any = None
    point_labels: Any = None
    box: Any = None
    mask_input: Any = None


@dataclass(frozen=True)
class DecodeOptions:
    """How a decode turns the decoder's outputs into masks: one value for one call.

    Attributes:
        multimask_output: three masks per prompt (``True``, SAM 2's default) or one, chosen by
            SAM 2's stability rule (``False``).
        return_logits: ``Prediction.masks`` as float32 logits instead of bool masks.
        normalize_coords: prompts are pixels of the original image (``True``) or already in
            ``[0, 1]`` relative to it (``False``), as in ``SAM2ImagePredictor.predict``.
        mask_threshold: masks are ``logits > mask_threshold``.
        low_res_logits: return ``Prediction.low_res_logits`` (SAM 2 does; feed them back as
            ``mask_input`` to refine). ``False``: ``None`` instead, and a session click then
            gets the masks from the server (computed there by the same SDK functions, the same
            bits) instead of 1 or 3 low-resolution maps of 262 kB each: a few kB per click.
    """

    multimask_output: bool = True
    return_logits: bool = False
    normalize_coords: bool = True
    mask_threshold: float = spec.MASK_THRESHOLD
    low_res_logits: bool = True

    def __post_init__(self) -> None:
        for name in ("multimask_output", "return_logits", "normalize_coords", "low_res_logits"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise InvalidInputError(f"{name} must be True or False, got {value!r}")
            object.__setattr__(self, name, bool(value))
        threshold = self.mask_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
            raise InvalidInputError(f"mask_threshold must be a number, got {threshold!r}")
        if not np.isfinite(threshold):
            raise InvalidInputError(f"mask_threshold must be finite, got {threshold!r}")
        object.__setattr__(self, "mask_threshold", float(threshold))


@dataclass(frozen=True, eq=False)
class ImageEmbedding:
    """The encoder's features of one image: everything the decoder needs, nothing else.

    Arrays are read-only and keep the dtype the server produced (float32, or float16 when the
    repository was exported with FP16 features).

    Attributes:
        image_embed: ``[1, 256, 64, 64]``.
        high_res_feats_0: ``[1, 32, 256, 256]``.
        high_res_feats_1: ``[1, 64, 128, 128]``.
        orig_hw: ``(H, W)`` of the original image.
        fingerprint: int32 ``[2]``, identifies the model weights that produced the features;
            the decoder refuses (``EmbeddingMismatchError``) features of other weights.
    """

    image_embed: np.ndarray
    high_res_feats_0: np.ndarray
    high_res_feats_1: np.ndarray
    orig_hw: tuple[int, int]
    fingerprint: np.ndarray

    def __post_init__(self) -> None:
        for name in (*spec.FEATURE_NAMES, "fingerprint"):
            arr = np.ascontiguousarray(getattr(self, name)).view()  # a view: the caller's
            arr.setflags(write=False)  # array keeps its flags, ours is read-only
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "orig_hw", (int(self.orig_hw[0]), int(self.orig_hw[1])))

    @property
    def nbytes(self) -> int:
        """Bytes held by the feature arrays (what the embedding cache budgets)."""
        return int(sum(getattr(self, n).nbytes for n in spec.FEATURE_NAMES))

    @property
    def dtype(self) -> np.dtype:
        """dtype of the feature arrays (float32 or float16)."""
        return self.image_embed.dtype

    def features(self) -> dict[str, np.ndarray]:
        """The three feature tensors by their wire names (``spec.FEATURE_NAMES``)."""
        return {n: getattr(self, n) for n in spec.FEATURE_NAMES}

    def __repr__(self) -> str:
        fp = "".join(f"{int(v) & 0xFFFFFFFF:08x}" for v in self.fingerprint.reshape(-1))
        return (
            f"ImageEmbedding(orig_hw={self.orig_hw}, dtype={self.dtype}, "
            f"nbytes={self.nbytes}, fingerprint={fp})"
        )


@dataclass(frozen=True, eq=False)
class RemoteEmbedding:
    """An image whose features the server keeps (``sam2_session``): what ``encode`` returns when
    the client uses sessions. Pass it to ``decode`` like an ``ImageEmbedding``; each click then
    sends only ``image_id`` and the prompt. ``SAM2Client.fetch_embedding`` downloads the features.

    Attributes:
        image_id: the server's id of the image, 64 lowercase hex characters (sha256 of the
            encoder input and ``orig_hw``; the same picture always gets the same id).
        orig_hw: ``(H, W)`` of the original image.
        fingerprint: int32 ``[2]``, the weights of the encoder that made the features.
        wire_image: ``[3, 1024, 1024]`` encoder input in the server's input dtype (read-only),
            kept so that the client can upload the image again, transparently, when the server
            no longer holds it (evicted, restarted). 12.6 MB in float32.
    """

    image_id: str
    orig_hw: tuple[int, int]
    fingerprint: np.ndarray
    wire_image: np.ndarray

    def __post_init__(self) -> None:
        for name in ("fingerprint", "wire_image"):
            arr = np.ascontiguousarray(getattr(self, name)).view()
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "orig_hw", (int(self.orig_hw[0]), int(self.orig_hw[1])))
        object.__setattr__(self, "image_id", str(self.image_id))

    @property
    def nbytes(self) -> int:
        """Bytes held on the client: the kept encoder input (what the embedding cache budgets)."""
        return int(self.wire_image.nbytes)

    def __repr__(self) -> str:
        return (
            f"RemoteEmbedding(image_id={self.image_id[:12]}..., orig_hw={self.orig_hw}, "
            f"nbytes={self.nbytes})"
        )


@dataclass(frozen=True, eq=False)
class Prediction:
    """The result of one prompt.

    Attributes:
        masks: ``[C, H, W]`` bool (thresholded at ``mask_threshold``), or float32 logits when
            decoded with ``return_logits=True``.
        scores: ``[C]`` float32 predicted IoU of each mask.
        low_res_logits: ``[C, 256, 256]`` float32 logits clamped to +-32; pass
            ``low_res_logits[i:i+1]`` as ``Prompt.mask_input`` to refine mask ``i``. ``None``
            when decoded with ``DecodeOptions(low_res_logits=False)``.
        object_score_logits: logit that an object is present at all (> 0: present).
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray | None
    object_score_logits: float

    def __repr__(self) -> str:
        return (
            f"Prediction(masks={self.masks.dtype}{list(self.masks.shape)}, "
            f"scores={np.round(self.scores, 4).tolist()}, "
            f"object_score_logits={self.object_score_logits:.4g})"
        )


@dataclass(frozen=True)
class CacheStats:
    """Counters of a client's embedding cache."""

    hits: int
    misses: int
    entries: int
    nbytes: int
    max_bytes: int
