"""What ``sam2-triton batch`` segments: images and their prompts, read as a stream of tasks.

Inputs (see ``docs/batch.md``):

- image files, folders (searched recursively, sorted) and glob patterns: no prompts, so each
  image is segmented everything;
- a JSON Lines manifest (``.jsonl``/``.ndjson``): one image per line,
  ``{"image": PATH, "points": [[x, y], ...], "labels": [1, ...], "box": [x0, y0, x1, y1]}`` (one
  object), ``"boxes": [[...], ...]`` (one object per box) or ``"objects": [{...}, ...]`` (each
  with ``points``/``labels``/``box``, optional ``category_id``/``score``); optional
  ``image_id``, ``category_id``, ``score``; no prompts at all = segment everything;
- a COCO JSON (``.json``): detections ``{"image_id", "bbox": [x, y, w, h], "category_id",
  "score"}`` (each box one object) either as the ``annotations`` of a dict that also has the
  ``images`` list (``id`` -> ``file_name``), or as a plain list with ``--coco-images`` naming the
  file that holds the ``images`` list. Images without detections are segmented everything.

Relative image paths are resolved against ``--images-dir`` (default: the manifest's folder, or
the folder of the file holding the COCO ``images`` list).

Each task has a **key**: sha256 over the image's absolute path, its size and modification time
(``st_size``, ``st_mtime_ns``: a cheap content fingerprint, no reading of pixels), its image id
and its prompts. A resumed run skips the keys its journal records as done; a changed file gets a
new key and is segmented again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: file name extensions a folder or glob picks up (what ``sam2_triton.transforms`` decodes)
IMAGE_EXTENSIONS = frozenset(
    ".png .jpg .jpeg .jpe .mpo .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .tga .avif".split()
)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
LINE_KEYS = frozenset(
    {"image", "image_id", "points", "labels", "box", "boxes", "objects", "category_id", "score"}
)
OBJECT_KEYS = frozenset({"points", "labels", "box", "category_id", "score"})
MANIFEST_ERROR = "ManifestError"  # the error type of a manifest line that cannot be read


class BatchInputError(Exception):
    """The inputs cannot be read at all (missing folder, unparsable COCO file, ...): the run
    stops before it starts, with this message."""


@dataclass(frozen=True)
class Task:
    """One image to segment.

    ``objects``: the prompts, each a dict with any of ``points``, ``labels``, ``box`` (xyxy
    pixels) and optional ``category_id``/``score`` (kept in the output), exactly as read (the
    SDK validates them when the image is segmented); ``None`` = segment everything.
    ``problem``: ``(error type, message)`` when the manifest entry itself is unusable; the task
    then becomes a failure record without touching a server.
    """

    key: str
    image_id: int | str
    file_name: str
    path: str
    objects: tuple[dict[str, Any], ...] | None
    problem: tuple[str, str] | None = None


def fingerprint(path: str) -> dict[str, int] | None:
    """``{"size", "mtime_ns"}`` of ``path``; None when it cannot be stat'ed (the task then
    fails when it is segmented, with the SDK's message)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def make_task(
    image_id: int | str,
    file_name: str,
    path: str,
    objects: Sequence[dict[str, Any]] | None,
    problem: tuple[str, str] | None = None,
) -> Task:
    path = os.path.abspath(path)
    objs = None if objects is None else tuple(objects)
    identity = {
        "path": path,
        "file": fingerprint(path),
        "image_id": image_id,
        "objects": objs,
        "problem": problem,
    }
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return Task(hashlib.sha256(blob).hexdigest()[:40], image_id, file_name, path, objs, problem)


# --- images: files, folders, globs ----------------------------------------------------------------
def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _folder(root: str) -> list[tuple[str, str]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if _is_image(name) and not name.startswith("."):
                path = os.path.join(dirpath, name)
                found.append((os.path.relpath(path, root), path))
    return sorted(found)


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def image_paths(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """``(file_name, path)`` of every image named by files, folders and glob patterns, in the
    order given (folders and globs sorted). Raises BatchInputError for a name that matches
    nothing."""
    found: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            inside = _folder(item)
            if not inside:
                raise BatchInputError(
                    f"folder {item!r} holds no images (looked for "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            found += inside
        elif os.path.isfile(item):
            found.append((item, item))
        elif _has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise BatchInputError(f"glob pattern {item!r} matches no files")
            found += [(p, p) for p in matches]
        else:
            raise BatchInputError(f"input {item!r} does not exist (file, folder or glob pattern)")
    return found


def _image_tasks(inputs: Sequence[str]) -> Iterator[Task]:
    for i, (file_name, path) in enumerate(image_paths(inputs), start=1):
        yield make_task(i, file_name, path, None)


# --- JSON Lines ---------------------------------------------------------------------------------
def _line_objects(line: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The objects of one manifest line (None: no prompts, segment everything)."""
    unknown = sorted(set(line) - LINE_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; expected some of {sorted(LINE_KEYS)}")
    shared = {k: line[k] for k in ("category_id", "score") if k in line}
    objects: list[dict[str, Any]] = []
    top = {k: line[k] for k in ("points", "labels", "box") if k in line}
    if top:
        objects.append({**top, **shared})
    if "boxes" in line:
        if not isinstance(line["boxes"], list):
            raise ValueError(f"'boxes' must be a list of [x0, y0, x1, y1], got {line['boxes']!r}")
        objects += [{"box": b, **shared} for b in line["boxes"]]
    if "objects" in line:
        if not isinstance(line["objects"], list) or not all(
            isinstance(o, dict) for o in line["objects"]
        ):
            raise ValueError("'objects' must be a list of objects like {\"box\": [...]}")
        for j, obj in enumerate(line["objects"]):
            bad = sorted(set(obj) - OBJECT_KEYS)
            if bad:
                raise ValueError(
                    f"objects[{j}] has unknown key(s) {bad}; expected some of {sorted(OBJECT_KEYS)}"
                )
            objects.append({**shared, **obj})
    if not objects and ("objects" in line or "boxes" in line):
        raise ValueError("'objects'/'boxes' is empty: give prompts, or leave it out to segment "
                         "everything")  # fmt: skip
    return objects or None


def _jsonl_tasks(manifest: str, images_dir: str | None) -> Iterator[Task]:
    base = images_dir or os.path.dirname(os.path.abspath(manifest))
    try:
        fp = open(manifest, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise BatchInputError(f"cannot read manifest {manifest!r}: {exc.strerror}") from exc
    with fp:
        number = 0
        for lineno, text in enumerate(fp, start=1):
            if not text.strip():
                continue
            number += 1
            where = f"{manifest}:{lineno}"
            try:
                line = json.loads(text)
                if not isinstance(line, dict) or not isinstance(line.get("image"), str):
                    raise ValueError('expected an object with "image": "path/to/file"')
                objects = _line_objects(line)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                yield make_task(
                    number, where, where, None, (MANIFEST_ERROR, f"{where}: {exc}")
                )  # fmt: skip
                continue
            image_id = line.get("image_id", number)
            path = os.path.join(base, line["image"])
            yield make_task(image_id, line["image"], path, objects)


def count_lines(manifest: str) -> int:
    """Non-empty lines of a JSON Lines manifest (the progress bar's total)."""
    with open(manifest, "rb") as fp:
        return sum(1 for text in fp if text.strip())


# --- COCO ---------------------------------------------------------------------------------------
def _load_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fp:
            return json.load(fp)
    except OSError as exc:
        raise BatchInputError(f"cannot read {what} {path!r}: {exc.strerror}") from exc
    except ValueError as exc:
        raise BatchInputError(f"{what} {path!r} is not valid JSON: {exc}") from exc


def _box_xyxy(det: dict[str, Any]) -> list[float]:
    bbox = det.get("bbox")
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        raise ValueError(f"bbox must be [x, y, width, height] numbers, got {bbox!r}")
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _coco_tasks(manifest: str, coco_images: str | None, images_dir: str | None) -> list[Task]:
    data = _load_json(manifest, "COCO file")
    images_file = manifest
    if isinstance(data, dict):
        detections = data.get("annotations", [])
        images = data.get("images")
    elif isinstance(data, list):
        detections, images = data, None
    else:
        raise BatchInputError(f"COCO file {manifest!r} must hold a list or an object")
    if coco_images:
        images_file = coco_images
        meta = _load_json(coco_images, "COCO images file")
        images = meta.get("images") if isinstance(meta, dict) else None
    if not isinstance(images, list):
        raise BatchInputError(
            f"{images_file!r} has no 'images' list: a COCO detections list needs one to map "
            "image_id to file_name; pass --coco-images instances.json (a COCO dataset file)"
        )
    if not isinstance(detections, list) or not all(isinstance(d, dict) for d in detections):
        raise BatchInputError(f"the detections in {manifest!r} must be a list of objects")
    base = images_dir or os.path.dirname(os.path.abspath(images_file))
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for det in detections:
        by_image.setdefault(det.get("image_id"), []).append(det)
    ids = set()
    tasks = []
    for entry in images:
        if not (
            isinstance(entry, dict) and "id" in entry and isinstance(entry.get("file_name"), str)
        ):
            raise BatchInputError(
                f"every entry of 'images' in {images_file!r} needs an 'id' and a 'file_name', "
                f"got {entry!r}"
            )  # fmt: skip
        ids.add(entry["id"])
        dets = by_image.get(entry["id"])
        path = os.path.join(base, entry["file_name"])
        objects, problem = None, None
        if dets is not None:
            objects = []
            for j, det in enumerate(dets):
                try:
                    obj: dict[str, Any] = {"box": _box_xyxy(det)}
                except ValueError as exc:
                    problem = ("InvalidPromptError", f"detection {j} of image {entry['id']}: {exc}")
                    objects = None
                    break
                obj.update({k: det[k] for k in ("category_id", "score") if k in det})
                objects.append(obj)
        tasks.append(make_task(entry["id"], entry["file_name"], path, objects, problem))
    orphans = sorted((str(k) for k in by_image if k not in ids), key=str)
    if orphans:
        raise BatchInputError(
            f"{sum(len(by_image[k]) for k in by_image if k not in ids)} detection(s) refer to "
            f"image_id(s) missing from the images list of {images_file!r}, e.g. {orphans[0]}"
        )
    return tasks


# --- all of them ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """The inputs as given on the command line (what decides the tasks)."""

    inputs: tuple[str, ...]
    coco_images: str | None = None
    images_dir: str | None = None

    @property
    def kind(self) -> str:
        if len(self.inputs) == 1 and not os.path.isdir(self.inputs[0]):
            suffix = os.path.splitext(self.inputs[0])[1].lower()
            if suffix in JSONL_SUFFIXES:
                return "jsonl"
            if suffix == ".json":
                return "coco"
        return "images"

    def check(self) -> None:
        """Raise BatchInputError when the inputs make no sense together."""
        kinds = [
            "manifest"
            for i in self.inputs
            if os.path.splitext(i)[1].lower() in (*JSONL_SUFFIXES, ".json") and not os.path.isdir(i)
        ]
        if kinds and len(self.inputs) > 1:
            raise BatchInputError("a manifest (.json/.jsonl) must be the only input")
        if self.coco_images and self.kind != "coco":
            raise BatchInputError("--coco-images goes with a COCO detections .json input")
        if self.images_dir and self.kind == "images":
            raise BatchInputError("--images-dir goes with a .json or .jsonl manifest")
        if self.images_dir and not os.path.isdir(self.images_dir):
            raise BatchInputError(f"--images-dir {self.images_dir!r} is not a folder")
        if self.kind in ("jsonl", "coco") and not os.path.isfile(self.inputs[0]):
            raise BatchInputError(f"manifest {self.inputs[0]!r} does not exist")

    def identity(self) -> dict[str, Any]:
        """What a journal records of the inputs (absolute paths: a resume from another
        working directory still matches)."""

        def absolute(p: str | None) -> str | None:
            return None if p is None else (p if _has_magic(p) else os.path.abspath(p))

        return {
            "inputs": [absolute(i) for i in self.inputs],
            "coco_images": absolute(self.coco_images),
            "images_dir": absolute(self.images_dir),
        }

    def tasks(self) -> Iterator[Task]:
        """The tasks, in input order (streamed for images and JSON Lines)."""
        if self.kind == "jsonl":
            return _jsonl_tasks(self.inputs[0], self.images_dir)
        if self.kind == "coco":
            return iter(_coco_tasks(self.inputs[0], self.coco_images, self.images_dir))
        return _image_tasks(self.inputs)

    def total(self) -> int:
        """How many tasks ``tasks()`` yields (reads the inputs once more)."""
        if self.kind == "jsonl":
            return count_lines(self.inputs[0])
        if self.kind == "coco":
            return len(_coco_tasks(self.inputs[0], self.coco_images, self.images_dir))
        return len(image_paths(self.inputs))
