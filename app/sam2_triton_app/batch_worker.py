"""One image of ``sam2-triton batch``: load, encode, decode its prompts (or segment everything,
or segment what ``--text`` names), turn the masks into COCO result records (RLE) and, optionally, a label PNG.

Runs in worker threads; everything here is per image, nothing is shared but the clients.
Errors come back as an ``Outcome`` (typed by the SDK's exception classes), never raised:

- ``failed``: the image or its prompts are bad (``InvalidImageError``, ``InvalidPromptError``,
  ``InferenceError``, ...): recorded, and a resumed run does not try again;
- ``retry``: the server could not answer (``ServerUnavailableError``, ``ServerBusyError``,
  ``RequestTimeoutError``, ``ModelNotReadyError``) after the client's own retries: recorded,
  and a rerun tries again.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import Prompt, SAM2AutomaticMaskGenerator, SAM2Client, transforms
from sam2_triton.errors import (
    ClientClosedError,
    ModelNotReadyError,
    RequestTimeoutError,
    SAM2TritonError,
    ServerBusyError,
    ServerUnavailableError,
)
from sam2_triton.text import LangSAM, TextSegmentation

from . import visualize
from .batch_inputs import Task

#: errors after which the same image may well succeed later: the image is not marked done
TRANSIENT = (
    ServerUnavailableError,
    ServerBusyError,
    RequestTimeoutError,
    ModelNotReadyError,
    ClientClosedError,
)


@dataclass(frozen=True)
class Options:
    """How every image is segmented (all of it is part of the journal's settings)."""

    multimask: str = "auto"  # auto: three candidates only for a single click, as SAM 2 advises
    category_id: int = 1  # for objects without their own
    png_dir: Path | None = None
    everything: dict[str, Any] = field(default_factory=dict)  # SAM2AutomaticMaskGenerator kwargs
    text: dict[str, Any] | None = None  # {"text", "box_threshold", "text_threshold"} or None


@dataclass
class Outcome:
    """What became of one image: ``status`` ok/failed/retry, its records or its error."""

    status: str
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    message: str | None = None

    @property
    def server_fault(self) -> bool:
        return self.status == "retry"

    def payload(self) -> dict[str, Any]:
        if self.status == "ok":
            return {"records": self.records}
        return {"error": self.error, "message": self.message}


def rle_record(mask: np.ndarray) -> tuple[dict[str, Any], list[float], int]:
    """COCO RLE ``{"size", "counts"}``, the mask's ``[x, y, w, h]`` box and its area."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = int(mask_utils.area(rle))
    return (
        {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        bbox,
        area,
    )


def _multimask(obj: dict[str, Any], mode: str) -> bool:
    if mode != "auto":
        return mode == "on"
    points = obj.get("points")
    return obj.get("box") is None and isinstance(points, list) and len(points) == 1


def _prompted(
    task: Task, client: SAM2Client, options: Options
) -> tuple[list[dict[str, Any]], list[np.ndarray], tuple[int, int]]:
    image01 = transforms.load_image(task.path)
    embedding = client.encode(image01)
    objects = list(task.objects or ())
    best: list[np.ndarray | None] = [None] * len(objects)
    scores = [0.0] * len(objects)
    for flag in (True, False):  # one decode call per multimask setting (usually just one)
        chosen = [i for i, o in enumerate(objects) if _multimask(o, options.multimask) == flag]
        if not chosen:
            continue
        prompts = [
            Prompt(
                point_coords=objects[i].get("points"),
                point_labels=objects[i].get("labels"),
                box=objects[i].get("box"),
            )
            for i in chosen
        ]
        predictions = client.decode(embedding, prompts, multimask_output=flag)
        for i, pred in zip(chosen, predictions):
            k = int(np.argmax(pred.scores))
            best[i], scores[i] = pred.masks[k], float(pred.scores[k])
    records = []
    for i, (obj, mask) in enumerate(zip(objects, best)):
        segmentation, bbox, area = rle_record(mask)
        records.append(
            {
                "image_id": task.image_id,
                "file_name": task.file_name,
                "category_id": obj.get("category_id", options.category_id),
                "bbox": bbox,
                "area": area,
                "score": obj.get("score", scores[i]),
                "predicted_iou": scores[i],
                "segmentation": segmentation,
                "prompt_index": i,
            }
        )
    return records, [m for m in best if m is not None], embedding.orig_hw


def _everything(
    task: Task, client: SAM2Client, options: Options
) -> tuple[list[dict[str, Any]], list[np.ndarray], tuple[int, int]]:
    """SAM 2's automatic masks (``SAM2AutomaticMaskGenerator``, one ``sam2_everything`` request
    with the file's own bytes) as COCO result records."""
    generator = SAM2AutomaticMaskGenerator(client, output_mode="coco_rle", **options.everything)
    found = generator.generate(Path(task.path))
    if found:
        hw = tuple(int(v) for v in found[0]["segmentation"]["size"])
    else:
        hw = transforms.load_image(task.path).shape[:2]
    records, masks = [], []
    for i, item in enumerate(found):
        seg = item["segmentation"]
        records.append(
            {
                "image_id": task.image_id,
                "file_name": task.file_name,
                "category_id": options.category_id,
                "bbox": [float(v) for v in item["bbox"]],
                "area": int(item["area"]),
                "score": float(item["predicted_iou"]),
                "predicted_iou": float(item["predicted_iou"]),
                "stability_score": float(item["stability_score"]),
                "point_coords": item["point_coords"],
                "crop_box": item["crop_box"],
                "segmentation": seg,
                "prompt_index": i,
            }
        )
        if options.png_dir is not None:
            from pycocotools import mask as mask_utils

            masks.append(mask_utils.decode({**seg, "counts": seg["counts"].encode()}).astype(bool))
    return records, masks, (int(hw[0]), int(hw[1]))


def text_records(task: Task, found: TextSegmentation, category_id: int) -> list[dict[str, Any]]:
    """COCO result records of what a text prompt found: ``score`` the detector's,
    ``predicted_iou`` SAM 2's, ``label`` the phrase, ``box_xyxy`` the detected box,
    ``bbox``/``area`` of the mask, ``segmentation`` the server's RLE."""
    from pycocotools import mask as mask_utils

    records = []
    for i, rle in enumerate(found.rles):
        coco = {**rle, "counts": rle["counts"].encode()}
        records.append(
            {
                "image_id": task.image_id,
                "file_name": task.file_name,
                "category_id": category_id,
                "bbox": [float(v) for v in mask_utils.toBbox(coco)],
                "area": int(mask_utils.area(coco)),
                "score": float(found.scores[i]),
                "predicted_iou": float(found.mask_scores[i]),
                "label": found.labels[i],
                "box_xyxy": [float(v) for v in found.boxes[i]],
                "segmentation": rle,
                "prompt_index": i,
            }
        )
    return records


def _text(
    task: Task, client: SAM2Client, options: Options
) -> tuple[list[dict[str, Any]], list[np.ndarray], tuple[int, int]]:
    """What ``--text`` names (``LangSAM.segment``: one ``sam2_text`` request with the file's
    own bytes) as COCO result records (``text_records``)."""
    text = options.text or {}
    with LangSAM(client) as model:
        found = model.segment(
            Path(task.path), text["text"], text["box_threshold"], text["text_threshold"]
        )
    records = text_records(task, found, options.category_id)
    return records, list(found.masks), (found.height, found.width)


def png_path(png_dir: Path, task: Task) -> Path:
    """``<png_dir>/<image_id>.png`` (image ids are unique per input)."""
    return png_dir / f"{task.image_id}.png"


def write_png(path: Path, masks: list[np.ndarray], hw: tuple[int, int]) -> None:
    """The label picture (0 = background, k = object k) written atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        visualize.label_image(masks, hw).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def segment_task(task: Task, client: SAM2Client, url: str, options: Options) -> Outcome:
    """Segment one task; every SDK error becomes the Outcome's typed error. OSError from
    writing the PNG propagates (a full disk stops the run)."""
    if task.problem is not None:
        return Outcome("failed", error=task.problem[0], message=task.problem[1])
    try:
        if options.text is not None:
            records, masks, hw = _text(task, client, options)
        elif task.objects is None:
            records, masks, hw = _everything(task, client, options)
        else:
            records, masks, hw = _prompted(task, client, options)
    except TRANSIENT as exc:
        return Outcome("retry", error=type(exc).__name__, message=f"{url}: {exc}")
    except SAM2TritonError as exc:
        return Outcome("failed", error=type(exc).__name__, message=str(exc))
    if options.png_dir is not None:
        write_png(png_path(options.png_dir, task), masks, hw)
    return Outcome("ok", records=records)
