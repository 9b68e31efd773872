"""``sam2_video``'s videos: frames, per-frame features and trackers under one byte budget.

A video's frames (uint8, 3 MB each) and its objects' memory banks cannot be recomputed, so
they are refused (``VIDEO_OVER_BUDGET``) when they would exceed the budget; frame features
(``FrameFeatures``, ~20 MB each with the tiny model) can, so they are an LRU cache across all
videos that gives way first. Videos idle for longer than ``idle_ttl_s`` are closed when room is
needed; after that (or a restart) their id is unknown (``VIDEO_UNKNOWN``), never reused.

A video opened with a window (long videos, live streams) keeps only its last ``window`` tracked
frames: their images, features and outputs, plus every conditioning output
(``VideoTracker.retire``), so what it holds does not grow with its length. An open-ended video
(``num_frames`` 0: a live stream) grows as frames are appended.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sam2_triton import spec
from sam2_triton import video_spec as vs

from .video_engine import FrameFeatures, GraphRunner, TrackerError, VideoTracker
from .video_graphs import DEFAULT_ATTENTION_BATCH_BYTES, encode_frames

FRAME_SHAPE = (3, spec.IMAGE_SIZE, spec.IMAGE_SIZE)


@dataclass
class Propagation:
    """A propagation in progress: the frames left, in order, and its direction."""

    order: list[int]
    reverse: bool
    position: int = 0


@dataclass
class VideoSession:
    video_id: str
    video_hw: tuple[int, int]
    tracker: VideoTracker
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # uint8 [3, 1024, 1024]
    propagation: Propagation | None = None
    last_used: float = 0.0

    @property
    def num_frames(self) -> int:
        return self.tracker.num_frames

    @property
    def frame_bytes(self) -> int:
        return sum(f.nbytes for f in self.frames.values())


class VideoStore:
    """Every open video of one ``sam2_video`` instance (thread-safe)."""

    def __init__(
        self,
        run: GraphRunner,
        budget_bytes: int,
        max_videos: int,
        idle_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        attention_batch_bytes: int = DEFAULT_ATTENTION_BATCH_BYTES,
    ) -> None:
        self.run = run
        self.attention_batch_bytes = attention_batch_bytes
        self.budget = budget_bytes
        self.max_videos = max_videos
        self.idle_ttl_s = idle_ttl_s
        self.clock = clock
        self.videos: dict[str, VideoSession] = {}
        self.features: OrderedDict[tuple[str, int], FrameFeatures] = OrderedDict()
        self.feature_bytes = 0
        self.lock = threading.RLock()

    # --- accounting ------------------------------------------------------------------------
    def fixed_bytes(self) -> int:
        """Bytes that cannot be recomputed: frames and memory banks of every open video."""
        return sum(v.frame_bytes + v.tracker.nbytes for v in self.videos.values())

    def video_bytes(self, session: VideoSession) -> int:
        """Bytes one video holds: frames, outputs and its cached features."""
        with self.lock:
            feats = sum(f.nbytes for k, f in self.features.items() if k[0] == session.video_id)
        return session.frame_bytes + session.tracker.nbytes + feats

    def held_bytes(self) -> int:
        return self.fixed_bytes() + self.feature_bytes

    def _evict_features(self, needed: int) -> None:
        """Drop least recently used features until ``needed`` more bytes fit the budget."""
        while self.features and self.held_bytes() + needed > self.budget:
            _, feats = self.features.popitem(last=False)
            self.feature_bytes -= feats.nbytes

    def _close_idle(self) -> None:
        now = self.clock()
        for video_id in [k for k, v in self.videos.items() if now - v.last_used > self.idle_ttl_s]:
            self.close(video_id)

    # --- videos ----------------------------------------------------------------------------
    def open(
        self,
        num_frames: int,
        video_hw: tuple[int, int],
        video_id: str | None = None,
        window: int = 0,
    ) -> VideoSession:
        """A new video; ``video_id`` is the client's (``video_spec.VIDEO_ID_PATTERN``, so that
        a gateway can route every request of the video, the first one included, to one
        replica) or a random one. ``num_frames`` 0: open-ended (a live stream). ``window`` 0:
        keep everything; else keep the last ``window`` tracked frames (see the module)."""
        if not 0 <= num_frames <= vs.MAX_VIDEO_FRAMES:
            raise TrackerError(
                vs.VIDEO_BAD_FRAME,
                f"num_frames must be 1..{vs.MAX_VIDEO_FRAMES} (or 0: open-ended, frames are "
                f"appended), got {num_frames}",
            )
        if window != 0 and not vs.MIN_VIDEO_WINDOW <= window <= vs.MAX_VIDEO_FRAMES:
            raise TrackerError(
                "invalid window",
                f"{window}: 0 (keep every frame) or at least {vs.MIN_VIDEO_WINDOW} (tracking a "
                f"frame reads the {vs.MIN_VIDEO_WINDOW - 1} frames before it)",
            )
        h, w = video_hw
        if not (1 <= h and 1 <= w and h * w <= spec.SESSION_MAX_PIXELS):
            raise TrackerError(
                "invalid video_hw",
                f"{video_hw}: height and width must be >= 1 with at most "
                f"{spec.SESSION_MAX_PIXELS} pixels",
            )
        with self.lock:
            self._close_idle()
            if len(self.videos) >= self.max_videos:
                raise TrackerError(
                    vs.VIDEO_OVER_BUDGET,
                    f"{len(self.videos)} videos are open (max_videos); close one or retry later",
                )
            if video_id is None:
                video_id = secrets.token_hex(vs.VIDEO_ID_LEN // 2)
            elif not re.fullmatch(vs.VIDEO_ID_PATTERN, video_id):
                raise TrackerError(
                    "invalid video_id",
                    f"{video_id!r}: a new video's id must be {vs.VIDEO_ID_LEN} lowercase hex "
                    "characters (random, e.g. secrets.token_hex(16))",
                )
            elif video_id in self.videos:
                raise TrackerError("invalid video_id", f"{video_id!r} is already open")

            def features(frame_idx: int) -> FrameFeatures:
                return self.frame_features(self.get(video_id), frame_idx)

            tracker = VideoTracker(
                self.run,
                features,
                num_frames,
                open_ended=num_frames == 0,
                window=window,
                attention_batch_bytes=self.attention_batch_bytes,
            )
            session = VideoSession(video_id, (h, w), tracker, last_used=self.clock())
            self.videos[video_id] = session
            return session

    def get(self, video_id: str) -> VideoSession:
        with self.lock:
            session = self.videos.get(video_id)
            if session is None:
                raise TrackerError(
                    vs.VIDEO_UNKNOWN,
                    f"{video_id!r} (never opened here, closed, idle for longer than "
                    f"{self.idle_ttl_s:g} s, or the server restarted): open it again",
                )
            session.last_used = self.clock()
            return session

    def close(self, video_id: str) -> None:
        with self.lock:
            self.videos.pop(video_id, None)
            for key in [k for k in self.features if k[0] == video_id]:
                self.feature_bytes -= self.features.pop(key).nbytes

    def add_frames(self, session: VideoSession, start: int, frames: np.ndarray) -> None:
        """Keep ``frames`` uint8 ``[F, 3, 1024, 1024]`` as frames ``start..start+F-1``; an
        open-ended video grows (``start`` at most its current length: no gaps)."""
        if frames.ndim != 4 or frames.shape[1:] != FRAME_SHAPE or frames.dtype != np.uint8:
            raise TrackerError(
                "invalid frames",
                f"expected uint8 [F, 3, {spec.IMAGE_SIZE}, {spec.IMAGE_SIZE}], got "
                f"{frames.dtype} {list(frames.shape)}",
            )
        tracker = session.tracker
        stop = start + frames.shape[0]
        if tracker.open_ended:
            if not 0 <= start <= session.num_frames or stop > vs.MAX_VIDEO_FRAMES:
                raise TrackerError(
                    vs.VIDEO_BAD_FRAME,
                    f"frames {start}..{stop - 1}: an open-ended video of {session.num_frames} "
                    f"frames takes frames from 0 to {session.num_frames} (appended in order)",
                )
        elif start < 0 or stop > session.num_frames:
            raise TrackerError(
                vs.VIDEO_BAD_FRAME,
                f"frames {start}..{stop - 1}; the video has {session.num_frames} frames",
            )
        if start < tracker.released_before:
            tracker.check_frame(start)  # raises: released
        with self.lock:
            replaced = sum(
                session.frames[i].nbytes for i in range(start, stop) if i in session.frames
            )
            needed = frames.nbytes - replaced
            if self.fixed_bytes() + needed > self.budget:
                raise TrackerError(
                    vs.VIDEO_OVER_BUDGET,
                    f"{len(frames)} frames ({frames.nbytes} bytes) do not fit: "
                    f"{self.fixed_bytes()} of {self.budget} bytes hold frames and memories "
                    "of open videos (video_frame_budget_bytes); close videos or raise it",
                )
            self._evict_features(needed)
            for i, frame in enumerate(frames):
                session.frames[start + i] = np.ascontiguousarray(frame)
                self._drop_features(session.video_id, start + i)
            tracker.num_frames = max(tracker.num_frames, stop)

    def release(self, session: VideoSession, last_tracked: int) -> None:
        """A windowed video after tracking ``last_tracked``: forget what lies before its
        window (``VideoTracker.retire``): outputs, frames and features."""
        before = session.tracker.retire(last_tracked)
        with self.lock:
            for frame_idx in [t for t in session.frames if t < before]:
                del session.frames[frame_idx]
                self._drop_features(session.video_id, frame_idx)

    def prefetch(self, wanted: list[tuple[VideoSession, int]]) -> None:
        """Compute the missing features of several frames (of several videos) in batched
        encoder calls, and cache them as ``frame_features`` would."""
        with self.lock:
            unique = {(s.video_id, t): (s, t) for s, t in wanted}
            missing = [
                (s, t)
                for key, (s, t) in unique.items()
                if key not in self.features and t in s.frames
            ]
            images = [s.frames[t] for s, t in missing]
        if len(missing) < 2:
            return  # frame_features computes a single frame on demand
        for (session, frame_idx), feats in zip(missing, encode_frames(self.run, images)):
            self._cache(session, frame_idx, feats)

    def _drop_features(self, video_id: str, frame_idx: int) -> None:
        feats = self.features.pop((video_id, frame_idx), None)
        if feats is not None:
            self.feature_bytes -= feats.nbytes

    def frame_features(self, session: VideoSession, frame_idx: int) -> FrameFeatures:
        """A frame's features: cached, or computed now (and cached if the budget allows)."""
        key = (session.video_id, frame_idx)
        with self.lock:
            feats = self.features.get(key)
            if feats is not None:
                self.features.move_to_end(key)
                return feats
            frame = session.frames.get(frame_idx)
        if frame is None:
            raise TrackerError(
                vs.VIDEO_FRAME_MISSING,
                f"frame {frame_idx} of video {session.video_id!r} was never uploaded (add_frames)",
            )
        feats = encode_frames(self.run, [frame])[0]
        self._cache(session, frame_idx, feats)
        return feats

    def _cache(self, session: VideoSession, frame_idx: int, feats: FrameFeatures) -> None:
        with self.lock:
            self._evict_features(feats.nbytes)
            if self.held_bytes() + feats.nbytes <= self.budget and session.video_id in self.videos:
                self.features[(session.video_id, frame_idx)] = feats
                self.feature_bytes += feats.nbytes

    def check_budget(self) -> None:
        """After an operation grew a memory bank: make room, or say the budget is exceeded."""
        with self.lock:
            self._evict_features(0)
            if self.fixed_bytes() > self.budget:
                raise TrackerError(
                    vs.VIDEO_OVER_BUDGET,
                    f"memories and frames of open videos hold {self.fixed_bytes()} of "
                    f"{self.budget} bytes (video_frame_budget_bytes); close videos or raise it",
                )
