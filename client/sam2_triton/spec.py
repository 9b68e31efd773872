"""The wire contract between the exported ONNX models, the Triton repository and the client.

One place for model names, tensor names, shapes and dtypes, so that export, repository configs
and client cannot disagree. Shapes use -1 for dynamic dimensions; encoder shapes include the
batch dimension ``B`` (Triton's ``max_batch_size`` > 0), decoder shapes are full shapes
(``max_batch_size: 0``; one image, N prompts of P points per request).
"""

from __future__ import annotations

from dataclasses import dataclass

ENCODER_MODEL = "sam2_encoder"
DECODER_MODEL = "sam2_decoder"

IMAGE_SIZE = 1024  # SAM 2.1 input resolution (square, aspect ratio not kept)
LOW_RES_SIZE = 256  # low-resolution mask logits, IMAGE_SIZE / 4
MASK_THRESHOLD = 0.0
LOW_RES_CLAMP = 32.0  # SAM2ImagePredictor clamps returned low-res logits to +-32
NUM_MASK_TOKENS = 4  # token 0: single-mask output, tokens 1..3: multimask output
STABILITY_DELTA = 0.05  # mask_decoder.dynamic_multimask_stability_delta (SAM 2.1 configs)
STABILITY_THRESH = 0.98  # mask_decoder.dynamic_multimask_stability_thresh
PIXEL_MEAN = (0.485, 0.456, 0.406)  # applied inside the encoder graph, on [0, 1] RGB
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: Triton/ONNX name, numpy dtype name, full shape (-1 = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


# --- encoder: run once per image -------------------------------------------------------------
# input "image": RGB, resized to 1024x1024 by the client (SAM2Transforms semantics), values in
# [0, 1] for float32/float16, [0, 255] for uint8 (export option --image-dtype).
ENCODER_IMAGE = "image"
# outputs: exactly what SAM2ImagePredictor.set_image stores (float32, or float16 with
# --embedding-dtype fp16), plus the weights fingerprint (see below).
IMAGE_EMBED = "image_embed"
HIGH_RES_FEATS_0 = "high_res_feats_0"
HIGH_RES_FEATS_1 = "high_res_feats_1"
FINGERPRINT = "model_fingerprint"
FEATURE_SHAPES = {
    IMAGE_EMBED: (256, 64, 64),
    HIGH_RES_FEATS_0: (32, 256, 256),
    HIGH_RES_FEATS_1: (64, 128, 128),
}
FEATURE_NAMES = (IMAGE_EMBED, HIGH_RES_FEATS_0, HIGH_RES_FEATS_1)
FINGERPRINT_LEN = 2  # int32 x 2: first 8 bytes of sha256 over the model's weights

# --- decoder: run many times per image -------------------------------------------------------
# inputs: one image's features [1, ...] (same dtype as the encoder's outputs), N prompts of P
# points in the 1024x1024 input frame (x * 1024 / W, y * 1024 / H; boxes are two points with
# labels 2, 3 placed before the clicks), labels int32 in {-1, 0, 1, 2, 3}; mask_input holds M
# previous low-res logit maps where M is 1 (shared by all prompts) or N, has_mask_input [M] is 1.0
# where that mask is used and 0.0 where the model's "no mask" embedding is used instead.
POINT_COORDS = "point_coords"
POINT_LABELS = "point_labels"
MASK_INPUT = "mask_input"
HAS_MASK_INPUT = "has_mask_input"
# outputs: logits of all four mask tokens, their IoU predictions, object-score logits, and the
# weights fingerprint (equal to the encoder's when both come from the same export).
LOW_RES_MASKS = "low_res_masks"
IOU_PREDICTIONS = "iou_predictions"
OBJECT_SCORE_LOGITS = "object_score_logits"


def encoder_inputs(image_dtype: str = "float32") -> tuple[TensorSpec, ...]:
    """Encoder inputs; ``image_dtype`` is one of float32, float16, uint8."""
    return (TensorSpec(ENCODER_IMAGE, image_dtype, (-1, 3, IMAGE_SIZE, IMAGE_SIZE)),)


def encoder_outputs(feature_dtype: str = "float32") -> tuple[TensorSpec, ...]:
    """Encoder outputs; ``feature_dtype`` is float32 or float16."""
    feats = tuple(TensorSpec(n, feature_dtype, (-1, *FEATURE_SHAPES[n])) for n in FEATURE_NAMES)
    return (*feats, TensorSpec(FINGERPRINT, "int32", (-1, FINGERPRINT_LEN)))


def decoder_inputs(feature_dtype: str = "float32") -> tuple[TensorSpec, ...]:
    """Decoder inputs; features are one image's ([1, ...])."""
    feats = tuple(TensorSpec(n, feature_dtype, (1, *FEATURE_SHAPES[n])) for n in FEATURE_NAMES)
    return (
        *feats,
        TensorSpec(POINT_COORDS, "float32", (-1, -1, 2)),
        TensorSpec(POINT_LABELS, "int32", (-1, -1)),
        TensorSpec(MASK_INPUT, "float32", (-1, 1, LOW_RES_SIZE, LOW_RES_SIZE)),
        TensorSpec(HAS_MASK_INPUT, "float32", (-1,)),
    )


def decoder_outputs() -> tuple[TensorSpec, ...]:
    """Decoder outputs for N prompts."""
    return (
        TensorSpec(LOW_RES_MASKS, "float32", (-1, NUM_MASK_TOKENS, LOW_RES_SIZE, LOW_RES_SIZE)),
        TensorSpec(IOU_PREDICTIONS, "float32", (-1, NUM_MASK_TOKENS)),
        TensorSpec(OBJECT_SCORE_LOGITS, "float32", (-1, 1)),
        TensorSpec(FINGERPRINT, "int32", (FINGERPRINT_LEN,)),
    )
