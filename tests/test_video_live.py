"""Video at scale through the real local Triton: 8 objects per batch, live streams, concurrent
videos tracked together, windowed videos. Masks are compared with SAM 2's own predictor (same
gates as test_video.py: IoU >= 0.999, logits within 1e-3); tracking runs few frames (the memory
attention of one object costs seconds per frame on 2 cores).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from sam2_triton import SAM2VideoPredictor
from sam2_triton import video_spec as vs
from sam2_triton.video_io import load_video

from .conftest import SEED
from .test_video import IOU_MIN, LOGIT_TOL, TIMEOUT_S
from .triton_helpers import Requests
from .video_scenario import HEIGHT, WIDTH, compare, reference_predictor, write_clip

pytestmark = pytest.mark.triton

# eight boxes over the 96 x 128 clip, all prompted on frame 0
BOXES = [
    [4 + 30 * (k % 4), 6 + 44 * (k // 4), 30 + 30 * (k % 4), 40 + 44 * (k // 4)] for k in range(8)
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 16 frames: an open-ended stream tracks as SAM 2 on a video of at least 16 frames
    return write_clip(tmp_path_factory.mktemp("clip16") / "frames", num_frames=16)


@pytest.fixture(scope="module")
def sam2(clip: Path):
    from sam2_triton_export import checkpoints

    model = checkpoints.build_model("tiny", seed=SEED)
    return reference_predictor(model.state_dict())


def _rec(out: list, step: str, result: tuple) -> None:
    frame_idx, obj_ids, masks = result
    if hasattr(masks, "detach"):
        masks = masks.detach().float().cpu().numpy()
    out.append((step, int(frame_idx), [int(i) for i in obj_ids], np.asarray(masks, np.float32)))


def _eight_objects(predictor, state) -> list[tuple]:
    out: list[tuple] = []
    for k, box in enumerate(BOXES):
        _rec(out, "box", predictor.add_new_points_or_box(state, 0, k + 1, box=box))
    for result in predictor.propagate_in_video(state, max_frame_num_to_track=1):
        _rec(out, "forward", result)
    return out


def _gate(ours: list[tuple], ref: list[tuple]) -> None:
    result = compare(ours, ref)
    assert result["iou"] >= IOU_MIN and result["max_logit_diff"] <= LOGIT_TOL, result
    assert any((m > 0).any() for *_, m in ours if m.size)


def test_eight_objects_tracked_as_one_batch_match_sam2(video_triton_server, clip, sam2) -> None:
    """Frame 1: eight objects tracked together (memory attention in calls within the CPU
    flavour's attention_batch_bytes, the decoder and the memory encoder as one call of 8;
    test_video_scale checks the grouping of different memory layouts)."""
    reference = _eight_objects(sam2, sam2.init_state(str(clip)))
    stats = Requests(video_triton_server)
    with SAM2VideoPredictor(url=video_triton_server.grpc_url, timeout_s=TIMEOUT_S) as predictor:
        state = predictor.init_state(str(clip))
        ours = _eight_objects(predictor, state)
        predictor.close_state(state)
    assert [f for s, f, *_ in ours if s == "forward"] == [0, 1]
    assert ours[-1][2] == list(range(1, 9))
    _gate(ours, reference)
    # 8 prompts (one object each), then frame 1's eight objects: one decoder call, not eight;
    # the memories: the preflight's 8 prompted outputs in one call, frame 1's 8 in one more
    decoder = stats.settled(vs.VIDEO_MASK_DECODER_MODEL, "requests")
    encoder = stats.settled(vs.MEMORY_ENCODER_MODEL, "requests")
    assert (decoder, encoder) == (8 + 1, 1 + 1), (decoder, encoder)


def test_live_stream_with_an_object_joining_matches_sam2(video_triton_server, clip, sam2) -> None:
    """Frames pushed one at a time, each tracked as it arrives; object 1 prompted on frame 0,
    object 2 joins on frame 1 (after that frame was tracked for object 1). SAM 2: the same
    prompts, and ``propagate_in_video(start_frame_idx=t, max_frame_num_to_track=0)`` for each
    new frame t."""
    frames = load_video(str(clip))

    def prompts(predictor, state, t: int, out: list) -> None:
        if t == 0:
            click = predictor.add_new_points_or_box(state, 0, 1, points=[[25, 35]], labels=[1])
            _rec(out, "click", click)
        if t == 1:
            _rec(out, "join", predictor.add_new_points_or_box(state, 1, 2, box=[80, 55, 110, 85]))

    ref_state, ref = sam2.init_state(str(clip)), []
    for t in range(3):
        if t > 0:
            (result,) = sam2.propagate_in_video(
                ref_state, start_frame_idx=t, max_frame_num_to_track=0
            )
            _rec(ref, "frame", result)
        prompts(sam2, ref_state, t, ref)
    ours: list[tuple] = []
    with SAM2VideoPredictor(url=video_triton_server.grpc_url, timeout_s=TIMEOUT_S) as predictor:
        state = predictor.init_stream(HEIGHT, WIDTH)
        for t in range(3):
            result = predictor.track_frame(state, frames.frame(t))
            if t == 0:  # no object yet: the frame is kept, nothing to track
                assert result[0] == 0 and result[1] == []
                assert result[2].shape == (0, 1, HEIGHT, WIDTH)
            else:
                _rec(ours, "frame", result)
            prompts(predictor, state, t, ours)
        assert state["num_frames"] == 3
        predictor.close_state(state)
    assert [(s, f, o) for s, f, o, _ in ours] == [
        ("click", 0, [1]),
        ("frame", 1, [1]),
        ("join", 1, [1, 2]),
        ("frame", 2, [1, 2]),
    ]
    _gate(ours, ref)


def test_concurrent_videos_are_tracked_together(video_triton_server, clip) -> None:
    """Three videos propagate at once, stepped over HTTP (one of them windowed, uploading frame
    by frame): Triton's dynamic batcher hands sam2_video several of their requests per execute,
    and every video gets the masks it gets alone."""
    results: dict[str, list] = {}

    def run(name: str, window: int) -> None:
        with SAM2VideoPredictor(
            url=video_triton_server.http_url, protocol="http", timeout_s=TIMEOUT_S
        ) as predictor:
            state = predictor.init_state(str(clip), window=window)
            predictor.add_new_points_or_box(state, 0, 1, points=[[25, 35]], labels=[1])
            results[name] = [
                m for _, _, m in predictor.propagate_in_video(state, max_frame_num_to_track=1)
            ]
            predictor.close_state(state)

    run("alone", 0)
    stats = Requests(video_triton_server)
    threads = [threading.Thread(target=run, args=(f"v{i}", w)) for i, w in enumerate((0, 0, 16))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["alone", "v0", "v1", "v2"]
    for name in ("v0", "v1", "v2"):
        assert len(results[name]) == 2
        for got, want in zip(results[name], results["alone"]):
            assert float(np.abs(got - want).max()) <= LOGIT_TOL, name
    requests = stats.settled(vs.VIDEO_MODEL, "inferences")
    executions = stats.settled(vs.VIDEO_MODEL, "executions")
    assert executions < requests, (executions, requests)


def test_readme_live_example_runs_as_written(video_triton_server) -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "init_stream" in b]
    rng = np.random.default_rng(0)
    with SAM2VideoPredictor(url=video_triton_server.grpc_url, timeout_s=TIMEOUT_S) as predictor:
        namespace = {
            "predictor": predictor,
            "camera_frames": [rng.integers(0, 256, (480, 640, 3), np.uint8) for _ in range(2)],
        }
        exec(block, namespace)  # noqa: S102 - the README's own code
        predictor.close_state(namespace["state"])
    assert namespace["frame_idx"] == 1 and namespace["obj_ids"] == [1]
    assert namespace["mask_logits"].shape == (1, 1, 480, 640)
