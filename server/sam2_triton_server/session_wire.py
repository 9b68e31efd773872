"""What ``sam2_session`` accepts: its ops, their tensors (names from ``sam2_triton.spec``) and
the checks of a request's inputs (pure numpy, no Triton)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sam2_triton import spec

from ._triton import RequestError

OP_ENCODE, OP_DECODE, OP_FEATURES = spec.SESSION_OPS
IMAGE, ORIG_HW, IMAGE_ID = spec.ENCODER_IMAGE, spec.SESSION_ORIG_HW, spec.SESSION_IMAGE_ID
DECODER_OUTPUTS = (spec.LOW_RES_MASKS, spec.IOU_PREDICTIONS, spec.OBJECT_SCORE_LOGITS)
PARAM_MAX_IMAGES = "SESSION_MAX_IMAGES_PER_REQUEST"  # model config parameter: images per encode

# which inputs each op uses (op itself excluded): (required, optional); decode and features take
# the image too, optionally: used only when the id is not held
OP_INPUTS = {
    OP_ENCODE: ((IMAGE, ORIG_HW), ()),
    OP_DECODE: (
        (IMAGE_ID, spec.POINT_COORDS, spec.POINT_LABELS),
        (
            spec.MASK_INPUT,
            spec.HAS_MASK_INPUT,
            spec.SESSION_MULTIMASK,
            spec.SESSION_MASK_THRESHOLD,
            IMAGE,
            ORIG_HW,
        ),
    ),
    OP_FEATURES: ((IMAGE_ID,), (IMAGE, ORIG_HW)),
}
# the outputs each op can return, and those it returns when the request names none of them
OP_OUTPUTS = {
    OP_ENCODE: (IMAGE_ID, ORIG_HW, spec.FINGERPRINT),
    OP_DECODE: (*DECODER_OUTPUTS, spec.SESSION_MASKS, spec.FINGERPRINT, IMAGE_ID, ORIG_HW),
    OP_FEATURES: (*spec.FEATURE_NAMES, spec.FINGERPRINT, IMAGE_ID, ORIG_HW),
}
OP_DEFAULT_OUTPUTS = {
    OP_ENCODE: (IMAGE_ID, ORIG_HW, spec.FINGERPRINT),
    OP_DECODE: (*DECODER_OUTPUTS, spec.FINGERPRINT),
    OP_FEATURES: (*spec.FEATURE_NAMES, spec.FINGERPRINT, ORIG_HW),
}


def check_op(ops: np.ndarray | None, present: Iterable[str]) -> str:
    """The request's op (input ``op``), checked against the inputs ``present`` (op excluded)."""
    name = spec.SESSION_OP
    if ops is None:
        raise RequestError(f"input {name!r} is missing: give one of {list(OP_INPUTS)}")
    ops = ops.reshape(-1)
    op = ops[0] if ops.size == 1 else None
    op = op.decode("utf-8", "replace") if isinstance(op, bytes) else op if op is None else str(op)
    if op not in OP_INPUTS:
        got = f"{op!r}" if ops.size == 1 else f"{ops.size} elements"
        raise RequestError(f"input {name!r} must be one of {list(OP_INPUTS)}, got {got}")
    required, optional = OP_INPUTS[op]
    present = set(present)
    missing = [n for n in required if n not in present]
    if missing:
        raise RequestError(
            f"op {op!r} needs input(s) {missing} (it uses {list(required)}"
            f"{' and optionally ' + str(list(optional)) if optional else ''})"
        )
    extra = sorted(present - set(required) - set(optional))
    if extra:
        raise RequestError(
            f"op {op!r} does not use input(s) {extra}; it uses {list(required + optional)}"
        )
    return op


def outputs_of(op: str, requested: Iterable[str], inputs: dict[str, np.ndarray]) -> list[str]:
    """The outputs to answer: those requested that ``op`` produces, else its defaults."""
    wanted = [n for n in requested if n in OP_OUTPUTS[op]]
    if spec.SESSION_MASKS in wanted and spec.SESSION_MASK_THRESHOLD not in inputs:
        # a client that names no output gets all of them requested: leave out the masks then
        wanted.remove(spec.SESSION_MASKS)
        if not wanted:  # it asked for the masks alone
            raise RequestError(
                f"output {spec.SESSION_MASKS!r} needs the input {spec.SESSION_MASK_THRESHOLD!r} "
                f"(and {spec.SESSION_MULTIMASK!r}): the threshold of the masks"
            )
    return wanted or list(OP_DEFAULT_OUTPUTS[op])


def check_image_id(raw: object) -> str:
    """Decode and validate one id element (bytes or str): 64 lowercase hex characters."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    if len(text) != spec.SESSION_ID_LEN or any(c not in "0123456789abcdef" for c in text):
        preview = text if len(text) <= 80 else text[:77] + "..."
        raise RequestError(
            f"{IMAGE_ID} must be {spec.SESSION_ID_LEN} lowercase hex characters (the id that op "
            f"'encode' returned), got {preview!r} ({len(text)} characters)"
        )
    return text


def check_inputs(op: str, inputs: dict[str, np.ndarray], max_images: int) -> None:
    """Check the inputs of ``op`` (``check_op`` passed); ids and flags become str and bool."""
    if op == OP_ENCODE:
        _check_images(inputs, max_images)
        return
    ids = inputs[IMAGE_ID]
    if ids.size != 1:
        raise RequestError(f"input {IMAGE_ID!r} must hold exactly one id, got {ids.size}")
    inputs[IMAGE_ID] = check_image_id(ids.reshape(-1)[0])
    attached = (IMAGE in inputs, ORIG_HW in inputs)  # the image itself, for an id not held
    if any(attached):
        if not all(attached):
            raise RequestError(f"give both {IMAGE!r} and {ORIG_HW!r} or neither")
        _check_images(inputs, 1)
    if op == OP_DECODE:
        _check_prompts(inputs)


def _check_images(inputs: dict[str, np.ndarray], limit: int) -> None:
    image, hw = inputs[IMAGE], inputs[ORIG_HW]
    b = image.shape[0]
    if b < 1 or b > limit:
        raise RequestError(
            f"input {IMAGE!r} holds {b} images; send 1 to {limit} "
            f"per request" + ("" if limit == 1 else f" ({PARAM_MAX_IMAGES})")
        )
    if hw.shape != (b, 2):
        raise RequestError(
            f"input {ORIG_HW!r} has shape {list(hw.shape)}, expected [{b}, 2] "
            f"(H, W of each of the {b} images)"
        )
    for i, (h, w) in enumerate(hw.tolist()):
        if h < 1 or w < 1 or h * w > spec.SESSION_MAX_PIXELS:
            raise RequestError(
                f"{ORIG_HW}[{i}] = ({h}, {w}) is not an image size: expected "
                f"H, W >= 1 and H * W <= {spec.SESSION_MAX_PIXELS}"
            )
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise RequestError(f"input {IMAGE!r} contains NaN or inf")


def _check_prompts(inputs: dict[str, np.ndarray]) -> None:
    """The decoder's prompt tensors as the wire carries them (the SDK made them)."""
    coords, labels = inputs[spec.POINT_COORDS], inputs[spec.POINT_LABELS]
    n, p = coords.shape[:2]
    if not (1 <= n <= spec.MAX_PROMPTS_PER_REQUEST and 1 <= p <= spec.MAX_PROMPT_POINTS):
        raise RequestError(
            f"input {spec.POINT_COORDS!r} has shape {list(coords.shape)}; expected "
            f"[N, P, 2] with 1 <= N <= {spec.MAX_PROMPTS_PER_REQUEST} prompts of "
            f"1 <= P <= {spec.MAX_PROMPT_POINTS} points (spec.MAX_PROMPTS_PER_REQUEST, "
            "spec.MAX_PROMPT_POINTS: what the decoder's TensorRT profile allows)"
        )
    if labels.shape != (n, p):
        raise RequestError(
            f"input {spec.POINT_LABELS!r} has shape {list(labels.shape)}, expected "
            f"[{n}, {p}] to match {spec.POINT_COORDS} {list(coords.shape)}"
        )
    if not np.isfinite(coords).all():
        raise RequestError(f"input {spec.POINT_COORDS!r} contains NaN or inf")
    if not np.isin(labels, (-1, 0, 1, 2, 3)).all():
        raise RequestError(f"input {spec.POINT_LABELS!r} holds labels outside {{-1, 0, 1, 2, 3}}")
    if spec.SESSION_MULTIMASK in inputs:
        flag = inputs[spec.SESSION_MULTIMASK]
        if flag.dtype != np.bool_ or flag.size != 1:
            raise RequestError(
                f"input {spec.SESSION_MULTIMASK!r} must be one BOOL, got {flag.dtype} "
                f"{list(flag.shape)}"
            )
        inputs[spec.SESSION_MULTIMASK] = bool(flag.reshape(-1)[0])
    if spec.SESSION_MASK_THRESHOLD in inputs:
        thr = inputs[spec.SESSION_MASK_THRESHOLD]
        if thr.dtype != np.float32 or thr.size != 1 or not np.isfinite(thr).all():
            raise RequestError(
                f"input {spec.SESSION_MASK_THRESHOLD!r} must be one finite FP32, got {thr.dtype} "
                f"{list(thr.shape)}"
            )
        if spec.SESSION_MULTIMASK not in inputs:
            raise RequestError(
                f"input {spec.SESSION_MASK_THRESHOLD!r} needs {spec.SESSION_MULTIMASK!r}: "
                "the masks are those of the selected tokens"
            )
        inputs[spec.SESSION_MASK_THRESHOLD] = float(thr.reshape(-1)[0])
    mask, has_mask = inputs.get(spec.MASK_INPUT), inputs.get(spec.HAS_MASK_INPUT)
    if mask is None and has_mask is None:
        return
    if mask is None or has_mask is None:
        raise RequestError(f"give both {spec.MASK_INPUT!r} and {spec.HAS_MASK_INPUT!r} or neither")
    m = mask.shape[0]
    if m not in (1, n) or has_mask.shape != (m,):
        raise RequestError(
            f"{spec.MASK_INPUT} {list(mask.shape)} / {spec.HAS_MASK_INPUT} "
            f"{list(has_mask.shape)}: expected M = 1 or N = {n} masks and M flags"
        )
    if not np.isfinite(mask).all():
        raise RequestError(f"input {spec.MASK_INPUT!r} contains NaN or inf")
