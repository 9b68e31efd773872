"""``sam2_video``'s byte budget, eviction and expiry (``video_store.VideoStore``), without Triton.

The encoder here returns zero features of the real shapes: these tests are about which bytes the
store keeps, refuses and drops; the numbers themselves are tested through Triton (test_video.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from sam2_triton import video_spec as vs
from sam2_triton_server.video_engine import TrackerError
from sam2_triton_server.video_store import VideoStore

SHAPES = {
    vs.IMAGE_EMBED: (1, 256, 64, 64),
    vs.HIGH_RES_FEATS_0: (1, 32, 256, 256),
    vs.HIGH_RES_FEATS_1: (1, 64, 128, 128),
    vs.VISION_FEAT: (1, 256, 64, 64),
}
FEATURE_BYTES = sum(4 * int(np.prod(s)) for s in SHAPES.values())
FRAME_BYTES = 3 * 1024 * 1024


class Encoder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: str, inputs: dict, outputs: list[str]) -> dict:
        assert model == vs.VIDEO_IMAGE_ENCODER_MODEL
        self.calls += 1
        return {n: np.zeros(SHAPES[n], np.float32) for n in outputs}


def frames(n: int) -> np.ndarray:
    return np.zeros((n, 3, 1024, 1024), np.uint8)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_features_are_computed_once_and_evicted_least_recently_used_first() -> None:
    encoder = Encoder()
    store = VideoStore(encoder, FRAME_BYTES * 3 + FEATURE_BYTES * 2, 4, 60)
    session = store.open(3, (30, 40))
    store.add_frames(session, 0, frames(3))
    for i in (0, 1, 0):
        store.frame_features(session, i)
    assert encoder.calls == 2  # frame 0 came from the cache
    store.frame_features(session, 2)  # room for two: frame 1 (least recently used) goes
    assert encoder.calls == 3 and store.feature_bytes == 2 * FEATURE_BYTES
    store.frame_features(session, 0)
    assert encoder.calls == 3
    store.frame_features(session, 1)
    assert encoder.calls == 4
    assert store.held_bytes() <= store.budget


def test_frames_over_the_budget_are_refused_and_nothing_is_kept() -> None:
    store = VideoStore(Encoder(), FRAME_BYTES * 2, 4, 60)
    session = store.open(5, (30, 40))
    store.add_frames(session, 0, frames(2))
    with pytest.raises(TrackerError, match=vs.VIDEO_OVER_BUDGET):
        store.add_frames(session, 2, frames(1))
    assert sorted(session.frames) == [0, 1]
    store.add_frames(session, 1, frames(1))  # replacing a frame needs no new room


def test_a_frame_not_uploaded_or_out_of_range_is_named() -> None:
    store = VideoStore(Encoder(), 1 << 30, 4, 60)
    session = store.open(2, (30, 40))
    with pytest.raises(TrackerError, match=vs.VIDEO_FRAME_MISSING + ".*frame 1"):
        store.frame_features(session, 1)
    with pytest.raises(TrackerError, match=vs.VIDEO_BAD_FRAME):
        store.add_frames(session, 1, frames(2))
    with pytest.raises(TrackerError, match="uint8"):
        store.add_frames(session, 0, np.zeros((1, 3, 1024, 1024), np.float32))


def test_idle_videos_expire_and_their_ids_are_unknown() -> None:
    clock = Clock()
    store = VideoStore(Encoder(), 1 << 30, 1, 60, clock=clock)
    first = store.open(1, (30, 40))
    with pytest.raises(TrackerError, match=vs.VIDEO_OVER_BUDGET + ".*max_videos"):
        store.open(1, (30, 40))
    clock.now = 61.0
    store.open(1, (30, 40))  # the idle one is closed to make room
    with pytest.raises(TrackerError, match=vs.VIDEO_UNKNOWN):
        store.get(first.video_id)
    with pytest.raises(TrackerError, match="num_frames"):
        store.open(-1, (30, 40))


def test_the_client_may_choose_the_id_once_and_only_a_well_formed_one() -> None:
    store = VideoStore(Encoder(), 1 << 30, 4, 60)
    chosen = "0123456789abcdef" * 2
    assert store.open(1, (30, 40), chosen).video_id == chosen
    with pytest.raises(TrackerError, match="already open"):
        store.open(1, (30, 40), chosen)
    with pytest.raises(TrackerError, match="32 lowercase hex"):
        store.open(1, (30, 40), "../etc")
    assert len(store.open(1, (30, 40)).video_id) == vs.VIDEO_ID_LEN
