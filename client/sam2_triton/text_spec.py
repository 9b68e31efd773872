"""The wire contract of text prompts: the Grounding DINO graphs and ``sam2_text``.

Lang-SAM's pipeline (``lang_sam.LangSAM.predict``): Grounding DINO (Hugging Face transformers)
turns a text prompt into boxes, SAM 2 turns the boxes into masks. One place for model names,
tensor names, shapes and Lang-SAM's defaults, read by the exporter, the repository configs, the
server model and the SDK.

Detector graphs (``sam2-triton export --detector DIR``): one ONNX file per static canvas (the
TorchScript exporter freezes Swin's shape branches, so H and W cannot be dynamic). Every image
resized by the processor (shortest edge S, longest L; 800/1333 for the published models) fits
one of two canvases, ``landscape`` (S x L) or ``portrait`` (L x S), padded bottom/right with
zeros and marked by ``pixel_mask`` (the processor's ``pad_size``).

* inputs: ``pixel_values`` float32 [B,3,H,W], ``pixel_mask`` int64 [B,H,W] (1 = image),
  ``input_ids`` / ``attention_mask`` / ``token_type_ids`` int64 [B,T] (T <= 256);
* outputs: ``logits`` float32 [B,Q,256] (-inf beyond T), ``pred_boxes`` float32 [B,Q,4]
  (cx, cy, w, h in [0, 1]).

``sam2_text`` (python backend, BLS): text -> masks in one request.

* inputs: ``image`` BYTES [1] (an encoded PNG/JPEG/..., raw or base64, as for sam2_segment),
  ``text`` BYTES [1] (UTF-8, e.g. "cat. remote control."), ``options`` BYTES [1] optional
  (JSON, keys :data:`TEXT_OPTION_KEYS`);
* output: ``result`` BYTES [1], JSON ``{"width", "height", "text", "box_threshold",
  "text_threshold", "format", "model_fingerprint", "detector", "objects": [{"label", "score",
  "box": [x0, y0, x1, y1], "mask_score", "mask"}]}``; objects in the detector's query order
  (as transformers returns them), ``mask`` COCO compressed RLE or base64 PNG.
"""

from __future__ import annotations

from .spec import TensorSpec

# --- the detector graphs ---------------------------------------------------------------------
DETECTOR_MODELS = {
    "landscape": "grounding_dino_landscape",
    "portrait": "grounding_dino_portrait",
}
PIXEL_VALUES = "pixel_values"
PIXEL_MASK = "pixel_mask"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
LOGITS = "logits"
PRED_BOXES = "pred_boxes"
DETECTOR_INPUT_NAMES = (PIXEL_VALUES, PIXEL_MASK, INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)
TEXT_INPUT_NAMES = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)
DETECTOR_OUTPUT_NAMES = (LOGITS, PRED_BOXES)

# Lang-SAM's defaults (LangSAM.predict(box_threshold=0.3, text_threshold=0.25)); transformers
# 5.x calls the first one ``threshold``.
BOX_THRESHOLD = 0.3
TEXT_THRESHOLD = 0.25
# GroundingDinoConfig.max_text_len: the logits' last dimension. The exported graph has no
# truncation branch, so the tokenizer cuts input_ids to this length ([:, :256], as the model).
MAX_TEXT_LEN = 256
NUM_QUERIES = 900  # GroundingDinoConfig.num_queries of the published checkpoints
BOX_DIM = 4
MAX_TEXT_BYTES = 4096  # the longest ``text`` element sam2_text accepts

# GroundingDinoImageProcessor defaults; the exporter refuses a model dir whose processor differs
SHORTEST_EDGE = 800
LONGEST_EDGE = 1333
RESCALE_FACTOR = 1 / 255
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# GroundingDinoModel hard-codes ``SPECIAL_TOKENS = [101, 102, 1012, 1029]`` (bert-base-uncased's
# [CLS], [SEP], ".", "?"): the phrase masks split the prompt at these ids, so a tokenizer that
# puts them elsewhere would give silently wrong detections. Exporter and server check them.
SPECIAL_TOKENS = {"[PAD]": 0, "[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}
CLS_ID, SEP_ID, PERIOD_ID = 101, 102, 1012

# files the exporter installs into sam2_text/1/ beside the shim: the tokenizer the server runs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def canvases(shortest_edge: int, longest_edge: int) -> dict[str, tuple[int, int]]:
    """The two canvases (H, W) by orientation: every resized image fits one of them."""
    return {
        "landscape": (shortest_edge, longest_edge),
        "portrait": (longest_edge, shortest_edge),
    }


def canvas_for(resized_hw: tuple[int, int], shortest_edge: int, longest_edge: int) -> str:
    """The orientation whose canvas holds an image resized to ``resized_hw`` (square and
    landscape: ``landscape``). Raises ValueError if none does (not a processor's resize)."""
    h, w = resized_hw
    for name, (ch, cw) in canvases(shortest_edge, longest_edge).items():
        if h <= ch and w <= cw:
            return name
    raise ValueError(
        f"a resized image of {resized_hw} fits no canvas of {shortest_edge}/{longest_edge}"
    )


def detector_inputs(canvas_hw: tuple[int, int]) -> tuple[TensorSpec, ...]:
    """Inputs of a detector graph for the canvas (H, W); B and T dynamic."""
    h, w = canvas_hw
    return (
        TensorSpec(PIXEL_VALUES, "float32", (-1, 3, h, w)),
        TensorSpec(PIXEL_MASK, "int64", (-1, h, w)),
        *(TensorSpec(n, "int64", (-1, -1)) for n in TEXT_INPUT_NAMES),
    )


def detector_outputs(num_queries: int = NUM_QUERIES) -> tuple[TensorSpec, ...]:
    """Outputs of a detector graph: ``logits`` [B,Q,256], ``pred_boxes`` [B,Q,4]."""
    return (
        TensorSpec(LOGITS, "float32", (-1, num_queries, MAX_TEXT_LEN)),
        TensorSpec(PRED_BOXES, "float32", (-1, num_queries, BOX_DIM)),
    )


# --- sam2_text --------------------------------------------------------------------------------
TEXT_MODEL = "sam2_text"
TEXT_IMAGE = "image"
TEXT_PROMPT = "text"
TEXT_OPTIONS = "options"
TEXT_RESULT = "result"
TEXT_OPTION_KEYS = ("box_threshold", "text_threshold", "format")
TEXT_FORMATS = ("rle", "png")


def text_inputs() -> tuple[TensorSpec, ...]:
    """Inputs of ``sam2_text`` (``options`` optional)."""
    return (
        TensorSpec(TEXT_IMAGE, "object", (1,)),
        TensorSpec(TEXT_PROMPT, "object", (1,)),
        TensorSpec(TEXT_OPTIONS, "object", (1,)),
    )


def text_outputs() -> tuple[TensorSpec, ...]:
    """Outputs of ``sam2_text``."""
    return (TensorSpec(TEXT_RESULT, "object", (1,)),)
