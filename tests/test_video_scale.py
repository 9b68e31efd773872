"""Video at scale without Triton: objects batched, windows that forget only what SAM 2 never reads.

The graphs are stood in for by ``RowGraphs``: every output row is a cheap function of that row's
inputs (and the call's shared positions), so a batch that mixed up rows, grouped different
memory layouts together or lost a memory would change the results. The numbers of the real
graphs are compared with SAM 2 through Triton (test_video.py); these tests are about which rows
go where and which bytes are kept.
"""

from __future__ import annotations

import numpy as np
import pytest

from sam2_triton import video_spec as vs
from sam2_triton_server.video_engine import TrackerError, TrackJob, VideoTracker, track_frames
from sam2_triton_server.video_graphs import encode_memories
from sam2_triton_server.video_store import VideoStore

C, S = vs.HIDDEN_DIM, vs.FEAT_SIZE


class RowGraphs:
    """Stand-ins for the five graphs, row by row; records every call's model and batch size."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.attention_inputs: list[tuple[bytes, ...]] = []

    def __call__(self, model: str, inputs: dict, outputs: list[str]) -> dict:
        first = next(iter(inputs.values()))
        b = first.shape[0] if first.ndim else 1
        self.calls.append((model, b))
        if model == vs.VIDEO_IMAGE_ENCODER_MODEL:
            img = inputs[vs.IMAGE].astype(np.float32).mean(axis=(1, 2, 3))  # [B]
            base = img[:, None, None, None]
            return {
                vs.IMAGE_EMBED: np.broadcast_to(base + 1, (b, C, S, S)).copy(),
                vs.HIGH_RES_FEATS_0: np.broadcast_to(base, (b, 32, 4 * S, 4 * S)).copy(),
                vs.HIGH_RES_FEATS_1: np.broadcast_to(base, (b, 64, 2 * S, 2 * S)).copy(),
                vs.VISION_FEAT: np.broadcast_to(base, (b, C, S, S)).copy(),
            }
        if model == vs.MEMORY_ATTENTION_MODEL:
            mem = inputs[vs.MASKMEM_FEATURES]  # [B, M, 64, 64, 64]
            ptrs = inputs[vs.OBJ_PTRS]  # [B, P, 256]
            tpos = inputs[vs.MASKMEM_TPOS].astype(np.float32)
            ptpos = inputs[vs.OBJ_PTR_TPOS]
            for row in range(b):
                self.attention_inputs.append(
                    (mem[row].tobytes(), tpos.tobytes(), ptrs[row].tobytes(), ptpos.tobytes())
                )
            w = np.float32(1.0) + tpos.sum() + ptpos.sum()
            mix = mem.mean(axis=(1, 2)).mean(axis=-1)  # [B, 64]
            mix = mix + (ptrs.mean(axis=(1, 2)) if ptrs.shape[1] else 0)[..., None] * 0.5
            out = inputs[vs.VISION_FEAT] * w + np.tile(mix, (1, 4))[:, :, None, None]
            return {vs.PIX_FEAT_WITH_MEM: out.astype(np.float32)}
        if model == vs.VIDEO_MASK_DECODER_MODEL:
            pix = inputs[vs.PIX_FEAT].mean(axis=(2, 3))  # [B, 256]
            pts = inputs[vs.POINT_COORDS].sum(axis=(1, 2))[:, None]
            lin = np.linspace(-3, 3, 256, dtype=np.float32)
            low = np.sin(pix[:, :1, None, None] + lin[:, None] + 0.5 * lin) + pts[:, :, None, None]
            return {
                vs.LOW_RES_MASKS: np.ascontiguousarray(low, np.float32),
                vs.OBJ_PTR: (pix + pts).astype(np.float32),
                vs.OBJECT_SCORE_LOGITS: (pix[:, :1] + 1).astype(np.float32),
            }
        if model == vs.MEMORY_ENCODER_MODEL:
            masks = inputs[vs.PRED_MASKS].mean(axis=(1, 2, 3))[:, None, None, None]
            feat = inputs[vs.VISION_FEAT][:, :64] * 0.5 + masks
            return {vs.MASKMEM_FEATURES: feat.astype(np.float32)}
        raise AssertionError(model)


def frame(t: int) -> np.ndarray:
    return np.full((3, 1024, 1024), (7 * t) % 251, np.uint8)


def tracker(graphs: RowGraphs, num_frames: int, objects: int, **kw) -> VideoTracker:
    cache: dict[int, object] = {}

    def features(t: int):
        if t not in cache:
            cache[t] = graphs(vs.VIDEO_IMAGE_ENCODER_MODEL, {vs.IMAGE: frame(t)[None]}, [])
            cache[t] = _feats(cache[t])
        return cache[t]

    tr = VideoTracker(graphs, features, num_frames, **kw)
    for k in range(objects):
        corner = np.array([[10.0 * k, 20.0], [10.0 * k + 50, 90.0]], np.float32)
        tr.add_new_points_or_box(0 if k % 2 == 0 else 2, k + 1, corner, np.array([2, 3]))
    tr.preflight()
    return tr


def _feats(out: dict):
    from sam2_triton_server.video_graphs import FrameFeatures

    return FrameFeatures(
        out[vs.IMAGE_EMBED], out[vs.HIGH_RES_FEATS_0], out[vs.HIGH_RES_FEATS_1], out[vs.VISION_FEAT]
    )


def test_eight_objects_in_one_batch_equal_one_at_a_time() -> None:
    """Objects prompted on frames 0 and 2 have different memory layouts on frames 3..5: they
    are tracked in separate memory-attention calls, everything else in one call of 8 rows."""
    batched_graphs, single_graphs = RowGraphs(), RowGraphs()
    batched = tracker(batched_graphs, 8, 8)
    single = tracker(single_graphs, 8, 8)
    single_graphs.calls.clear()  # the preflight encoded the eight prompts' memories at once
    for t in range(3, 6):
        got = batched.track_frame(t, reverse=False)
        want = np.empty_like(got)
        for i, obj in enumerate(single.objects):  # SAM 2.1: one object per call
            out = single._frame_inference(obj, t, False, None, None, False)
            feats = single.features(t)
            (out.maskmem_bf16,) = encode_memories(
                single_graphs, [(feats.vision_feat[0], out, False)]
            )
            obj.non_cond[t] = out
            want[i] = out.pred_masks[0]
        np.testing.assert_array_equal(got, want)
    calls = [(m, b) for m, b in batched_graphs.calls if m != vs.VIDEO_IMAGE_ENCODER_MODEL]
    # the last frame: two memory attention calls (two layouts), one decoder, one memory encoder
    assert sorted(calls[-4:]) == [
        (vs.MEMORY_ATTENTION_MODEL, 4),
        (vs.MEMORY_ATTENTION_MODEL, 4),
        (vs.MEMORY_ENCODER_MODEL, 8),
        (vs.VIDEO_MASK_DECODER_MODEL, 8),
    ]
    assert max(b for _, b in single_graphs.calls) == 1


def test_attention_batches_stay_within_their_byte_budget() -> None:
    graphs = RowGraphs()
    tr = tracker(graphs, 8, 8, attention_batch_bytes=1)  # one row per call, at least
    tr.track_frame(3, reverse=False)
    sizes = [b for m, b in graphs.calls if m == vs.MEMORY_ATTENTION_MODEL]
    assert sizes and set(sizes) == {1}


def test_several_videos_share_calls_and_keep_their_own_results() -> None:
    graphs = RowGraphs()
    a, b = tracker(graphs, 8, 3), tracker(graphs, 8, 2)
    alone_a, alone_b = tracker(RowGraphs(), 8, 3), tracker(RowGraphs(), 8, 2)
    graphs.calls.clear()
    got = track_frames(graphs, [TrackJob(a, 3, False), TrackJob(b, 3, False)])
    np.testing.assert_array_equal(got[0], alone_a.track_frame(3, False))
    np.testing.assert_array_equal(got[1], alone_b.track_frame(3, False))
    assert (vs.VIDEO_MASK_DECODER_MODEL, 5) in graphs.calls


def _drive(store: VideoStore, session, frames: int, graphs: RowGraphs) -> list[int]:
    """Append frames one at a time as sam2_video's "track" does; bytes held after each."""
    held = []
    for t in range(frames):
        store.add_frames(session, t, frame(t)[None])
        if t == 0:
            box = np.array([[10.0, 20.0], [60.0, 90.0]], np.float32)
            session.tracker.add_new_points_or_box(0, 1, box, np.array([2, 3]))
        if t == 30:  # an object joins mid-stream
            box = np.array([[300.0, 20.0], [360.0, 90.0]], np.float32)
            session.tracker.add_new_points_or_box(30, 2, box, np.array([2, 3]))
        session.tracker.preflight()
        session.tracker.track_frame(t, reverse=False)
        store.release(session, t)
        held.append(store.video_bytes(session))
    return held


def test_a_window_reads_what_the_whole_video_reads_with_flat_memory() -> None:
    full_graphs, window_graphs = RowGraphs(), RowGraphs()
    full = VideoStore(full_graphs, 1 << 40, 2, 60)
    windowed = VideoStore(window_graphs, 1 << 40, 2, 60)
    a = full.open(0, (30, 40))
    b = windowed.open(0, (30, 40), window=vs.MIN_VIDEO_WINDOW)
    held_full = _drive(full, a, 70, full_graphs)
    held = _drive(windowed, b, 70, window_graphs)
    # every memory attention call saw the same memories, positions and pointers
    assert window_graphs.attention_inputs == full_graphs.attention_inputs
    assert len(window_graphs.attention_inputs) > 70
    # flat once the window is full (objects fixed): frames, features and outputs of 16 frames
    assert len(set(held[50:])) == 1 and held[50] > held[20]  # two objects from frame 30 on
    assert held_full[69] > 3 * held[69]
    assert len(b.frames) == vs.MIN_VIDEO_WINDOW and b.tracker.released_before == 70 - 16
    # what was forgotten is refused, never silently different
    with pytest.raises(TrackerError, match=vs.VIDEO_FRAME_RELEASED):
        b.tracker.add_new_points_or_box(10, 3, np.zeros((1, 2), np.float32), np.array([1]))
    with pytest.raises(TrackerError, match=vs.VIDEO_FRAME_RELEASED):
        b.tracker.track_frame(60, reverse=False)  # reads frames 45..59; 45..53 are gone
    with pytest.raises(TrackerError, match="window"):
        windowed.open(0, (30, 40), window=vs.MIN_VIDEO_WINDOW - 1)
