"""``sam2-triton segment IMAGE --everything``: SAM 2's automatic masks of one image, as COCO JSON
and a picture with one colour per mask; and the generator options that ``batch`` shares."""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import transforms
from sam2_triton.amg import GeneratorOptions
from sam2_triton.errors import InvalidInputError, SAM2TritonError

from . import visualize

FLAGS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object, got invalid JSON: {exc}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_generator_arguments(parser: argparse.ArgumentParser, title: str) -> None:
    """SAM2AutomaticMaskGenerator's parameters: three common ones and any as JSON."""
    group = parser.add_argument_group(title)
    group.add_argument(
        "--points-per-side",
        type=positive_int,
        default=None,
        metavar="N",
        help="grid of N x N clicks (default: SAM2AutomaticMaskGenerator's, 32)",
    )
    group.add_argument(
        "--pred-iou-thresh", type=float, default=None, metavar="T", help="keep masks above T"
    )
    group.add_argument(
        "--stability-score-thresh",
        type=float,
        default=None,
        metavar="T",
        help="keep masks whose stability score is at least T",
    )
    group.add_argument(
        "--everything-options",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="any SAM2AutomaticMaskGenerator parameters as a JSON object, e.g. "
        '\'{"points_per_side": 16, "crop_n_layers": 1}\' (the three flags above override it)',
    )


def generator_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The generator's keyword arguments from ``add_generator_arguments``' flags, checked
    (``InvalidInputError`` names a bad parameter)."""
    kwargs = dict(args.everything_options or {})
    kwargs.update({n: getattr(args, n) for n in FLAGS if getattr(args, n) is not None})
    GeneratorOptions.from_mapping(kwargs, "segment everything options")
    return kwargs


def colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours (golden-ratio hue steps), the first from the palette."""
    out = list(visualize.PALETTE[:n])
    for i in range(len(out), n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def coco_document(
    records: list[dict[str, Any]], image: Path, hw: tuple[int, int]
) -> dict[str, Any]:
    """A COCO dataset dict (``pycocotools.coco.COCO`` loads it): one image, one category, the
    masks as annotations with SAM 2's scores."""
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": r["segmentation"],
            "area": r["area"],
            "bbox": r["bbox"],
            "iscrowd": 0,
            "score": r["predicted_iou"],
            "predicted_iou": r["predicted_iou"],
            "stability_score": r["stability_score"],
            "point_coords": r["point_coords"],
            "crop_box": r["crop_box"],
        }
        for i, r in enumerate(records)
    ]
    return {
        "images": [{"id": 1, "file_name": str(image), "height": hw[0], "width": hw[1]}],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": annotations,
    }


def run(args: argparse.Namespace) -> int:
    """Segment everything in ``args.image``; returns the exit code."""
    from pycocotools import mask as coco_mask

    from sam2_triton import SAM2AutomaticMaskGenerator, SAM2Client
    from sam2_triton import generator as generator_module

    try:
        kwargs = generator_kwargs(args)
        timeout = args.timeout or generator_module.DEFAULT_TIMEOUT_S
        with SAM2Client(args.url, args.protocol, timeout_s=timeout) as client:
            generator = SAM2AutomaticMaskGenerator(client, output_mode="coco_rle", **kwargs)
            records = generator.generate(args.image)
        image01 = transforms.load_image(args.image)
    except (SAM2TritonError, InvalidInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hw = (int(image01.shape[0]), int(image01.shape[1]))
    print(f"{len(records)} masks")
    if args.json:
        args.json.write_text(json.dumps(coco_document(records, args.image, hw)) + "\n")
    if args.overlay or args.output:
        order = sorted(range(len(records)), key=lambda i: -records[i]["area"])  # small on top
        rles = [
            {**records[i]["segmentation"], "counts": records[i]["segmentation"]["counts"].encode()}
            for i in order
        ]
        stack = coco_mask.decode(rles) if rles else np.zeros((*hw, 0), np.uint8)
        masks = [stack[:, :, k].astype(bool) for k in range(stack.shape[2])]
        if args.overlay:
            rgb = np.round(image01 * 255).astype(np.uint8)
            picture = visualize.overlay(rgb, masks, colors=colours(len(masks)))
            picture.save(args.overlay)
        if args.output:
            visualize.label_image(masks, hw).save(args.output)
    for path in (args.output, args.overlay, args.json):
        if path:
            print(f"wrote {path}")
    return 0
