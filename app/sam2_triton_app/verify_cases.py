"""The fixed, seeded images and prompts of ``sam2-triton verify``, how two answers compare, and
the report as text.

Everything here is deterministic: the same images and prompts on every run and every machine,
so that numbers from two deployments can be put side by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from sam2_triton import Prediction, Prompt, spec
from sam2_triton.samples import sample_image

#: (H, W) of the full set: landscape, portrait, a wide strip, a tiny image.
IMAGE_SHAPES: tuple[tuple[int, int], ...] = ((480, 640), (1200, 900), (333, 1024), (64, 96))
#: ``--quick``: one ordinary picture and the tiny one.
QUICK_SHAPES: tuple[tuple[int, int], ...] = ((480, 640), (64, 96))
#: Prompt kinds, in run order ("refinement" feeds back the best low-res mask of "click").
KINDS: tuple[str, ...] = (
    "click",
    "box",
    "box+negative",
    "clicks",
    "small box",
    "edge click",
    "refinement",
)
SEED = 2024


def case_image(index: int, hw: tuple[int, int]) -> np.ndarray:
    """Image ``index`` of the set, ``[H, W, 3]`` uint8: the SDK's sample scene for even indices,
    seeded random shapes on a gradient with noise for odd ones."""
    h, w = hw
    if index % 2 == 0:
        return sample_image(h, w)
    rng = np.random.default_rng(SEED + index)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), 1 - xx / max(w - 1, 1)], axis=-1)
    img = Image.fromarray((base * 180 + 40).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)], fill=colour)
    arr = np.asarray(img, np.float32) + rng.normal(0, 6, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PromptCase:
    """One prompt of the set; ``refines`` cases take the best low-res mask of the previous
    "click" case (of the same side: server or reference) as ``mask_input``."""

    kind: str
    multimask: bool
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    refines: bool = False

    def prompt(self, mask_input: np.ndarray | None = None) -> Prompt:
        """The SDK prompt, with ``mask_input`` for a refinement."""
        return Prompt(
            point_coords=np.array(self.points, np.float64) if self.points else None,
            point_labels=np.array(self.labels, np.int64) if self.points else None,
            box=np.array(self.box, np.float64) if self.box is not None else None,
            mask_input=mask_input,
        )


def prompt_cases(index: int, hw: tuple[int, int]) -> list[PromptCase]:
    """The seeded prompts of image ``index``: every kind of ``KINDS``, multimask on and off."""
    h, w = hw
    rng = np.random.default_rng(SEED * 7 + index)

    def point(lo: float = 0.15, hi: float = 0.85) -> tuple[float, float]:
        return (float(rng.uniform(lo, hi) * w), float(rng.uniform(lo, hi) * h))

    def box(lo: float, hi: float) -> tuple[float, float, float, float]:
        bw, bh = rng.uniform(lo, hi) * w, rng.uniform(lo, hi) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        return (float(x0), float(y0), float(x0 + bw), float(y0 + bh))

    click = point()
    big = box(0.25, 0.6)
    inside = (big[0] + 0.5 * (big[2] - big[0]), big[1] + 0.5 * (big[3] - big[1]))
    centre = point(0.3, 0.7)
    spread = [
        (min(max(centre[0] + dx * w, 0.0), w), min(max(centre[1] + dy * h, 0.0), h))
        for dx, dy in rng.uniform(-0.12, 0.12, (3, 2))
    ]
    side = max(2.0, 0.03 * min(h, w))  # a small object: a few pixels
    sx, sy = rng.uniform(0, w - side), rng.uniform(0, h - side)
    small = (float(sx), float(sy), float(sx + side), float(sy + side))
    edge_x, edge_y = point(0.05, 0.95)
    edge = [(0.5, edge_y), (w - 0.5, edge_y), (edge_x, 0.5), (edge_x, h - 0.5)]
    edge_click = edge[int(rng.integers(0, 4))]
    extra = point()
    cases = []
    for multimask in (True, False):
        cases += [
            PromptCase("click", multimask, (click,), (1,)),
            PromptCase("box", multimask, box=big),
            PromptCase("box+negative", multimask, (inside,), (0,), big),
            PromptCase("clicks", multimask, (*spread, point()), (1, 1, 1, 0)),
            PromptCase("small box", multimask, box=small),
            PromptCase("edge click", multimask, (edge_click,), (1,)),
            PromptCase("refinement", multimask, (click, extra), (1, 1), refines=True),
        ]
    return cases


@dataclass
class CaseResult:
    """The served answer to one prompt against the reference's."""

    image: tuple[int, int]
    kind: str
    multimask: bool
    ious: list[float] = field(default_factory=list)
    max_logit_error: float = 0.0
    max_score_error: float = 0.0
    object_score_error: float = 0.0
    mask_fraction: float = 0.0  # mean share of pixels in the reference masks
    problem: str | None = None  # e.g. a different number of masks

    def to_json(self) -> dict:
        """This result as plain JSON values."""
        return {
            "image": list(self.image),
            "kind": self.kind,
            "multimask": self.multimask,
            "ious": [round(v, 7) for v in self.ious],
            "max_logit_error": self.max_logit_error,
            "max_score_error": self.max_score_error,
            "object_score_error": self.object_score_error,
            "mask_fraction": round(self.mask_fraction, 5),
            "problem": self.problem,
        }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty."""
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def compare(
    served: Prediction, reference: Prediction, image: tuple[int, int], case: PromptCase
) -> CaseResult:
    """Per-mask IoU and the largest low-res logit, IoU-score and object-score differences."""
    result = CaseResult(image, case.kind, case.multimask)
    if served.masks.shape != reference.masks.shape:
        result.problem = (
            f"served masks {list(served.masks.shape)} != reference {list(reference.masks.shape)}"
        )
        result.ious = [0.0] * max(len(reference.masks), 1)
        return result
    result.ious = [mask_iou(s, r) for s, r in zip(served.masks, reference.masks)]
    result.max_logit_error = float(np.max(np.abs(served.low_res_logits - reference.low_res_logits)))
    result.max_score_error = float(np.max(np.abs(served.scores - reference.scores)))
    result.object_score_error = abs(
        float(served.object_score_logits) - float(reference.object_score_logits)
    )
    result.mask_fraction = float(np.mean(reference.masks))
    return result


def summarize(results: Iterable[CaseResult]) -> dict:
    """Counts, min/mean IoU and the largest errors over ``results``."""
    results = list(results)
    ious = [v for r in results for v in r.ious]
    return {
        "prompts": len(results),
        "masks": len(ious),
        "min_iou": min(ious) if ious else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "max_logit_error": max((r.max_logit_error for r in results), default=0.0),
        "max_score_error": max((r.max_score_error for r in results), default=0.0),
        "max_object_score_error": max((r.object_score_error for r in results), default=0.0),
        "mean_mask_fraction": float(np.mean([r.mask_fraction for r in results]))
        if results
        else None,
        "problems": [r.problem for r in results if r.problem],
    }


def by_kind(results: list[CaseResult]) -> list[dict]:
    """``summarize`` per (kind, multimask), in ``KINDS`` order, multimask on first."""
    rows = []
    for kind in KINDS:
        for multimask in (True, False):
            group = [r for r in results if r.kind == kind and r.multimask == multimask]
            if group:
                rows.append({"kind": kind, "multimask": multimask, **summarize(group)})
    return rows


def by_image(results: list[CaseResult]) -> list[dict]:
    """``summarize`` per image shape, in run order."""
    shapes = list(dict.fromkeys(r.image for r in results))
    return [{"image": list(hw), **summarize(r for r in results if r.image == hw)} for hw in shapes]


def _fmt(value: float | None, spec_: str) -> str:
    return "-" if value is None else format(value, spec_)


def format_report(report: dict) -> str:
    """The report as text tables."""
    lines = [
        f"sam2-triton verify: {report['url']} ({report['protocol']}) vs onnxruntime FP32 (CPU, "
        f"in-process) on {report['model_repository']}"
    ]
    dep = report["deployment"]
    for model in (spec.ENCODER_MODEL, spec.DECODER_MODEL):
        m = dep[model]
        trt = {None: "unknown", False: "off"}.get(m["tensorrt"], f"on, {m['precision_mode']}")
        kinds = ",".join(m["instance_kinds"]) if m["instance_kinds"] else "unknown"
        lines.append(
            f"  {model}: backend {m['backend'] or 'unknown'}, TensorRT {trt}, instances {kinds}"
        )
    lines.append(
        f"  image dtype {dep['image_dtype']}, feature dtype {dep['feature_dtype']}, decoded "
        f"{'through sam2_session' if report['sessions'] else 'with features sent per click'}"
    )
    fp = report["fingerprint"]
    same = "same weights" if fp["match"] else "DIFFERENT WEIGHTS"
    lines.append(f"  fingerprint: server {fp['server']}, local {fp['local']} ({same})")
    if report["by_kind"]:
        head = ("prompt kind", "multimask", "masks", "min IoU", "mean IoU", "max logit err")
        rows = [(*head, "max score err")]
        for r in report["by_kind"]:
            rows.append(
                (
                    r["kind"],
                    "on" if r["multimask"] else "off",
                    str(r["masks"]),
                    _fmt(r["min_iou"], ".6f"),
                    _fmt(r["mean_iou"], ".6f"),
                    _fmt(r["max_logit_error"], ".1e"),
                    _fmt(r["max_score_error"], ".1e"),
                )
            )
        rows.append(("",) * 7)
        for r in report["by_image"]:
            rows.append(
                (
                    f"image {r['image'][0]}x{r['image'][1]}",
                    "",
                    str(r["masks"]),
                    _fmt(r["min_iou"], ".6f"),
                    _fmt(r["mean_iou"], ".6f"),
                    _fmt(r["max_logit_error"], ".1e"),
                    _fmt(r["max_score_error"], ".1e"),
                )
            )
        o = report["overall"]
        rows.append(
            (
                "all",
                "",
                str(o["masks"]),
                _fmt(o["min_iou"], ".6f"),
                _fmt(o["mean_iou"], ".6f"),
                _fmt(o["max_logit_error"], ".1e"),
                _fmt(o["max_score_error"], ".1e"),
            )
        )
        widths = [max(len(row[i]) for row in rows) for i in range(7)]
        lines.append("")
        for row in rows:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:])]
            lines.append("  ".join(cells).rstrip())
    g = report["gate"]
    lines.append("")
    verdict = "PASS" if g["passed"] else "FAIL"
    lines.append(
        f"{verdict}  (gate: every mask IoU >= {g['min_iou']}, mean IoU >= {g['min_mean_iou']}, "
        "same fingerprint)"
    )
    lines += [f"  failed: {m}" for m in g["messages"]]
    if report["not_checked"]:
        lines.append("not checked:")
        lines += [f"  - {n}" for n in report["not_checked"]]
    return "\n".join(lines)
