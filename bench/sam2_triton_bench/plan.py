"""What ``sam2-triton bench`` measures with: the plan (``--quick``/``--repeats``), progress lines,
the benchmark picture and its prompts."""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from sam2_triton.samples import sample_image
from sam2_triton.types import Prompt

SECTIONS = ("batching", "encoder", "decoder", "click", "fp16", "bytes", "profile")
SKIPPABLE = (*SECTIONS, "sam2", "http")
TIMEOUT_S = 900.0  # per request: an encoder batch of 8 on a loaded 2-core machine is slow
GAP_S = 0.02  # pause between timed calls: lets onnxruntime's spinning threads settle


@dataclass
class Plan:
    """How much of everything to measure (``--repeats``, ``--quick``)."""

    quick: bool
    repeats: int
    concurrency: tuple[int, ...]
    batching_rounds: int
    decoder_ns: tuple[int, ...]
    decoder_rounds: int
    click_rounds: int
    profile_clicks: int
    allocator_experiment: bool
    # seconds after which a section stops adding rounds (it always completes min rounds)
    budgets: dict[str, float] = field(default_factory=dict)

    @classmethod
    def make(cls, quick: bool, repeats: int | None) -> Plan:
        if quick:
            r = repeats or 1
            return cls(
                True,
                r,
                (2,),
                1,
                (1, 4, 16),
                1,
                max(8, 4 * r),
                8,
                False,
                {"encoder": 40, "batching": 60, "decoder": 30, "click": 25},
            )
        r = repeats or 5
        return cls(
            False,
            r,
            (1, 2, 4, 8),
            max(1, math.ceil(r / 3)),
            (1, 4, 16, 64),
            max(2, math.ceil(r / 2)),
            20 * r,
            20,
            True,
            {"encoder": 200, "batching": 240, "decoder": 120, "click": 150},
        )


class Progress:
    """Progress lines on stderr: ``[ elapsed] message``."""

    def __init__(self, stream=None) -> None:
        self.start = time.monotonic()
        self.stream = stream or sys.stderr

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f} s] {message}", file=self.stream, flush=True)


class Images:
    """The benchmark picture (``sam2_triton.samples.sample_image``) and distinct variants of it.

    ``distinct()`` stamps a counter into a corner, so every encoder call is a response-cache
    miss unless a test wants a hit.
    """

    def __init__(self, h: int, w: int) -> None:
        self.base = sample_image(h, w)
        self.hw = (h, w)
        self._count = 0
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def distinct(self) -> np.ndarray:
        k = self._next()
        img = self.base.copy()
        img[0, :4] = np.frombuffer(k.to_bytes(12, "little"), dtype=np.uint8).reshape(4, 3)
        return img

    def distinct_wire(self, wire: np.ndarray) -> np.ndarray:
        """A copy of an encoder input ``[3, 1024, 1024]`` made unique (not a cache hit)."""
        k = self._next()
        out = wire.copy()
        out[:, 0, 0] = np.asarray([k % 251, (k // 251) % 251, 7], dtype=out.dtype) / 255
        return out


def prompt_at(hw: tuple[int, int], fx: float, fy: float) -> Prompt:
    h, w = hw
    return Prompt(point_coords=[[fx * w, fy * h]], point_labels=[1])


def grid_prompts(hw: tuple[int, int], n: int) -> list[Prompt]:
    """``n`` single-click prompts spread over the image."""
    side = math.ceil(math.sqrt(n))
    pts = [((i % side + 0.5) / side, (i // side + 0.5) / side) for i in range(n)]
    return [prompt_at(hw, fx, fy) for fx, fy in pts]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)
