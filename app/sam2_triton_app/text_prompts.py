"""``sam2-triton segment IMAGE --text "cat."``: the objects a text prompt names (Lang-SAM's
pipeline on the server, ``sam2_text``: Grounding DINO boxes, one SAM 2 mask per box), and the
text options that ``batch`` shares."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sam2_triton import text_spec, transforms
from sam2_triton.errors import InvalidInputError, SAM2TritonError
from sam2_triton.text import DEFAULT_TIMEOUT_S, LangSAM, TextSegmentation, check_text

from . import visualize


def threshold_arg(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def add_text_arguments(parser: argparse.ArgumentParser, title: str, text_help: str) -> None:
    """``--text`` and Lang-SAM's two thresholds (defaults None: see ``text_options``)."""
    group = parser.add_argument_group(title)
    group.add_argument("--text", default=None, metavar="PROMPT", help=text_help)
    group.add_argument(
        "--box-threshold",
        type=threshold_arg,
        default=None,
        metavar="T",
        help="keep a detected box when its best token probability is above T "
        f"(default {text_spec.BOX_THRESHOLD}, Lang-SAM's)",
    )
    group.add_argument(
        "--text-threshold",
        type=threshold_arg,
        default=None,
        metavar="T",
        help="a box's label: the prompt's tokens whose probability is above T "
        f"(default {text_spec.TEXT_THRESHOLD}, Lang-SAM's)",
    )


def text_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``{"text", "box_threshold", "text_threshold"}`` from ``add_text_arguments``' flags, the
    thresholds' defaults filled in; None without ``--text``. Raises InvalidInputError for a
    blank prompt, or a threshold given without ``--text``."""
    if args.text is None:
        given = [
            flag
            for flag, value in (
                ("--box-threshold", args.box_threshold),
                ("--text-threshold", args.text_threshold),
            )
            if value is not None
        ]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise InvalidInputError(f"{' and '.join(given)} {verb} with --text")
        return None
    return {
        "text": check_text(args.text, "--text"),
        "box_threshold": text_spec.BOX_THRESHOLD
        if args.box_threshold is None
        else args.box_threshold,
        "text_threshold": text_spec.TEXT_THRESHOLD
        if args.text_threshold is None
        else args.text_threshold,
    }


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    """``[x, y, w, h]`` of a bool ``[H, W]`` mask's pixels; None when it is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def draw_labels(picture: Image.Image, found: TextSegmentation) -> None:
    """Write ``label score`` at each detected box of ``found`` on ``picture`` (PIL RGB, in
    place): above the box's top-left corner (inside it when there is no room), on the box's
    colour (``visualize.overlay``'s palette order)."""
    draw = ImageDraw.Draw(picture)
    font = _font(max(12, round(min(picture.size) / 40)))
    for i, (label, score, box) in enumerate(zip(found.labels, found.scores, found.boxes)):
        caption = f"{label or '?'} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        w, h = right - left, bottom - top
        x, y = float(box[0]), float(box[1]) - h - 4
        if y < 0:  # no room above the box: inside it
            y = float(box[1]) + 2
        colour = visualize.PALETTE[i % len(visualize.PALETTE)]
        draw.rectangle([x, y, x + w + 4, y + h + 4], fill=colour)
        draw.text((x + 2 - left, y + 2 - top), caption, fill=(255, 255, 255), font=font)


def document(args: argparse.Namespace, found: TextSegmentation) -> dict[str, Any]:
    """The ``--json`` document of ``segment --text`` (``--rle`` adds each mask's COCO RLE)."""
    objects = []
    for i in range(len(found)):
        obj = {
            "object": i + 1,
            "label": found.labels[i],
            "score": float(found.scores[i]),
            "box_xyxy": [float(v) for v in found.boxes[i]],
            "mask_score": float(found.mask_scores[i]),
            "area": int(found.masks[i].sum()),
            "bbox_xywh": mask_bbox(found.masks[i]),
        }
        if args.rle:
            obj["rle"] = found.rles[i]
        objects.append(obj)
    return {
        "image": str(args.image),
        "width": found.width,
        "height": found.height,
        "text": found.text,
        "box_threshold": found.box_threshold,
        "text_threshold": found.text_threshold,
        "detector": found.detector,
        "model_fingerprint": found.model_fingerprint,
        "objects": objects,
    }


def run(args: argparse.Namespace) -> int:
    """Segment what ``args.text`` names in ``args.image``; returns the exit code."""
    from sam2_triton import SAM2Client

    if args.text is None:
        raise SystemExit("error: give --text PROMPT")
    if args.point or args.box or args.everything:
        raise SystemExit(
            "error: --text takes no --point, --box or --everything: the detector finds the "
            "boxes; segment with either a text prompt or clicks/boxes"
        )
    if args.multimask != "auto":
        raise SystemExit(
            "error: --multimask goes with --point/--box; --text predicts one mask per detected "
            "box (multimask off, as Lang-SAM)"
        )
    if not (args.output or args.overlay or args.json):
        print(
            "note: no --output/--overlay/--json given; printing the objects only", file=sys.stderr
        )
    try:
        options = text_options(args) or {}
        timeout = args.timeout or DEFAULT_TIMEOUT_S
        with SAM2Client(args.url, args.protocol, timeout_s=timeout) as client:
            found = LangSAM(client).segment(
                args.image, options["text"], options["box_threshold"], options["text_threshold"]
            )
        image01 = transforms.load_image(args.image) if args.overlay else None
    except SAM2TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hw = (found.height, found.width)
    print(f"{len(found)} objects for {found.text!r}")
    for i in range(len(found)):
        print(
            f"object {i + 1}: {found.labels[i]!r} score {found.scores[i]:.3f}, mask score "
            f"{found.mask_scores[i]:.3f}, area {int(found.masks[i].sum())} px"
        )
    masks = list(found.masks)
    if args.output:
        visualize.label_image(masks, hw).save(args.output)
    if image01 is not None:
        rgb = np.round(image01 * 255).astype(np.uint8)
        picture = visualize.overlay(rgb, masks, boxes=found.boxes)
        draw_labels(picture, found)
        picture.save(args.overlay)
    if args.json:
        args.json.write_text(json.dumps(document(args, found), indent=2) + "\n")
    for path in (args.output, args.overlay, args.json):
        if path:
            print(f"wrote {path}")
    return 0
