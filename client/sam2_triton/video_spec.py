"""The wire contract of video tracking: the exported per-frame graphs and ``sam2_video``.

Shapes use -1 for dynamic dimensions; every graph takes full shapes (``max_batch_size: 0``),
B = objects in one call. See docs/video.md for the data flow.
"""

from __future__ import annotations

from .spec import IMAGE_SIZE, LOW_RES_SIZE, TensorSpec

# --- the exported graphs (export/sam2_triton_export/video_modules.py) ------------------------
VIDEO_IMAGE_ENCODER_MODEL = "sam2_video_image_encoder"
MEMORY_ATTENTION_MODEL = "sam2_memory_attention"
VIDEO_MASK_DECODER_MODEL = "sam2_video_mask_decoder"
MEMORY_ENCODER_MODEL = "sam2_memory_encoder"
MASK_PROMPT_MODEL = "sam2_video_mask_prompt"  # add_new_mask: SAM 2's mask_downsample + no_obj_ptr
VIDEO_GRAPHS = (
    VIDEO_IMAGE_ENCODER_MODEL,
    MEMORY_ATTENTION_MODEL,
    VIDEO_MASK_DECODER_MODEL,
    MEMORY_ENCODER_MODEL,
    MASK_PROMPT_MODEL,
)

HIDDEN_DIM = 256  # SAM 2's hidden_dim: image_embed / vision_feat channels, pointer size
MEM_DIM = 64  # memory channels (maskmem_features)
FEAT_SIZE = IMAGE_SIZE // 16  # 64: the top-level feature map side
NO_OBJ_SCORE = -1024.0  # sam2.modeling.sam2_base.NO_OBJ_SCORE: logits of an absent object

# Limits that the server enforces and the TensorRT profiles cover (serve/repository.py):
NUM_MASKMEM = 7  # SAM 2.1 num_maskmem: 1 conditioning + 6 recent frames when tracking
MAX_COND_FRAMES = 16  # conditioning frames (frames with prompts) per object attended to
MAX_MEMORIES = MAX_COND_FRAMES + NUM_MASKMEM - 1  # memory attention's M
MAX_OBJ_PTRS = MAX_COND_FRAMES + 15  # P: every conditioning pointer + 15 recent ones
MAX_OBJECTS_PER_CALL = 8  # B of one graph call
MAX_VIDEO_FRAMES = 100_000
# A windowed video (open with "window" W) keeps the outputs and frames of its last W tracked
# frames only; forward tracking reads the last 15 frames' pointers, so W >= 16.
MIN_VIDEO_WINDOW = 16

# graph tensors (names as exported)
IMAGE = "image"  # [B, 3, 1024, 1024] uint8 RGB, resized as SAM 2's video loader does
IMAGE_EMBED = "image_embed"  # [B, 256, 64, 64] with no_mem_embed (initial conditioning frame)
HIGH_RES_FEATS_0 = "high_res_feats_0"  # [B, 32, 256, 256]
HIGH_RES_FEATS_1 = "high_res_feats_1"  # [B, 64, 128, 128]
VISION_FEAT = "vision_feat"  # [B, 256, 64, 64] without no_mem_embed
MASKMEM_FEATURES = "maskmem_features"  # [B, M, 64, 64, 64]
MASKMEM_TPOS = "maskmem_tpos"  # [M] int64
OBJ_PTRS = "obj_ptrs"  # [B, P, 256]
OBJ_PTR_TPOS = "obj_ptr_tpos"  # [P] float32
PIX_FEAT_WITH_MEM = "pix_feat_with_mem"  # [B, 256, 64, 64]
PIX_FEAT = "pix_feat"
POINT_COORDS = "point_coords"  # [B, N, 2] in the 1024 model frame
POINT_LABELS = "point_labels"  # [B, N] int32
MASK_INPUT = "mask_input"  # [B, 1, 256, 256]
HAS_MASK_INPUT = "has_mask_input"  # [B] float32
MULTIMASK_OUTPUT = "multimask_output"  # [B] float32 (1 = multimask)
LOW_RES_MASKS = "low_res_masks"  # [B, 1, 256, 256]
OBJ_PTR = "obj_ptr"  # [B, 256]
OBJECT_SCORE_LOGITS = "object_score_logits"  # [B, 1]
PRED_MASKS = "pred_masks"  # [B, 1, 256, 256] (memory encoder input)
BINARIZE_MASK = "binarize_mask"  # [B] float32
MASK_1024 = "mask"  # [B, 1, 1024, 1024] float32 0/1 (mask prompt graph input)
MASK_DOWNSAMPLED = "mask_downsampled"  # [B, 1, 256, 256]: mask_downsample(mask)
NO_OBJ_PTR = "no_obj_ptr"  # [256]: SAM 2's no_obj_ptr (a constant of the weights)

# --- sam2_video: the video session model (python backend, BLS) --------------------------------
# One request = one operation on one video; every input but "op" is optional and "op" says which
# are used. Frame indices, object ids and counts are int32 [1]; flags are bool [1].
#
#   "open"        num_frames (0: open-ended, a live stream: frames are appended), video_hw [2]
#                 (H, W of the original video), video_id (optional: the client's random id,
#                 VIDEO_ID_PATTERN; absent: the server picks one), window (optional: 0 keeps
#                 every frame; W >= MIN_VIDEO_WINDOW keeps only the last W tracked frames and
#                 the conditioning outputs, so that memory does not grow with the length)
#                 -> video_id; frames are then uploaded with "add_frames" (or "track")
#   "add_frames"  video_id, frame_idx (index of frames[0]), frames uint8 [F, 3, 1024, 1024]
#   "add_points"  video_id, frame_idx, obj_id, point_coords [P, 2] (model frame: SAM 2's
#                 normalize-and-scale already applied), point_labels [P] int32 (a box is its two
#                 corners labelled 2, 3 first), clear_old_points -> frame_idx, obj_ids, masks
#   "add_mask"    video_id, frame_idx, obj_id, mask bool [1024, 1024] -> frame_idx, obj_ids, masks
#   "clear_frame" video_id, frame_idx, obj_id -> frame_idx, obj_ids, masks
#   "remove_object" video_id, obj_id, strict -> obj_ids, frame_idxs [K], masks [K, O, 1, 256, 256]
#                 (the frames SAM 2 returns as updated)
#   "reset"       video_id -> obj_ids (empty)
#   "propagate"   video_id, start_frame_idx (-1: SAM 2's default), max_frames (-1: all), reverse,
#                 steps (frames to compute in this call) -> frame_idxs [K], obj_ids, masks
#                 [K, O, 1, 256, 256], done; then "propagate_next" video_id, steps continues the
#                 same propagation (any other operation on the video ends it).
#   "track"       video_id, frames [F, 3, 1024, 1024] (optional), frame_idx (where frames[0]
#                 goes; an open-ended video appends by default) -> frame_idxs [F], obj_ids, masks
#                 [F, O, 1, 256, 256]: uploads the frames and tracks them forward (after the
#                 preflight of new prompts); without frames, tracks the held frame frame_idx.
#                 With no object yet, frames are kept and O = 0.
#   "close"       video_id
#   "info"        video_id -> num_frames, video_hw, frames_held, obj_ids, held_bytes (frames,
#                 features, outputs of this video), first_held_frame (window: the earlier
#                 frames were released)
#
# sam2_video has Triton's batch dimension (max_batch_size > 0, every input ragged): each
# tensor above travels as [1, ...], so that Triton's dynamic batcher can hand several videos'
# requests to one execute, which tracks them together.
#
# masks are SAM 2's low-resolution logits (256 x 256, NO_OBJ_SCORE for an object without output on
# a frame); the client resizes them to the video's size exactly as _get_orig_video_res_output does.
VIDEO_MODEL = "sam2_video"
VIDEO_OP = "op"
VIDEO_OPS = (
    "open",
    "add_frames",
    "add_points",
    "add_mask",
    "clear_frame",
    "remove_object",
    "reset",
    "propagate",
    "propagate_next",
    "track",
    "close",
    "info",
)
VIDEO_ID = "video_id"
VIDEO_ID_LEN = 32
VIDEO_ID_PATTERN = r"[0-9a-f]{32}"
# The SDK sends the video id with every request of a video, "open" included, in the session
# routing header (spec.SESSION_ROUTING_HEADER), so that a gateway hashing on it sends all of a
# video's requests to the replica that holds it.
NUM_FRAMES = "num_frames"
VIDEO_HW = "video_hw"
FRAMES = "frames"
FRAME_IDX = "frame_idx"
OBJ_ID = "obj_id"
PROMPT_COORDS = "point_coords"
PROMPT_LABELS = "point_labels"
CLEAR_OLD_POINTS = "clear_old_points"
PROMPT_MASK = "mask"
STRICT = "strict"
START_FRAME_IDX = "start_frame_idx"
MAX_FRAMES = "max_frames"
REVERSE = "reverse"
STEPS = "steps"
WINDOW = "window"
# outputs
OBJ_IDS = "obj_ids"
FRAME_IDXS = "frame_idxs"
MASKS = "masks"
DONE = "done"
FRAMES_HELD = "frames_held"
HELD_BYTES = "held_bytes"
FIRST_HELD_FRAME = "first_held_frame"

# ``sam2_video_stream`` (decoupled, gRPC streaming): one "propagate" request (the inputs of
# "propagate" above, without steps) -> one response per frame as it is computed (frame_idxs [1],
# obj_ids, masks [1, O, 1, 256, 256], done), then Triton's final flag. It drives sam2_video's
# propagate / propagate_next through BLS, so both see one state. Triton's HTTP endpoint cannot
# stream a decoupled model: over HTTP the client steps with sam2_video itself.
VIDEO_STREAM_MODEL = "sam2_video_stream"
STREAM_INPUTS = (VIDEO_OP, VIDEO_ID, START_FRAME_IDX, MAX_FRAMES, REVERSE)

# Errors: the message starts with one of these, and Triton's status says the kind.
VIDEO_UNKNOWN = "unknown video id"  # NOT_FOUND: never opened here, closed, expired, restarted
VIDEO_BAD_FRAME = "frame index out of range"  # INVALID_ARG
VIDEO_FRAME_MISSING = "frame not uploaded"  # INVALID_ARG
VIDEO_UNKNOWN_OBJECT = "unknown object id"  # INVALID_ARG
VIDEO_NO_PROMPTS = "no prompts"  # INVALID_ARG: propagate before any click, box or mask
VIDEO_OVER_BUDGET = "video budget exceeded"  # UNAVAILABLE: frames or videos over the budget
VIDEO_FRAME_RELEASED = "frame released"  # INVALID_ARG: before a windowed video's window


def video_inputs() -> tuple[TensorSpec, ...]:
    """Inputs of ``sam2_video`` (all optional in its config; ``op`` selects which are used)."""
    return (
        TensorSpec(VIDEO_OP, "object", (1,)),
        TensorSpec(VIDEO_ID, "object", (1,)),
        TensorSpec(NUM_FRAMES, "int32", (1,)),
        TensorSpec(VIDEO_HW, "int32", (2,)),
        TensorSpec(FRAMES, "uint8", (-1, 3, IMAGE_SIZE, IMAGE_SIZE)),
        TensorSpec(FRAME_IDX, "int32", (1,)),
        TensorSpec(OBJ_ID, "int32", (1,)),
        TensorSpec(PROMPT_COORDS, "float32", (-1, 2)),
        TensorSpec(PROMPT_LABELS, "int32", (-1,)),
        TensorSpec(CLEAR_OLD_POINTS, "bool", (1,)),
        TensorSpec(PROMPT_MASK, "bool", (IMAGE_SIZE, IMAGE_SIZE)),
        TensorSpec(STRICT, "bool", (1,)),
        TensorSpec(START_FRAME_IDX, "int32", (1,)),
        TensorSpec(MAX_FRAMES, "int32", (1,)),
        TensorSpec(REVERSE, "bool", (1,)),
        TensorSpec(STEPS, "int32", (1,)),
        TensorSpec(WINDOW, "int32", (1,)),
    )


def video_stream_inputs() -> tuple[TensorSpec, ...]:
    """Inputs of ``sam2_video_stream`` (``op`` and ``video_id`` required)."""
    return tuple(t for t in video_inputs() if t.name in STREAM_INPUTS)


def video_stream_outputs() -> tuple[TensorSpec, ...]:
    """Outputs of ``sam2_video_stream``: one frame per response."""
    return tuple(t for t in video_outputs() if t.name in (FRAME_IDXS, OBJ_IDS, MASKS, DONE))


def video_outputs() -> tuple[TensorSpec, ...]:
    """Outputs of ``sam2_video`` (each operation fills the ones it documents)."""
    return (
        TensorSpec(VIDEO_ID, "object", (1,)),
        TensorSpec(FRAME_IDX, "int32", (1,)),
        TensorSpec(FRAME_IDXS, "int32", (-1,)),
        TensorSpec(OBJ_IDS, "int32", (-1,)),
        TensorSpec(MASKS, "float32", (-1, -1, 1, LOW_RES_SIZE, LOW_RES_SIZE)),
        TensorSpec(DONE, "bool", (1,)),
        TensorSpec(NUM_FRAMES, "int32", (1,)),
        TensorSpec(VIDEO_HW, "int32", (2,)),
        TensorSpec(FRAMES_HELD, "int32", (1,)),
        TensorSpec(HELD_BYTES, "int64", (1,)),
        TensorSpec(FIRST_HELD_FRAME, "int32", (1,)),
    )
