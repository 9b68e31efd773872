"""The wire contract between the exported ONNX models, the Triton repository and the client.

One place for model names, tensor names, shapes and dtypes, so that export, repository configs
and client cannot disagree. Shapes use -1 for dynamic dimensions; encoder shapes include the
batch dimension ``B`` (Triton's ``max_batch_size`` > 0), decoder shapes are full shapes
(``max_batch_size: 0``; one image, N prompts of P points per request).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

ENCODER_MODEL = "sam2_encoder"
DECODER_MODEL = "sam2_decoder"

IMAGE_SIZE = 1024  # SAM 2.1 input resolution (square, aspect ratio not kept)
LOW_RES_SIZE = 256  # low-resolution mask logits, IMAGE_SIZE / 4
MASK_THRESHOLD = 0.0
LOW_RES_CLAMP = 32.0  # SAM2ImagePredictor clamps returned low-res logits to +-32
NUM_MASK_TOKENS = 4  # token 0: single-mask output, tokens 1..3: multimask output
# The largest prompt and decoder call, in ONE place: the SDK's validation, every server-side
# model and the decoder's TensorRT profile (serve/repository.py) all read these, so a prompt
# that a GPU deployment could not run is refused with a clear error before it is sent.
MAX_CLICKS_PER_PROMPT = 64  # point_coords of one prompt
MAX_PROMPT_POINTS = MAX_CLICKS_PER_PROMPT + 2  # the decoder's P: box corners + clicks
MAX_PROMPTS_PER_REQUEST = 64  # the decoder's N: prompts of one image per call
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


# --- session model: features stay on the server ----------------------------------------------
# ``sam2_session`` (python backend, one instance) runs the encoder and the decoder through BLS
# and keeps every image's features in a bounded LRU store on the server, so a click carries
# only an image id and the prompt. Every input is optional; ``op`` says which ones are used:
#
#   op "encode":   image [B, 3, 1024, 1024] (the encoder's input dtype) + orig_hw int32 [B, 2]
#                  -> image_id [B], orig_hw [B, 2], model_fingerprint [B, 2]. Idempotent: the id
#                  is SESSION_ID_HASH of the image bytes and orig_hw, so re-sending an image that
#                  is held costs no encoder run, and concurrent first requests for one image
#                  share one encoder run.
#   op "decode":   image_id [1] + point_coords [N, P, 2] + point_labels [N, P]
#                  (+ mask_input [M, 1, 256, 256] + has_mask_input [M], both optional: absent
#                  means no mask) -> the decoder's outputs (low_res_masks, iou_predictions,
#                  object_score_logits, model_fingerprint [1, 2]); image_id and orig_hw on request.
#   op "features": image_id [1] -> image_embed, high_res_feats_0, high_res_feats_1 ([1, ...]),
#                  model_fingerprint [1, 2], orig_hw [1, 2]: the features of a held image.
#
# An id the store does not hold (never encoded here, evicted, or the server restarted) gets an
# error whose message contains SESSION_UNKNOWN_IMAGE (Triton status NOT_FOUND: HTTP 404, gRPC
# NOT_FOUND). Never a wrong mask. The client then re-sends the request with the image attached:
# "decode" and "features" also take image [1, 3, 1024, 1024] + orig_hw [1, 2] (optional, used
# only when the id is not held; the id must be the attached image's), encode it and answer from
# it even if the store evicts it at once.
SESSION_MODEL = "sam2_session"
SESSION_OP = "op"
SESSION_OP_ENCODE = "encode"
SESSION_OP_DECODE = "decode"
SESSION_OP_FEATURES = "features"
SESSION_OPS = (SESSION_OP_ENCODE, SESSION_OP_DECODE, SESSION_OP_FEATURES)
SESSION_IMAGE_ID = "image_id"
SESSION_ORIG_HW = "orig_hw"
SESSION_ID_LEN = 64  # lowercase hex characters
# sha256 over b"sam2-session-v1\0", the image tensor's raw bytes (C order, [3, 1024, 1024] in the
# encoder's input dtype) and orig_hw as two little-endian int32.
SESSION_ID_HASH = "sha256"
SESSION_ID_SALT = b"sam2-session-v1\x00"
SESSION_UNKNOWN_IMAGE = "unknown image id"
# The client sends the image id (computed locally, before the upload) in this HTTP header / gRPC
# metadata key with every session request, so that a gateway can route one image's requests to
# one replica (consistent hashing on the header; see SETUP.md).
SESSION_ROUTING_HEADER = "x-sam2-image-id"
SESSION_MAX_PIXELS = 64_000_000  # largest orig_hw H * W accepted (the client's MAX_IMAGE_PIXELS)

# "decode" may also carry multimask_output BOOL [1]: the session model then selects the mask
# tokens the call returns with ``transforms.select_masks`` (tokens 1..3, or one token by SAM 2's
# stability rule) and answers only those: low_res_masks [N, C, 256, 256] and iou_predictions
# [N, C] with C = 3 or 1 (absent: all four tokens, as the decoder gives them).
SESSION_MULTIMASK = "multimask_output"
# With multimask_output, "decode" may also carry mask_threshold FP32 [1]: the session model then
# also computes the masks at the image's own size (``transforms.upsample_masks`` of the selected
# tokens, ``logits > mask_threshold``) and can answer them as output "masks" BYTES [N, C]
# (``transforms.encode_mask_bits``: packed bits, zlib) instead of the low-res logits: a click
# that needs only masks moves a few kB.
SESSION_MASK_THRESHOLD = "mask_threshold"
SESSION_MASKS = "masks"


def session_image_id(image: np.ndarray, orig_hw: tuple[int, int]) -> str:
    """The session id of one encoder input ``image`` ``[3, 1024, 1024]`` (any wire dtype).

    ``SESSION_ID_HASH`` over ``SESSION_ID_SALT``, the tensor's C-order bytes and ``orig_hw`` as
    two little-endian int32: 64 lowercase hex characters. Client and server compute it alike.
    """
    digest = hashlib.new(SESSION_ID_HASH, SESSION_ID_SALT)
    digest.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    digest.update(np.asarray(orig_hw, dtype="<i4").tobytes())
    return digest.hexdigest()


# --- one-shot segmentation over plain REST ---------------------------------------------------
# ``sam2_segment`` (python backend): one request, one image, masks at the image's own size.
#   input  "image"   BYTES [1]: an encoded PNG/JPEG (any format Pillow reads), raw bytes or its
#                    base64 text (plain v2 JSON cannot carry raw bytes).
#   input  "prompts" BYTES [1]: a JSON object, see SEGMENT_PROMPT_KEYS.
#   output "result"  BYTES [1]: a JSON object {"width", "height", "format", "multimask",
#                    "objects": [{"masks": [...], "scores": [...], "object_score_logit"}]};
#                    masks are COCO compressed RLE ({"size": [H, W], "counts": str}) or base64 PNG.
SEGMENT_MODEL = "sam2_segment"
SEGMENT_IMAGE = "image"
SEGMENT_PROMPTS = "prompts"
SEGMENT_RESULT = "result"
# prompts JSON: one object ({"points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1,
# y1]}, in pixels of the image as a viewer shows it) or several ({"objects": [{...}, ...]}),
# plus "multimask" (bool, default false: one mask per object, SAM 2's multimask_output) and
# "format" ("rle", default, or "png").
SEGMENT_PROMPT_KEYS = ("points", "labels", "box", "objects", "multimask", "format")
SEGMENT_FORMATS = ("rle", "png")


def session_inputs(
    image_dtype: str = "float32",
) -> tuple[TensorSpec, ...]:
    """Inputs of ``sam2_session`` (all optional in its config; ``op`` selects which are used)."""
    return (
        TensorSpec(SESSION_OP, "object", (1,)),
        TensorSpec(SESSION_IMAGE_ID, "object", (-1,)),
        TensorSpec(ENCODER_IMAGE, image_dtype, (-1, 3, IMAGE_SIZE, IMAGE_SIZE)),
        TensorSpec(SESSION_ORIG_HW, "int32", (-1, 2)),
        TensorSpec(POINT_COORDS, "float32", (-1, -1, 2)),
        TensorSpec(POINT_LABELS, "int32", (-1, -1)),
        TensorSpec(MASK_INPUT, "float32", (-1, 1, LOW_RES_SIZE, LOW_RES_SIZE)),
        TensorSpec(HAS_MASK_INPUT, "float32", (-1,)),
        TensorSpec(SESSION_MULTIMASK, "bool", (1,)),
        TensorSpec(SESSION_MASK_THRESHOLD, "float32", (1,)),
    )


def session_outputs(feature_dtype: str = "float32") -> tuple[TensorSpec, ...]:
    """Outputs of ``sam2_session``; each op returns a subset (see above)."""
    feats = tuple(TensorSpec(n, feature_dtype, (-1, *FEATURE_SHAPES[n])) for n in FEATURE_NAMES)
    return (
        TensorSpec(SESSION_IMAGE_ID, "object", (-1,)),
        TensorSpec(SESSION_ORIG_HW, "int32", (-1, 2)),
        TensorSpec(FINGERPRINT, "int32", (-1, FINGERPRINT_LEN)),
        # C = 4 (all tokens), 3 or 1 (tokens selected by multimask_output)
        TensorSpec(LOW_RES_MASKS, "float32", (-1, -1, LOW_RES_SIZE, LOW_RES_SIZE)),
        TensorSpec(IOU_PREDICTIONS, "float32", (-1, -1)),
        TensorSpec(OBJECT_SCORE_LOGITS, "float32", (-1, 1)),
        TensorSpec(SESSION_MASKS, "object", (-1, -1)),
        *feats,
    )


def segment_inputs() -> tuple[TensorSpec, ...]:
    """Inputs of ``sam2_segment``."""
    return (TensorSpec(SEGMENT_IMAGE, "object", (1,)), TensorSpec(SEGMENT_PROMPTS, "object", (1,)))


def segment_outputs() -> tuple[TensorSpec, ...]:
    """Outputs of ``sam2_segment``."""
    return (TensorSpec(SEGMENT_RESULT, "object", (1,)),)


# --- segment everything ------------------------------------------------------------------------
# ``sam2_amg_masks`` (ONNX, built by ``sam2-triton export``; FP32 on every flavour: its thresholds
# must see SAM 2's exact logits) does the per-mask work of SAM2AutomaticMaskGenerator._process_batch
# for one batch of one crop: upsample the selected low-res logits to the crop's size, filter by
# predicted IoU, stability score and crop edge, threshold, box, uncrop.
#   inputs:  low_res_masks [N, 256, 256] FP32, iou_predictions [N] FP32,
#            crop_box [4] INT64 (x0, y0, x1, y1 in the image), orig_hw [2] INT64 (H, W),
#            amg_thresholds [5] FP32 (pred_iou_thresh, stability_score_thresh, mask_threshold,
#            mask_threshold + stability_score_offset, mask_threshold - stability_score_offset:
#            each the float32 of SAM 2's float64 value; NaN turns a filter off)
#   outputs: keep [K] INT64 (indices into N, ascending), stability_score [K] FP32,
#            boxes [K, 4] INT64 (XYXY in the crop, batched_mask_to_box),
#            masks_t [K, W, H] UINT8 (uncropped masks, transposed: the C-order bytes are the
#            column-major order pycocotools encodes, so no host copy is needed)
AMG_MASKS_MODEL = "sam2_amg_masks"
AMG_CROP_BOX = "crop_box"
AMG_ORIG_HW = "orig_hw"
AMG_THRESHOLDS = "amg_thresholds"
AMG_KEEP = "keep"
AMG_STABILITY = "stability_score"
AMG_BOXES = "boxes"
AMG_MASKS_T = "masks_t"


def amg_masks_inputs() -> tuple[TensorSpec, ...]:
    """Inputs of ``sam2_amg_masks``."""
    return (
        TensorSpec(LOW_RES_MASKS, "float32", (-1, LOW_RES_SIZE, LOW_RES_SIZE)),
        TensorSpec(IOU_PREDICTIONS, "float32", (-1,)),
        TensorSpec(AMG_CROP_BOX, "int64", (4,)),
        TensorSpec(AMG_ORIG_HW, "int64", (2,)),
        TensorSpec(AMG_THRESHOLDS, "float32", (5,)),
    )


def amg_masks_outputs() -> tuple[TensorSpec, ...]:
    """Outputs of ``sam2_amg_masks``."""
    return (
        TensorSpec(AMG_KEEP, "int64", (-1,)),
        TensorSpec(AMG_STABILITY, "float32", (-1,)),
        TensorSpec(AMG_BOXES, "int64", (-1, 4)),
        TensorSpec(AMG_MASKS_T, "uint8", (-1, -1, -1)),
    )


# ``sam2_everything`` (python backend, BLS): SAM2AutomaticMaskGenerator.generate in one request.
#   inputs (both optional): image BYTES [1] (an encoded PNG/JPEG/..., raw or base64, as for
#            sam2_segment), options BYTES [1] (JSON: GeneratorOptions' fields but output_mode,
#            plus "image_id": a sam2_session id to use instead of image, and "output_mode":
#            "coco_rle" (default) or "uncompressed_rle")
#   output:  result BYTES [1] (JSON: width, height, model_fingerprint, masks: SAM 2's records)
EVERYTHING_MODEL = "sam2_everything"
EVERYTHING_IMAGE = "image"
EVERYTHING_OPTIONS = "options"
EVERYTHING_RESULT = "result"
EVERYTHING_IMAGE_ID_KEY = "image_id"  # keys of the options JSON besides GeneratorOptions' fields
EVERYTHING_OUTPUT_MODE_KEY = "output_mode"


def everything_inputs() -> tuple[TensorSpec, ...]:
    """Inputs of ``sam2_everything`` (both optional)."""
    return (
        TensorSpec(EVERYTHING_IMAGE, "object", (1,)),
        TensorSpec(EVERYTHING_OPTIONS, "object", (1,)),
    )


def everything_outputs() -> tuple[TensorSpec, ...]:
    """Outputs of ``sam2_everything``."""
    return (TensorSpec(EVERYTHING_RESULT, "object", (1,)),)
