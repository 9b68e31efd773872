"""``sam2-triton segment``: segment one image from the command line through a Triton server:
the objects given by clicks and boxes, everything (``--everything``, see ``everything``), or what
a text prompt names (``--text``, see ``text_prompts``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sam2_triton import Prompt, transforms
from sam2_triton.errors import InvalidInputError, SAM2TritonError

from . import everything, text_prompts, visualize


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in n:
        raise argparse.ArgumentTypeError(
            f"{what} must be {' or '.join(map(str, n))} comma-separated numbers, got {text!r}"
        )
    return values


def point_arg(text: str) -> list[float]:
    """``x,y`` or ``x,y,label`` (label 1 = foreground, the default; 0 = background)."""
    values = _floats(text, (2, 3), "--point")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"--point label must be 0 or 1, got {text!r}")
    return values if len(values) == 3 else [*values, 1.0]


def box_arg(text: str) -> list[float]:
    """``x0,y0,x1,y1`` in pixels."""
    return _floats(text, (4,), "--box")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the segment options on ``parser``."""
    parser.add_argument("image", type=Path, help="image file (PNG, JPEG, ...)")
    parser.add_argument(
        "--point",
        type=point_arg,
        action="append",
        default=[],
        metavar="X,Y[,L]",
        help="a click in pixels; label 1 (default) = object, 0 = background. "
        "Repeatable; all points belong to one object",
    )
    parser.add_argument(
        "--box",
        type=box_arg,
        action="append",
        default=[],
        metavar="X0,Y0,X1,Y1",
        help="a box in pixels; repeatable: each box is one object (points can "
        "be combined with at most one box)",
    )
    parser.add_argument(
        "--everything",
        action="store_true",
        help="no prompts: every object (SAM 2's automatic mask generator, one request); "
        "--json writes a COCO dataset, --overlay one colour per mask",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="Triton address host:port (default localhost:8001 for gRPC, localhost:8000 for HTTP)",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="request timeout, seconds (default 120; 600 with --everything or --text: one "
        "request does the whole image)",
    )
    parser.add_argument(
        "--multimask",
        choices=("auto", "on", "off"),
        default="auto",
        help="predict 3 candidate masks and keep the best: auto = only for a "
        "single click (ambiguous), as SAM 2 recommends (not with --text: one mask per box)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="mask PNG: 255 = object (one object), k = object k (several, up to 254)",
    )
    parser.add_argument("--overlay", type=Path, help="picture of the masks over the image")
    parser.add_argument(
        "--json",
        type=Path,
        help="scores, areas, boxes (and RLE) as JSON; with --everything a COCO dataset (RLE "
        "masks); with --text also each object's label and detected box",
    )
    parser.add_argument(
        "--rle", action="store_true", help="add COCO RLE masks to --json (needs pycocotools)"
    )
    everything.add_generator_arguments(parser, "--everything options")
    text_prompts.add_text_arguments(
        parser,
        "text prompt (needs a server exported with --detector)",
        "segment what the text names, as Lang-SAM does: Grounding DINO finds the boxes, SAM 2 "
        "masks each one (e.g. 'cat. remote control.'; a '.' is appended unless the prompt ends "
        "with one). Not with --point, --box or --everything",
    )


def _prompts(args: argparse.Namespace) -> list[Prompt]:
    points = np.array([p[:2] for p in args.point], np.float64).reshape(-1, 2)
    labels = np.array([int(p[2]) for p in args.point], np.int64)
    if not args.point and not args.box:
        raise SystemExit("error: give at least one --point or --box")
    if len(args.box) > 1 and args.point:
        raise SystemExit(
            "error: points can be combined with at most one --box "
            f"(got {len(args.box)} boxes); segment each object separately"
        )
    if len(args.box) > 1:
        return [Prompt(box=np.array(b)) for b in args.box]
    return [
        Prompt(
            point_coords=points if len(points) else None,
            point_labels=labels if len(points) else None,
            box=np.array(args.box[0]) if args.box else None,
        )
    ]


def _rle(mask: np.ndarray) -> dict:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise SystemExit("error: --rle needs pycocotools: pip install 'sam2-triton[rle]'") from exc
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def run(args: argparse.Namespace) -> int:
    """Segment ``args.image``; returns the exit code."""
    from sam2_triton import SAM2Client

    if args.text is not None:
        return text_prompts.run(args)
    try:
        text_prompts.text_options(args)  # thresholds without --text are refused
    except InvalidInputError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.everything:
        if args.point or args.box:
            raise SystemExit("error: --everything takes no --point or --box")
        return everything.run(args)
    prompts = _prompts(args)
    if not (args.output or args.overlay or args.json):
        print("note: no --output/--overlay/--json given; printing scores only", file=sys.stderr)
    multimask = {"on": True, "off": False}.get(
        args.multimask, len(prompts) == 1 and prompts[0].box is None and len(args.point) == 1
    )
    try:
        image01 = transforms.load_image(args.image)
        with SAM2Client(args.url, args.protocol, timeout_s=args.timeout or 120.0) as client:
            embedding = client.encode(image01)
            predictions = client.decode(embedding, prompts, multimask_output=multimask)
    except SAM2TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    h, w = embedding.orig_hw
    best = [p.masks[int(np.argmax(p.scores))] for p in predictions]
    objects = []
    for i, (pred, mask) in enumerate(zip(predictions, best)):
        ys, xs = np.nonzero(mask)
        obj = {
            "object": i + 1,
            "score": float(pred.scores.max()),
            "area": int(mask.sum()),
            "bbox_xywh": [
                int(xs.min()),
                int(ys.min()),
                int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1),
            ]
            if len(xs)
            else None,
            "object_score_logit": pred.object_score_logits,
        }
        if args.rle:
            obj["rle"] = _rle(mask)
        objects.append(obj)
        print(f"object {i + 1}: score {obj['score']:.3f}, area {obj['area']} px")
    if args.output:
        visualize.label_image(best, (h, w)).save(args.output)
    if args.overlay:
        rgb = np.round(image01 * 255).astype(np.uint8)
        points = np.array([p[:2] for p in args.point]) if args.point else None
        labels = np.array([p[2] for p in args.point]) if args.point else None
        boxes = np.array(args.box) if args.box else None
        visualize.overlay(rgb, best, points=points, labels=labels, boxes=boxes).save(args.overlay)
    if args.json:
        result = {
            "image": str(args.image),
            "width": w,
            "height": h,
            "multimask_output": multimask,
            "objects": objects,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for path in (args.output, args.overlay, args.json):
        if path:
            print(f"wrote {path}")
    return 0
