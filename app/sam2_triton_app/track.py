"""``sam2-triton track``: track objects through a video with SAM 2.1 on a Triton server.

Clicks and boxes on one or more frames (one or more objects) are sent to the ``sam2_video`` model
through ``sam2_triton.video.SAM2VideoPredictor`` (SAM 2's ``SAM2VideoPredictor`` API), the
objects are propagated through the video, and every tracked frame's masks are written as PNGs or
one COCO RLE JSON, with an overlay video.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sam2_triton import video_spec as vs

from . import everything, visualize

DEFAULT_FPS = 30.0
DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}

EPILOG = """\
Prompts: --frame F and --obj ID select the frame and the object that the --point, --neg-point
and --box options after them belong to (defaults: frame 0, object 1); repeat them to prompt
several objects, or the same object on several frames. Each (frame, object) pair is one call of
SAM 2's add_new_points_or_box (at most one --box per pair; the box corners go first, as SAM 2).
Coordinates are pixels of the original video (x to the right, y down).

example: two objects clicked on frame 0, the second corrected on frame 40:
  sam2-triton track video.mp4 --url localhost:8001 \\
      --frame 0 --obj 1 --point 210,350 --point 250,220 \\
                --obj 2 --box 400,120,620,380 --neg-point 500,300 \\
      --frame 40 --obj 2 --point 560,260 \\
      --out tracked/
writes tracked/masks/00000_obj1.png ... (255 = object) and tracked/overlay.mp4.
VIDEO may also be a folder of JPEG frames named <index>.jpg (SAM 2's format: exact SAM 2 input).
"""


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
@dataclass
class PromptGroup:
    """The prompts of one object on one frame: one ``add_new_points_or_box`` call."""

    frame: int
    obj: int
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def kwargs(self) -> dict[str, Any]:
        """``add_new_points_or_box`` keyword arguments (points/labels ``None`` for a box only)."""
        pts = np.array(self.points, np.float32).reshape(-1, 2) if self.points else None
        labs = np.array(self.labels, np.int32) if self.points else None
        box = np.array(self.box, np.float32) if self.box is not None else None
        return {
            "frame_idx": self.frame,
            "obj_id": self.obj,
            "points": pts,
            "labels": labs,
            "box": box,
        }


def _numbers(text: str, n: int, option: str, example: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"{option} takes {n} comma-separated numbers in pixels ({example}), got {text!r}"
        )
    return values


def _int(text: str, option: str, minimum: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        need = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise argparse.ArgumentTypeError(f"{option} must be {need}, got {text!r}")
    return value


class _SelectAction(argparse.Action):
    """``--frame`` / ``--obj``: select the (frame, object) the following prompts belong to."""

    def __call__(self, parser, namespace, values, option_string=None):
        minimum = 0 if self.dest == "frame" else None
        try:
            value = _int(values, option_string or self.dest, minimum)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        pending = namespace._pending if namespace._pending is not None else {}
        if self.dest in pending:
            raise argparse.ArgumentError(
                self,
                f"{pending[self.dest]} is followed by {option_string} {value} without any "
                "--point/--neg-point/--box in between: nothing to prompt on "
                f"{pending[self.dest]}",
            )
        pending[self.dest] = f"{option_string} {value}"
        namespace._pending = pending
        setattr(namespace, self.dest, value)


class _PromptAction(argparse.Action):
    """``--point`` / ``--neg-point`` / ``--box``: a prompt for the selected (frame, object)."""

    def __call__(self, parser, namespace, values, option_string=None):
        option = option_string or self.dest
        try:
            if self.dest == "box":
                box = _numbers(values, 4, option, "X0,Y0,X1,Y1")
                if not (box[0] < box[2] and box[1] < box[3]):
                    raise argparse.ArgumentTypeError(
                        f"{option} must be X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1 (top-left, then "
                        f"bottom-right corner), got {values!r}"
                    )
            else:
                point = _numbers(values, 2, option, "X,Y")
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        groups = namespace.prompts if namespace.prompts is not None else {}
        key = (namespace.frame, namespace.obj)
        group = groups.setdefault(key, PromptGroup(*key))
        if self.dest == "box":
            if group.box is not None:
                raise argparse.ArgumentError(
                    self,
                    f"object {key[1]} on frame {key[0]} already has a box "
                    f"({','.join(f'{v:g}' for v in group.box)}): one --box per object and frame "
                    "(SAM 2 takes one box per add_new_points_or_box call)",
                )
            group.box = box
        else:
            group.points.append(point)
            group.labels.append(0 if self.dest == "neg_point" else 1)
        namespace.prompts = groups
        namespace._pending = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the track options on ``parser``."""
    parser.description = (
        "Track objects through a video with SAM 2.1 on a Triton server (the sam2_video model):\n"
        "prompt them with clicks and boxes on one or more frames, propagate, and write the\n"
        "masks of every tracked frame and an overlay video."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(frame=0, obj=1, prompts=None, _pending=None)
    parser.add_argument(
        "video",
        help="a video file (MP4, ... decoded by PyAV) or a folder of JPEG frames "
        "(<index>.jpg, as SAM 2)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="Triton address host:port (default localhost:8001 for gRPC, localhost:8000 for HTTP)",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    g = parser.add_argument_group("prompts (repeatable, in order; see below)")
    g.add_argument(
        "--frame",
        action=_SelectAction,
        metavar="F",
        help="frame index (from 0) the following prompts are on (default 0)",
    )
    g.add_argument(
        "--obj",
        action=_SelectAction,
        metavar="ID",
        help="object id (an integer) the following prompts belong to (default 1)",
    )
    g.add_argument(
        "--point", action=_PromptAction, metavar="X,Y", help="a click on the object (label 1)"
    )
    g.add_argument(
        "--neg-point",
        dest="neg_point",
        action=_PromptAction,
        metavar="X,Y",
        help="a click on the background (label 0)",
    )
    g.add_argument(
        "--box",
        action=_PromptAction,
        metavar="X0,Y0,X1,Y1",
        help="a box around the object (at most one per object and frame)",
    )
    p = parser.add_argument_group("propagation")
    p.add_argument(
        "--start-frame",
        type=lambda t: _int(t, "--start-frame", 0),
        default=None,
        metavar="F",
        help="frame to start propagating from (default, as SAM 2: the earliest prompted frame)",
    )
    p.add_argument(
        "--reverse",
        action="store_true",
        help="propagate backwards in time (towards frame 0) instead of forwards",
    )
    p.add_argument(
        "--max-frames",
        type=lambda t: _int(t, "--max-frames", 0),
        default=None,
        metavar="N",
        help="track at most N frames after the start frame (SAM 2's max_frame_num_to_track; "
        "default: to the end of the video)",
    )
    p.add_argument(
        "--window",
        type=lambda t: _int(t, "--window", 0),
        default=0,
        metavar="W",
        help="long videos: upload frames as they are tracked and let the server keep only the "
        f"last W tracked frames (W >= {vs.MIN_VIDEO_WINDOW}; memory flat in the video's "
        "length, same masks; forward only past the window). Default 0: the whole video",
    )
    o = parser.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    o.add_argument(
        "--format",
        choices=("png", "rle"),
        default="png",
        help="png: DIR/masks/{frame:05d}_obj{id}.png (0/255) per frame and object; rle: one "
        "DIR/masks.json of COCO RLE masks (pycocotools)",
    )
    o.add_argument(
        "--no-overlay", action="store_true", help="do not write DIR/overlay.mp4 (masks only)"
    )
    o.add_argument(
        "--fps",
        type=float,
        default=None,
        help=f"overlay frame rate (default: the video file's, else {DEFAULT_FPS:g})",
    )


def prompt_groups(args: argparse.Namespace) -> list[PromptGroup]:
    """The parsed prompts in command-line order; SystemExit naming the option if unusable."""
    if args._pending:
        dangling = " ".join(args._pending.values())
        raise SystemExit(
            f"error: {dangling} is not followed by any --point/--neg-point/--box "
            "(they apply to the prompts after them)"
        )
    if not args.prompts:
        raise SystemExit(
            "error: give at least one --point, --neg-point or --box (see sam2-triton track --help)"
        )
    return list(args.prompts.values())


def check_prompts(groups: list[PromptGroup], num_frames: int, video_hw: tuple[int, int]) -> None:
    """Check the prompts against the video; SystemExit naming the option otherwise."""
    h, w = video_hw
    for g in groups:
        if g.frame >= num_frames:
            raise SystemExit(
                f"error: --frame {g.frame} is out of range: the video has {num_frames} frames "
                f"(0..{num_frames - 1})"
            )
        for (x, y), lab in zip(g.points, g.labels):
            if not (0 <= x <= w and 0 <= y <= h):
                option = "--point" if lab == 1 else "--neg-point"
                raise SystemExit(
                    f"error: {option} {x:g},{y:g} (object {g.obj}, frame {g.frame}) is outside the "
                    f"video's {w}x{h} (WxH) pixels"
                )
        if g.box is not None:
            x0, y0, x1, y1 = g.box
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise SystemExit(
                    f"error: --box {','.join(f'{v:g}' for v in g.box)} (object {g.obj}, frame "
                    f"{g.frame}) does not overlap the video's {w}x{h} (WxH) pixels"
                )


def check_args(args: argparse.Namespace) -> None:
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise SystemExit(f"error: --fps must be a positive number, got {args.fps:g}")
    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"error: --out {str(args.out)!r} exists and is not a folder")


def expected_frames(
    groups: list[PromptGroup],
    num_frames: int,
    start_frame: int | None,
    max_frames: int | None,
    reverse: bool,
) -> int:
    """How many frames ``propagate_in_video`` yields (its processing order, for the progress bar)."""
    start = min(g.frame for g in groups) if start_frame is None else start_frame
    span = num_frames if max_frames is None else max_frames
    if reverse:
        return start - max(start - span, 0) + 1 if start > 0 else 0
    return min(start + span, num_frames - 1) - start + 1


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:  # a dependency of sam2-triton-client; only if broken
        raise SystemExit("error: writing masks needs pycocotools: pip install pycocotools") from exc
    return mask_utils


class MaskWriter:
    """Writes each tracked frame's masks as they arrive, and keeps them as COCO RLE (small) for
    ``masks.json`` and the overlay.

    ``fmt="png"``: ``DIR/masks/{frame:05d}_obj{id}.png``, 8-bit, 255 = object, 0 = background;
    ``fmt="rle"``: ``DIR/masks.json`` on :meth:`close`, see :meth:`document`.
    """

    def __init__(self, out_dir: Path, fmt: str, video_hw: tuple[int, int], source: str = ""):
        if fmt not in ("png", "rle"):
            raise ValueError(f"fmt must be 'png' or 'rle', got {fmt!r}")
        self.out_dir = Path(out_dir)
        self.fmt = fmt
        self.video_hw = (int(video_hw[0]), int(video_hw[1]))
        self.source = source
        self.rles: dict[int, dict[int, dict]] = {}  # frame -> obj_id -> RLE
        self._mask_utils = _mask_utils()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            (self.out_dir / "masks").mkdir(exist_ok=True)

    def add(self, frame_idx: int, obj_ids: list[int], masks: np.ndarray) -> None:
        """Masks of one frame: bool ``[O, H, W]`` or ``[O, 1, H, W]`` (or logits: ``> 0``)."""
        masks = np.asarray(masks)
        if masks.dtype != np.bool_:
            masks = masks > 0
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.ndim != 3 or masks.shape[0] != len(obj_ids) or masks.shape[1:] != self.video_hw:
            raise ValueError(
                f"frame {frame_idx}: expected masks [{len(obj_ids)}, (1,) {self.video_hw[0]}, "
                f"{self.video_hw[1]}], got {masks.shape}"
            )
        per_obj = self.rles.setdefault(int(frame_idx), {})
        for obj_id, mask in zip(obj_ids, masks):
            rle = self._mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            per_obj[int(obj_id)] = rle
            if self.fmt == "png":
                Image.fromarray(mask.astype(np.uint8) * 255).save(self.png_path(frame_idx, obj_id))

    def png_path(self, frame_idx: int, obj_id: int) -> Path:
        return self.out_dir / "masks" / f"{int(frame_idx):05d}_obj{int(obj_id)}.png"

    @property
    def obj_ids(self) -> list[int]:
        return sorted({o for per_obj in self.rles.values() for o in per_obj})

    def mask(self, frame_idx: int, obj_id: int) -> np.ndarray:
        """The bool ``[H, W]`` mask of an object on a frame written so far."""
        return self._mask_utils.decode(self.rles[frame_idx][obj_id]).astype(bool)

    def document(self) -> dict[str, Any]:
        """``masks.json``: the video, its size, and one annotation per (frame, object) with COCO
        RLE ``segmentation`` (``counts`` as a string), ``area`` and ``bbox`` (x, y, w, h)."""
        mu = self._mask_utils
        annotations = []
        for frame_idx in sorted(self.rles):
            for obj_id in sorted(self.rles[frame_idx]):
                rle = self.rles[frame_idx][obj_id]
                annotations.append(
                    {
                        "frame_idx": frame_idx,
                        "obj_id": obj_id,
                        "segmentation": {
                            "size": [int(s) for s in rle["size"]],
                            "counts": rle["counts"].decode("ascii"),
                        },
                        "area": int(mu.area(rle)),
                        "bbox": [float(v) for v in mu.toBbox(rle)],
                    }
                )
        return {
            "video": self.source,
            "height": self.video_hw[0],
            "width": self.video_hw[1],
            "frames": sorted(self.rles),
            "obj_ids": self.obj_ids,
            "annotations": annotations,
        }

    def close(self) -> Path | None:
        """Write ``masks.json`` (format rle); returns its path, or None."""
        if self.fmt != "rle":
            return None
        path = self.out_dir / "masks.json"
        path.write_text(json.dumps(self.document()) + "\n")
        return path


def _video_codec(av: Any) -> str:
    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - codec missing from this FFmpeg build
            continue
        return name
    raise SystemExit("error: no H.264 or MPEG-4 encoder in this PyAV build; use --no-overlay")


def write_overlay(
    path: Path,
    frames: Any,
    writer: MaskWriter,
    fps: float,
    groups: list[PromptGroup] = (),
) -> int:
    """An MP4 of the tracked frames (in time order) with one colour per object and the prompts
    drawn on their frames; ``frames`` has ``frame(i)`` (``VideoFrames``). Returns the frame count.

    Odd frame sizes are padded by one edge row/column (H.264 needs even sizes).
    """
    try:
        import av
    except ImportError as exc:
        raise SystemExit(
            "error: the overlay video needs PyAV: pip install av (or use --no-overlay)"
        ) from exc
    obj_ids = writer.obj_ids
    colour = dict(zip(obj_ids, everything.colours(len(obj_ids))))
    h, w = writer.video_hw
    eh, ew = h + h % 2, w + w % 2
    container = av.open(str(path), "w")
    try:
        stream = container.add_stream(_video_codec(av), rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = ew, eh, "yuv420p"
        count = 0
        for frame_idx in sorted(writer.rles):
            per_obj = writer.rles[frame_idx]
            ids = sorted(per_obj)
            on_frame = [g for g in groups if g.frame == frame_idx]
            pts = [p for g in on_frame for p in g.points]
            labs = [lab for g in on_frame for lab in g.labels]
            boxes = [g.box for g in on_frame if g.box is not None]
            picture = visualize.overlay(
                frames.frame(frame_idx),
                [writer.mask(frame_idx, o) for o in ids],
                colors=[colour[o] for o in ids],
                points=np.array(pts, np.float64).reshape(-1, 2) if pts else None,
                labels=np.array(labs) if pts else None,
                boxes=np.array(boxes, np.float64).reshape(-1, 4) if boxes else None,
            )
            rgb = np.asarray(picture)
            if (eh, ew) != (h, w):
                rgb = np.pad(rgb, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return count


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------
def make_predictor(url: str, protocol: str) -> Any:
    """The SDK's video predictor (a seam for tests)."""
    from sam2_triton.video import SAM2VideoPredictor

    return SAM2VideoPredictor(url=url, protocol=protocol)


def _close(predictor: Any, state: Any) -> None:
    """Free the video on the server (``close_state``) and the predictor's client, best effort
    (an error here must not hide the one being raised)."""
    from sam2_triton.errors import SAM2TritonError

    for name, call_args in (("close_state", (state,)), ("close", ())):
        method = getattr(predictor, name, None)
        if callable(method) and (state is not None or name == "close"):
            try:
                method(*call_args)
            except SAM2TritonError as exc:
                print(f"warning: {name}: {exc}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Track the prompted objects through ``args.video``; returns the exit code."""
    from tqdm import tqdm

    from sam2_triton.errors import SAM2TritonError
    from sam2_triton.video_io import load_video

    groups = prompt_groups(args)
    check_args(args)
    try:
        frames = load_video(args.video)
    except (SAM2TritonError, ImportError, OSError) as exc:
        raise SystemExit(f"error: VIDEO {args.video!r}: {exc}") from None
    with frames:
        hw = (frames.video_height, frames.video_width)
        check_prompts(groups, len(frames), hw)
        if args.start_frame is not None and args.start_frame >= len(frames):
            raise SystemExit(
                f"error: --start-frame {args.start_frame} is out of range: the video has "
                f"{len(frames)} frames"
            )
        url = args.url or DEFAULT_URLS[args.protocol]
        writer = MaskWriter(args.out, args.format, hw, str(args.video))
        total = expected_frames(
            groups, len(frames), args.start_frame, args.max_frames, args.reverse
        )
        try:
            predictor = make_predictor(url, args.protocol)
            state = None
            try:
                # the frames opened above (load_video passes them through): a video file is
                # not scanned twice, and the server gets exactly the frames checked here
                state = predictor.init_state(frames, window=args.window)
                for g in groups:
                    predictor.add_new_points_or_box(state, **g.kwargs())
                with tqdm(total=total, unit="frame", desc="tracking", file=sys.stderr) as bar:
                    for frame_idx, obj_ids, video_res in predictor.propagate_in_video(
                        state,
                        start_frame_idx=args.start_frame,
                        max_frame_num_to_track=args.max_frames,
                        reverse=args.reverse,
                    ):
                        writer.add(frame_idx, list(obj_ids), np.asarray(video_res) > 0)
                        bar.update(1)
            finally:
                _close(predictor, state)
        except SAM2TritonError as exc:
            raise SystemExit(f"error: {type(exc).__name__}: {exc}") from None
        json_path = writer.close()
        written = [str(json_path) if json_path else str(args.out / "masks")]
        if not args.no_overlay and writer.rles:
            fps = args.fps or frames.fps or DEFAULT_FPS
            overlay_path = args.out / "overlay.mp4"
            write_overlay(overlay_path, frames, writer, fps, groups)
            written.append(str(overlay_path))
    print(
        f"tracked {len(writer.obj_ids)} object(s) over {len(writer.rles)} frame(s): "
        + ", ".join(written)
    )
    return 0
