"""Grounding DINO pre- and post-processing in numpy and ``tokenizers`` (never torch/transformers).

Each function reproduces one step of transformers 5.24 ``GroundingDinoProcessor`` as Lang-SAM
(``lang_sam.models.gdino.GDINO.predict``) calls it:

* :func:`preprocess_images`: ``GroundingDinoImageProcessor`` (torchvision backend) on uint8 RGB:
  resize (shortest edge 800, longest 1333, bilinear, antialiased, on uint8), rescale 1/255 and
  ImageNet mean/std fused, zero pad bottom/right, ``pixel_mask``. The uint8 resize is ATen's
  int16-weight antialiased kernel (``_upsample_bilinear2d_aa`` on uint8), reproduced exactly.
* :class:`GroundingTokenizer`: the BERT tokenizer (``tokenizer.json``), Lang-SAM's "." rule and
  transformers' candidate-label merging, padding to the longest prompt, cut to 256 tokens.
* :func:`post_process_grounded_object_detection`: sigmoid, thresholds, boxes in pixels, labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from sam2_triton import text_spec
from sam2_triton.errors import InvalidImageError, InvalidInputError, InvalidPromptError

__all__ = [
    "GroundingTokenizer",
    "lang_sam_prompt",
    "merge_candidate_labels",
    "normalize",
    "post_process_grounded_object_detection",
    "preprocess_images",
    "resize_uint8",
    "resized_size",
]

_F32 = np.float32


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def resized_size(
    hw: tuple[int, int],
    shortest_edge: int = text_spec.SHORTEST_EDGE,
    longest_edge: int = text_spec.LONGEST_EDGE,
) -> tuple[int, int]:
    """Output (h, w) of the resize; same as ``transformers.image_transforms.
    get_size_with_aspect_ratio(hw, shortest_edge, longest_edge)`` (same float/int steps)."""
    height, width = int(hw[0]), int(hw[1])
    size, raw_size = shortest_edge, None
    lo, hi = float(min(height, width)), float(max(height, width))
    if hi / lo * size > longest_edge:
        raw_size = longest_edge * lo / hi
        size = round(raw_size)
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        oh = int(raw_size * height / width) if raw_size is not None else int(size * height / width)
        return oh, size
    ow = int(raw_size * width / height) if raw_size is not None else int(size * width / height)
    return size, ow


def _aa_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices [n_out, K], int16-range weights [n_out, K] and their precision (bits) of
    ATen's antialiased bilinear kernel for uint8 (``_compute_index_ranges_int16_weights``, a port
    of Pillow's ``precompute_coeffs`` with weights quantised to fit int16)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (np.arange(n_out) + 0.5)
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), n_in)
    k = int((xmax - xmin).max())
    j = np.arange(k)
    w = np.clip(1.0 - np.abs((j[None, :] + xmin[:, None] - centers[:, None] + 0.5) * inv), 0, None)
    w[j[None, :] >= (xmax - xmin)[:, None]] = 0.0
    w = w / w.sum(1, keepdims=True)
    prec, wmax = 0, float(w.max())
    while prec < 22 and int(0.5 + wmax * (1 << (prec + 1))) < (1 << 15):
        prec += 1
    wq = np.where(w < 0, np.trunc(-0.5 + w * (1 << prec)), np.trunc(0.5 + w * (1 << prec)))
    return np.minimum(xmin[:, None] + j[None, :], n_in - 1), wq.astype(np.int64), prec


def _aa_pass(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    x = np.moveaxis(x, axis, -1)
    idx, wq, prec = _aa_taps(x.shape[-1], n_out)
    acc = np.full((*x.shape[:-1], n_out), 1 << (prec - 1), np.int64)
    for t in range(idx.shape[1]):
        acc += x[..., idx[:, t]].astype(np.int64) * wq[:, t]
    return np.moveaxis(np.clip(acc >> prec, 0, 255).astype(np.uint8), -1, axis)


def resize_uint8(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``H x W x 3`` uint8 RGB to ``size_hw``: ``h x w x 3`` uint8.

    Bit-identical to ``torchvision.transforms.v2.functional.resize(t, size_hw, BILINEAR,
    antialias=True)`` on a uint8 tensor (what ``TorchvisionBackend.resize`` runs for PIL/uint8
    input): horizontal pass then vertical pass, fixed-point weights, round-half-up, clamp.
    """
    oh, ow = size_hw
    out = image
    if ow != image.shape[1]:
        out = _aa_pass(out, ow, 1)
    if oh != image.shape[0]:
        out = _aa_pass(out, oh, 0)
    return np.ascontiguousarray(out)


def normalize(image: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``3 x H x W`` float32 ``(x - 255*mean) / (255*std)``.

    ``TorchvisionBackend.rescale_and_normalize`` fuses rescale into normalize: mean and std are
    float32 ``tensor(IMAGENET_DEFAULT_*) * (1 / rescale_factor)``, then ``tvF.normalize``
    (``sub`` then ``div``, float32)."""
    mean = (np.asarray(text_spec.IMAGE_MEAN, _F32) * _F32(1.0 / text_spec.RESCALE_FACTOR)).astype(
        _F32
    )
    std = (np.asarray(text_spec.IMAGE_STD, _F32) * _F32(1.0 / text_spec.RESCALE_FACTOR)).astype(
        _F32
    )
    x = image.astype(_F32).transpose(2, 0, 1)
    return ((x - mean[:, None, None]) / std[:, None, None]).astype(_F32)


def _check_image(image: object, i: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidImageError(f"image {i} must be a uint8 numpy array (H x W x 3 RGB)")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InvalidImageError(f"image {i} must be H x W x 3 RGB, got shape {image.shape}")
    return image


def preprocess_images(
    images: list[np.ndarray],
    pad_hw: tuple[int, int] | None = None,
    shortest_edge: int = text_spec.SHORTEST_EDGE,
    longest_edge: int = text_spec.LONGEST_EDGE,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """``GroundingDinoImageProcessor()(images, pad_size=...)`` on uint8 RGB arrays.

    Args:
        images: B arrays ``H_i x W_i x 3`` uint8 RGB (``np.asarray(pil_image.convert("RGB"))``).
        pad_hw: canvas (H, W) (an export size, ``detector_spec.export_size_for``); None pads to
            the largest resized image of the batch, like the processor without ``pad_size``.

    Returns:
        ``pixel_values`` [B,3,H,W] float32 (0 in the padding), ``pixel_mask`` [B,H,W] int64
        (1 inside the resized image), and the original sizes [(H_i, W_i)] (the
        ``target_sizes`` of :func:`post_process_grounded_object_detection`).

    Raises:
        InvalidImageError: not uint8 ``H x W x 3``. InvalidInputError: a resized image larger
            than ``pad_hw``, or no image.
    """
    if not images:
        raise InvalidInputError("preprocess_images needs at least one image")
    resized = []
    for i, image in enumerate(images):
        image = _check_image(image, i)
        size = resized_size(image.shape[:2], shortest_edge, longest_edge)
        resized.append(normalize(resize_uint8(image, size)))
    if pad_hw is None:
        pad_hw = (max(r.shape[1] for r in resized), max(r.shape[2] for r in resized))
    h, w = pad_hw
    pixel_values = np.zeros((len(resized), 3, h, w), _F32)
    pixel_mask = np.zeros((len(resized), h, w), np.int64)
    for i, r in enumerate(resized):
        rh, rw = r.shape[1:]
        if rh > h or rw > w:
            raise InvalidInputError(f"image {i} resized to {(rh, rw)} does not fit {pad_hw}")
        pixel_values[i, :, :rh, :rw] = r
        pixel_mask[i, :rh, :rw] = 1
    return pixel_values, pixel_mask, [(int(x.shape[0]), int(x.shape[1])) for x in images]


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------
def lang_sam_prompt(text: str) -> str:
    """Lang-SAM's rule (``GDINO.predict``): append "." unless the prompt ends with one.
    Lower-casing is the tokenizer's (BertNormalizer ``lowercase``), not a string step."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidPromptError(f"text prompt must be a non-empty string, got {text!r}")
    return text if text[-1] == "." else text + "."


def merge_candidate_labels(labels: list[str]) -> str:
    """``["A cat", "a dog"] -> "a cat. a dog."``: ``processing_grounding_dino.
    _merge_candidate_labels_text`` (strip, lower, ". "-join, trailing ".")."""
    if not labels or not all(isinstance(t, str) for t in labels):
        raise InvalidPromptError("candidate labels must be a non-empty list of strings")
    return ". ".join(t.strip().lower() for t in labels) + "."


class GroundingTokenizer:
    """The BERT tokenizer of a Grounding DINO model dir, without transformers.

    ``tokenizers.Tokenizer.from_file(tokenizer.json)`` (normalizer: lower-case, clean text;
    post-processor: ``[CLS] ... [SEP]``; decoder: WordPiece ``##``) plus what transformers adds:
    padding to the longest prompt (``padding=True``, pad id 0) and, when
    ``tokenizer_config.json`` sets ``clean_up_tokenization_spaces``, its ``clean_up_tokenization``.
    """

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        self.clean_up_tokenization_spaces = bool(cfg.get("clean_up_tokenization_spaces", False))
        wrong = {t: i for t, i in text_spec.SPECIAL_TOKENS.items() if self._tok.token_to_id(t) != i}
        if wrong:
            raise InvalidInputError(
                f"tokenizer ids {wrong} differ from the ids Grounding DINO hard-codes "
                f"{text_spec.SPECIAL_TOKENS}: the phrase masks would be wrong"
            )

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Tokenise B prompts as ``GroundingDinoProcessor(text=texts, padding=True)``.

        Returns ``input_ids``, ``attention_mask``, ``token_type_ids``: [B,T] int64, T = the
        longest prompt, cut to ``MAX_TEXT_LEN`` the way ``GroundingDinoModel.forward`` cuts
        longer inputs (``[:, :256]``, so a cut prompt has no trailing [SEP]).
        """
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidPromptError("texts must be a non-empty list of strings")
        enc = self._tok.encode_batch(list(texts))
        t = min(max(len(e.ids) for e in enc), text_spec.MAX_TEXT_LEN)
        out = {k: np.zeros((len(enc), t), np.int64) for k in text_spec.TEXT_INPUT_NAMES}
        for i, e in enumerate(enc):
            n = min(len(e.ids), t)
            out[text_spec.INPUT_IDS][i, :n] = e.ids[:n]
            out[text_spec.ATTENTION_MASK][i, :n] = 1
            out[text_spec.TOKEN_TYPE_IDS][i, :n] = e.type_ids[:n]
        return out

    def decode(self, ids: list[int]) -> str:
        """``tokenizer.decode(ids)`` (``skip_special_tokens=False``: [SEP] and "." stay)."""
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
        if self.clean_up_tokenization_spaces:  # PreTrainedTokenizerBase.clean_up_tokenization
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'")):
                text = text.replace(a, b)
            for a in ("n't", "'m", "'s", "'ve", "'re"):
                text = text.replace(" " + a, a)
        return text

    def batch_decode(self, seqs: list[list[int]]) -> list[str]:
        return [self.decode(s) for s in seqs]


# --------------------------------------------------------------------------------------------
# detections
# --------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (_F32(1.0) / (_F32(1.0) + np.exp(-x))).astype(_F32)


def post_process_grounded_object_detection(
    logits: np.ndarray,
    pred_boxes: np.ndarray,
    input_ids: np.ndarray,
    tokenizer: GroundingTokenizer,
    threshold: float = text_spec.BOX_THRESHOLD,
    text_threshold: float = text_spec.TEXT_THRESHOLD,
    target_sizes: list[tuple[int, int]] | None = None,
) -> list[dict]:
    """``GroundingDinoProcessor.post_process_grounded_object_detection`` (transformers 5.24).

    Args:
        logits: [B,Q,L] float32; pred_boxes: [B,Q,4] float32 (cx, cy, w, h in [0, 1]);
        input_ids: [B,T] int64 (the ones the graph got); tokenizer: decodes the labels;
        threshold / text_threshold: strict ``>`` on the max token prob / on each token prob;
        target_sizes: B original (h, w); None leaves boxes normalised.

    Returns:
        Per image ``{"scores": [N] float32, "boxes": [N,4] float32 xyxy, "labels": list[str]}``
        in query order (no sorting, no NMS). Boxes are bit-identical to transformers'; scores
        within 1 float32 ulp (numpy's and torch's float32 ``exp`` differ by <= 1 ulp).
        Labels: token positions 0 and L-1 never count (``get_phrases_from_posmap``); [SEP] and
        "." above ``text_threshold`` stay in the label, as in transformers.
    """
    logits = np.asarray(logits, _F32)
    pred_boxes = np.asarray(pred_boxes, _F32)
    if logits.ndim != 3 or pred_boxes.shape != (*logits.shape[:2], text_spec.BOX_DIM):
        raise InvalidInputError(f"logits {logits.shape} / pred_boxes {pred_boxes.shape}")
    if target_sizes is not None and len(target_sizes) != len(logits):
        raise InvalidInputError("target_sizes must have one (h, w) per image of the batch")
    probs = _sigmoid(logits)
    scores = probs.max(-1)
    cx, cy, w, h = np.moveaxis(pred_boxes, -1, 0)
    half = _F32(0.5)
    boxes = np.stack([cx - half * w, cy - half * h, cx + half * w, cy + half * h], -1)
    if target_sizes is not None:
        ts = np.asarray(target_sizes, _F32)
        boxes = boxes * np.stack([ts[:, 1], ts[:, 0], ts[:, 1], ts[:, 0]], 1)[:, None, :]
    results = []
    for b in range(len(logits)):
        keep = scores[b] > threshold
        posmap = probs[b][keep] > text_threshold
        posmap[:, 0] = False
        posmap[:, -1] = False
        ids = np.asarray(input_ids[b])
        label_ids = [[int(ids[i]) for i in np.nonzero(row)[0]] for row in posmap]
        results.append(
            {
                "scores": scores[b][keep],
                "boxes": boxes[b][keep],
                "labels": tokenizer.batch_decode(label_ids),
            }
        )
    return results
