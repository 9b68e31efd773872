"""One video session script, run alike on SAM 2's ``SAM2VideoPredictor`` and on ours.

Both predictors have the same method names and arguments, so ``run_scenario`` drives either and
records every mask they return, as float32 numpy logits at the video's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# SAM 2's own SAM2VideoPredictor on CPU with the bfloat16-memory patch: the benchmark's, so both
# compare against the same reference
from sam2_triton_bench.video_bench import reference_predictor  # noqa: F401 - re-exported

NUM_FRAMES = 8
HEIGHT, WIDTH = 96, 128


def write_clip(folder: Path, num_frames: int = NUM_FRAMES) -> Path:
    """A synthetic clip as SAM 2 reads videos: ``<index>.jpg`` frames, two moving blocks."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(num_frames):
        f = np.full((HEIGHT, WIDTH, 3), 40, np.uint8) + rng.integers(
            0, 20, (HEIGHT, WIDTH, 3), dtype=np.uint8
        )
        f[20:50, 10 + 4 * t : 40 + 4 * t] = (220, 40, 40)
        f[55:85, 80 - 3 * t : 110 - 3 * t] = (40, 200, 60)
        Image.fromarray(f).save(folder / f"{t:05d}.jpg", quality=95)
    return folder


def mask_prompt() -> np.ndarray:
    """A mask prompt at the video's size (bool ``[96, 128]``)."""
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[30:60, 40:90] = True
    return mask


def _np(masks: object) -> np.ndarray:
    if hasattr(masks, "detach"):
        masks = masks.detach().float().cpu().numpy()
    return np.asarray(masks, np.float32)


def run_scenario(predictor: object, state: object, full: bool = True) -> list[tuple]:
    """Clicks, a box, a negative click, forward propagation, a correction on a later frame,
    reverse propagation, clearing a frame, a mask prompt, removing an object, reset.

    Returns ``(step, frame_idx, obj_ids, masks [O, 1, H, W])`` per returned frame. With
    ``full=False``: the prompts on frame 0 and the first two frames of forward propagation
    (their results are the same as in the full run).
    """
    p, out = predictor, []

    def rec(step: str, result: tuple) -> None:
        frame_idx, obj_ids, masks = result
        out.append((step, int(frame_idx), [int(i) for i in obj_ids], _np(masks)))

    rec("click", p.add_new_points_or_box(state, 0, 1, points=[[25, 35]], labels=[1]))
    rec("box", p.add_new_points_or_box(state, 0, 2, box=[80, 55, 110, 85]))
    rec(
        "negative",
        p.add_new_points_or_box(
            state, 0, 1, points=[[60, 70]], labels=np.array([0]), clear_old_points=False
        ),
    )
    for result in p.propagate_in_video(state, max_frame_num_to_track=None if full else 1):
        rec("forward", result)
    if not full:
        return out
    rec(
        "correction",
        p.add_new_points_or_box(state, 5, 1, points=[[50, 35]], labels=[1], clear_old_points=False),
    )
    for result in p.propagate_in_video(
        state, start_frame_idx=7, max_frame_num_to_track=3, reverse=True
    ):
        rec("reverse", result)
    rec("clear", p.clear_all_prompts_in_frame(state, 5, 1))
    rec("mask", p.add_new_mask(state, 3, 3, mask_prompt()))
    obj_ids, updated = p.remove_object(state, 2)
    for frame_idx, masks in updated:
        out.append(("remove", int(frame_idx), [int(i) for i in obj_ids], _np(masks)))
    for result in p.propagate_in_video(state, start_frame_idx=3, max_frame_num_to_track=1):
        rec("after-remove", result)
    p.reset_state(state)
    out.append(("reset", -1, [int(i) for i in state["obj_ids"]], np.zeros((0,), np.float32)))
    return out


def compare(ours: list[tuple], ref: list[tuple]) -> dict[str, float]:
    """Step by step: same frames and objects; masks IoU (logits > 0) and max abs logit diff."""
    assert [(s, f, o) for s, f, o, _ in ours] == [(s, f, o) for s, f, o, _ in ref[: len(ours)]]
    worst_iou, worst_diff = 1.0, 0.0
    for (step, frame, _, a), (_, _, _, b) in zip(ours, ref):
        assert a.shape == b.shape, (step, frame, a.shape, b.shape)
        if a.size == 0:
            continue
        worst_diff = max(worst_diff, float(np.abs(a - b).max()))
        pa, pb = a > 0, b > 0
        union = (pa | pb).sum(axis=(1, 2, 3))
        iou = np.where(union > 0, (pa & pb).sum(axis=(1, 2, 3)) / np.maximum(union, 1), 1.0)
        worst_iou = min(worst_iou, float(iou.min()))
    return {"iou": worst_iou, "max_logit_diff": worst_diff}
