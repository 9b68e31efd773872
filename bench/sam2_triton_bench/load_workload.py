"""The load test's workload: options, seeded images, prompt sets and per-client request plans,
and the digests that compare a result with the serial run's."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sam2_triton import ImageEmbedding, Prediction, Prompt

# One embedding is 16.8 MB in FP32: a two-image client cache makes misses part of the mix.
CLIENT_CACHE_BYTES = 2 * 17_000_000
IMAGE_SIZES = ((240, 320), (480, 640), (333, 500), (600, 400), (256, 256), (720, 540))
# Prompts per decode call, and how often each count is drawn (mean ~4.3 prompts).
PROMPT_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16)
PROMPT_WEIGHTS = (0.35, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05, 0.1)

# How each client talks to the server: protocol, then options. "+sessions" clients use the
# default (use_sessions=None: the server-side session model when the repository has one); the
# others send the features with every decode (use_sessions=False).
ClientKind = str
CLIENT_KINDS: tuple[ClientKind, ...] = (
    "grpc",
    "http",
    "grpc+shm",
    "grpc-aio",
    "grpc+sessions",
    "http+sessions",
)


@dataclass(frozen=True)
class LoadOptions:
    """What to run. ``warmup`` requests of each client run before the memory baseline."""

    clients: int = 32
    requests: int = 200
    images: int = 4
    prompt_sets: int = 6
    max_prompts: int = 16
    encode_fraction: float = 0.15
    warmup: int = 10
    seed: int = 0
    retries: int = 5
    timeout_s: float = 300.0
    max_duration_s: float = 3600.0
    max_rss_growth_mb: float = 256.0
    client_kinds: tuple[ClientKind, ...] = CLIENT_KINDS

    def __post_init__(self) -> None:
        checks = {
            "clients": self.clients >= 1,
            "requests": self.requests >= 1,
            "images": 1 <= self.images <= len(IMAGE_SIZES),
            "prompt_sets": self.prompt_sets >= 1,
            "max_prompts": self.max_prompts >= 1,
            "encode_fraction": 0.0 <= self.encode_fraction <= 1.0,
            "warmup": 0 <= self.warmup <= self.requests,
            "retries": self.retries >= 0,
            "timeout_s": self.timeout_s > 0,
            "max_duration_s": self.max_duration_s > 0,
            "max_rss_growth_mb": self.max_rss_growth_mb >= 0,
            "client_kinds": bool(self.client_kinds)
            and all(k in CLIENT_KINDS for k in self.client_kinds),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid load-test options: {', '.join(bad)} ({self})")


@dataclass(frozen=True)
class RequestSpec:
    """One request: ``encode`` image ``image``, or ``decode`` its prompt set ``prompt_set``."""

    kind: str
    image: int
    prompt_set: int = -1
    multimask: bool = True


def make_images(opts: LoadOptions) -> list[np.ndarray]:
    """``opts.images`` distinct seeded RGB uint8 pictures (smooth gradients plus noise)."""
    rng = np.random.default_rng(opts.seed)
    out = []
    for h, w in IMAGE_SIZES[: opts.images]:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200
        noise = rng.integers(0, 56, (h, w, 3))
        out.append((base + noise).clip(0, 255).astype(np.uint8))
    return out


def make_prompt_sets(images: Sequence[np.ndarray], opts: LoadOptions) -> list[list[list[Prompt]]]:
    """``[image][set]`` lists of prompts: clicks, click pairs, boxes, boxes with a click."""
    rng = np.random.default_rng(opts.seed + 1)
    counts = [n for n in PROMPT_COUNTS if n <= opts.max_prompts] or [1]
    weights = np.asarray(PROMPT_WEIGHTS[: len(counts)]) / sum(PROMPT_WEIGHTS[: len(counts)])
    sets: list[list[list[Prompt]]] = []
    for img in images:
        h, w = img.shape[:2]
        per_image = []
        for _ in range(opts.prompt_sets):
            n = int(rng.choice(counts, p=weights))
            prompts = []
            for _ in range(n):
                kind = int(rng.integers(0, 4))
                x, y = float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))
                if kind == 0:
                    prompts.append(Prompt(point_coords=[[x, y]], point_labels=[1]))
                elif kind == 1:
                    x2, y2 = float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))
                    prompts.append(Prompt(point_coords=[[x, y], [x2, y2]], point_labels=[1, 0]))
                else:
                    x0, y0 = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
                    box = [
                        x0,
                        y0,
                        x0 + float(rng.uniform(8, w / 2)),
                        y0 + float(rng.uniform(8, h / 2)),
                    ]
                    if kind == 2:
                        prompts.append(Prompt(box=box))
                    else:
                        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                        prompts.append(Prompt(box=box, point_coords=[[cx, cy]], point_labels=[1]))
            per_image.append(prompts)
        sets.append(per_image)
    return sets


def make_plan(opts: LoadOptions) -> list[list[RequestSpec]]:
    """Per client, its ``opts.requests`` requests (seeded, reproducible)."""
    rng = np.random.default_rng(opts.seed + 2)
    plan = []
    for _ in range(opts.clients):
        reqs = []
        for _ in range(opts.requests):
            image = int(rng.integers(0, opts.images))
            if rng.random() < opts.encode_fraction:
                reqs.append(RequestSpec("encode", image))
            else:
                reqs.append(
                    RequestSpec(
                        "decode",
                        image,
                        int(rng.integers(0, opts.prompt_sets)),
                        bool(rng.random() < 0.7),
                    )
                )
        plan.append(reqs)
    return plan


def _digest(arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def embedding_digest(emb: ImageEmbedding) -> str:
    return _digest([*emb.features().values(), emb.fingerprint, np.asarray(emb.orig_hw)])


def prediction_digest(preds: Sequence[Prediction]) -> str:
    arrays: list[np.ndarray] = []
    for p in preds:
        arrays += [
            p.masks,
            p.scores,
            p.low_res_logits,
            np.asarray([p.object_score_logits], np.float32),
        ]
    return _digest(arrays)


class Workload:
    """Everything the clients send: images, prompt sets and the plan (from ``LoadOptions``)."""

    def __init__(self, opts: LoadOptions) -> None:
        self.opts = opts
        self.images = make_images(opts)
        self.prompts = make_prompt_sets(self.images, opts)
        self.plan = make_plan(opts)

    def distinct(self) -> list[RequestSpec]:
        return sorted(
            {s for reqs in self.plan for s in reqs},
            key=lambda s: (s.kind, s.image, s.prompt_set, s.multimask),
        )
