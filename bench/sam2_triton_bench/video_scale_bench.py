"""Video at scale: objects and concurrent videos, memory over long videos, live streams.

    .venv/bin/python -m sam2_triton_bench.video_scale_bench --json docs/video-scale.json \\
        --markdown docs/benchmarks.md            # or: sam2-triton bench video-scale ...

``--only objects,memory,live``. objects: propagation frames/s for ``--objects`` x ``--videos``
(all videos at once, one SDK thread each) vs SAM 2 in-process (videos one after another), the
marginal cost of an object, Triton's per-model request/execution counts. memory:
``sam2_video_held_bytes`` per frame of a windowed and a whole video (masks vs SAM 2) and
``VideoStore`` bookkeeping over ``--bookkeeping-frames`` frames (stand-in graphs), as a PNG.
live: ``--streams`` concurrent ``init_stream`` + ``track_frame`` streams (closed loop), against
a server with ``sam2_video`` request batching on and one with it off. The tiny model with random
weights (the export cached by ``video_bench``) on local tritonservers (CPU flavour).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sam2_triton import video_spec as vs

from . import machine
from . import video_bench as vb
from .metrics import model_statistics
from .stats import Rounds, summarize
from .targets import BenchSetupError, default_work_dir
from .video_scale_report import GIB, GRAPHS, HEADING, plot_memory, section

SECTIONS = ("objects", "memory", "live")
KEEP = ("### Analysis",)
COMMAND = "python -m sam2_triton_bench.video_scale_bench"
TIMEOUT_S = 3600.0
STAT_MODELS = (*GRAPHS, vs.VIDEO_MODEL)
MARGINAL_TARGET = 0.5  # the issue's goal: an 8th object costs at most half a 1-object frame
Log = Callable[[str], None]


# --- servers ----------------------------------------------------------------------------------
def server_repository(src: Path, dst: Path, batching: bool) -> Path:
    """The video graphs of ``src`` (symlinked) and ``sam2_video`` + ``sam2_video_stream`` (BLS,
    no weights) written anew by ``config_files`` with ``video_request_batching=batching``
    (``sam2_video``'s parameters of ``src`` kept): an older cached export serves as well."""
    from sam2_triton_serve import repository as rp

    dst.mkdir(parents=True)
    for model in vs.VIDEO_GRAPHS:
        (dst / model).symlink_to((src / model).resolve(), target_is_directory=True)
    files = rp.config_files(rp.RepositoryOptions(video_request_batching=batching), video=True)
    for rel, text in files.items():
        model = rel.split("/")[0]
        if model not in (vs.VIDEO_MODEL, vs.VIDEO_STREAM_MODEL):
            continue
        old = src / rel
        if model == vs.VIDEO_MODEL and rel.endswith(".pbtxt") and old.is_file():
            cfg = rp.parse(text)
            for key, value in rp.parse(old.read_text()).parameters.items():
                cfg.parameters[key].CopyFrom(value)
            text = rp.render(cfg)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text(text)
    return dst


def start_server(repo: Path, folder: Path, batching: bool, stack: ExitStack, log: Log) -> Any:
    """A local tritonserver on ``server_repository(repo, folder, batching)``, stopped by
    ``stack``."""
    from sam2_triton_serve.launcher import LocalTritonServer

    server_repository(repo, folder, batching)
    log(f"starting a local Triton (sam2_video request batching {'on' if batching else 'off'})")
    server = LocalTritonServer(
        folder, http_port=0, grpc_port=0, metrics_port=0, required_models=GRAPHS
    )
    return stack.enter_context(server)


def _delta(before: dict | None, after: dict | None) -> dict[str, dict[str, int]]:
    if not before or not after:
        return {}
    return {
        m: {k: after[m][k] - before.get(m, {}).get(k, 0) for k in ("count", "executions")}
        for m in after
    }


def concurrent(url: str, n: int, setup: Callable[[Any], Any], timed: Callable[[Any, Any], Any],
               models: tuple[str, ...]) -> tuple[list[tuple[float, float, Any]], dict]:  # fmt: skip
    """``n`` SDK clients (gRPC, stepped requests), one thread each: ``state = setup(predictor)``
    (untimed), then, once all are ready, ``timed(predictor, state)`` all at once. Returns each
    client's ``(start, end, value)`` and Triton's statistics delta of ``models`` over them."""
    from sam2_triton import SAM2VideoPredictor

    barriers = [threading.Barrier(n + 1, timeout=TIMEOUT_S) for _ in range(3)]
    ready, go, done = barriers

    def one(i: int) -> tuple[float, float, Any]:
        ok = False
        try:
            p = SAM2VideoPredictor(url=url, protocol="grpc", timeout_s=TIMEOUT_S, stream=False)
            state = setup(p)
            ready.wait()
            go.wait()
            t0 = time.perf_counter()
            value = timed(p, state)
            t1 = time.perf_counter()
            done.wait()  # the statistics are read before anyone closes its video
            ok = True
        finally:
            if not ok:
                for barrier in barriers:
                    barrier.abort()
        p.close_state(state)
        p.close()
        return t0, t1, value

    before = after = None
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        try:
            ready.wait()
            before = model_statistics(url, "grpc", models)
            go.wait()
            done.wait()
            after = model_statistics(url, "grpc", models)
        except threading.BrokenBarrierError:
            pass  # a thread failed: its result() raises below
        errors = [f.exception() for f in futures]
        # a failing client aborts the barriers: raise its own error, not another's abort
        real = [
            e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)
        ]
        if real or any(errors):
            raise (real or [e for e in errors if e is not None])[0]
        results = [f.result() for f in futures]
    return results, _delta(before, after)


# --- objects x videos ------------------------------------------------------------------------
def boxes(h: int, w: int, n: int) -> list[list[float]]:
    """``n`` boxes (x0, y0, x1, y1) spread over an ``h x w`` frame on a grid."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = []
    for k in range(n):
        r, c = divmod(k, cols)
        bw, bh = w / cols, h / rows
        out.append([(c + 0.15) * bw, (r + 0.15) * bh, (c + 0.85) * bw, (r + 0.85) * bh])
    return out


def server_cell(url: str, clip: Path, bxs: list, frames: int, videos: int) -> dict[str, Any]:
    """``videos`` clients at once: open, box every object on frame 0 (untimed), propagate
    ``frames`` frames after it (timed, all together)."""

    def setup(p: Any) -> Any:
        state = p.init_state(str(clip))
        for k, box in enumerate(bxs):
            p.add_new_points_or_box(state, 0, k + 1, box=box)
        return state

    def timed(p: Any, state: Any) -> int:
        return sum(1 for _ in p.propagate_in_video(state, max_frame_num_to_track=frames)) - 1

    got, stats = concurrent(url, videos, setup, timed, STAT_MODELS)
    wall = max(g[1] for g in got) - min(g[0] for g in got)
    return {"wall_s": wall, "frames": sum(g[2] for g in got), "stats": stats}


def sam2_cell(ref: Any, clip: Path, bxs: list, frames: int, videos: int) -> dict[str, Any]:
    """SAM 2 in-process: the same videos one after another (propagation timed)."""
    wall, done = 0.0, 0
    for _ in range(videos):
        state = ref.init_state(str(clip))
        for k, box in enumerate(bxs):
            ref.add_new_points_or_box(state, 0, k + 1, box=box)
        t0 = time.perf_counter()
        done += sum(1 for _ in ref.propagate_in_video(state, max_frame_num_to_track=frames)) - 1
        wall += time.perf_counter() - t0
        state.clear()
    return {"wall_s": wall, "frames": done}


def marginal(cells: list[dict], variant: str) -> dict[str, float]:
    """Per videos count: (t(max objects) - t(min objects)) / (max - min) / t(min objects), with
    t the seconds per frame (the inverse of the median frames/s)."""
    out = {}
    for v in sorted({c["videos"] for c in cells}):
        row = {c["objects"]: c[f"{variant}_fps"] for c in cells if c["videos"] == v}
        lo, hi = min(row), max(row)
        if hi > lo and row[lo] and row[hi]:
            t_lo, t_hi = 1 / row[lo], 1 / row[hi]
            out[str(v)] = (t_hi - t_lo) / (hi - lo) / t_lo
    return out


def objects_section(args: argparse.Namespace, ctx: dict, log: Log) -> dict[str, Any]:
    h, w = args.video_size
    clip = vb.write_clip(ctx["tmp"] / "objects", args.frames + 1, h, w)
    url = ctx["server"](True).grpc_url
    ref = ctx["ref"]()
    cells = []
    for i, (n, v) in enumerate((n, v) for n in args.objects for v in args.videos):
        bxs = boxes(h, w, n)
        runs: dict[str, list[dict]] = {"server": [], "sam2": []}
        for r in Rounds(args.repeats):
            for variant in Rounds.order(("server", "sam2"), i + r):
                if variant == "server":
                    res = server_cell(url, clip, bxs, args.frames, v)
                else:
                    res = sam2_cell(ref, clip, bxs, args.frames, v)
                runs[variant].append(res)
                log(f"{n} objects x {v} videos, {variant}: {res['frames'] / res['wall_s']:.3f} "
                    f"frames/s ({res['wall_s']:.1f} s)")  # fmt: skip
        fps = {k: [x["frames"] / x["wall_s"] for x in rs] for k, rs in runs.items()}
        cell: dict[str, Any] = {"objects": n, "videos": v, "runs": runs}
        for k in fps:
            cell[f"{k}_fps"] = summarize(fps[k])["median"]
        cell["ratio"] = cell["server_fps"] / cell["sam2_fps"]
        cell["stats"] = runs["server"][0]["stats"]
        cells.append(cell)
    return {
        "clip": {"frames": args.frames + 1, "tracked": args.frames, "height": h, "width": w},
        "cells": cells,
        "marginal": {"server": marginal(cells, "server"), "sam2": marginal(cells, "sam2")},
        "target": MARGINAL_TARGET,
    }


# --- memory -------------------------------------------------------------------------------------
class StandInGraphs:
    """The video graphs stood in for by zeros of their real output shapes (what is held does
    not depend on the values): views of one shared zero buffer, so that features and outputs
    count their full ``nbytes`` without this process allocating them."""

    C, S = vs.HIDDEN_DIM, vs.FEAT_SIZE
    SHAPES = {
        vs.VIDEO_IMAGE_ENCODER_MODEL: {vs.IMAGE_EMBED: (C, S, S), vs.VISION_FEAT: (C, S, S),
            vs.HIGH_RES_FEATS_0: (32, 4 * S, 4 * S), vs.HIGH_RES_FEATS_1: (64, 2 * S, 2 * S)},
        vs.MEMORY_ATTENTION_MODEL: {vs.PIX_FEAT_WITH_MEM: (C, S, S)},
        vs.VIDEO_MASK_DECODER_MODEL: {vs.LOW_RES_MASKS: (1, vs.LOW_RES_SIZE, vs.LOW_RES_SIZE),
                                      vs.OBJ_PTR: (C,), vs.OBJECT_SCORE_LOGITS: (1,)},
        vs.MEMORY_ENCODER_MODEL: {vs.MASKMEM_FEATURES: (vs.MEM_DIM, S, S)},
    }  # fmt: skip

    def __init__(self) -> None:
        self.zeros = np.zeros(0, np.float32)

    def __call__(self, model: str, inputs: dict, outputs: list[str]) -> dict[str, np.ndarray]:
        first = next(iter(inputs.values()))
        b = first.shape[0] if first.ndim else 1
        out = {}
        for name, shape in self.SHAPES[model].items():
            n = b * math.prod(shape)
            if self.zeros.size < n:
                self.zeros = np.zeros(n, np.float32)
            out[name] = self.zeros[:n].reshape(b, *shape)
        return out


def _rss() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def bookkeeping(frames: int, window: int, stop_bytes: int = 8 * GIB,
                rss_limit: int = 3 * GIB) -> dict[str, Any]:  # fmt: skip
    """``VideoStore`` + ``VideoTracker`` (stand-in graphs) of an open-ended video with 1 object
    boxed on frame 0: ``frames`` frames appended and tracked one at a time, ``video_bytes``
    after each. Stops early when they exceed ``stop_bytes`` or this process's RSS grows by
    ``rss_limit``, then extrapolates linearly (the slope of the last half, at most 50 frames)."""
    from sam2_triton_server.video_store import VideoStore

    store = VideoStore(StandInGraphs(), 1 << 50, 1, 1e9)
    session = store.open(0, (480, 640), window=window)
    frame = np.zeros((1, 3, vs.IMAGE_SIZE, vs.IMAGE_SIZE), np.uint8)  # one buffer, every frame
    box = np.array([[100.0, 100.0], [400.0, 300.0]], np.float32)
    rss0, held, fixed = _rss(), [], []
    t0 = time.perf_counter()
    for t in range(frames):
        store.add_frames(session, t, frame)
        if t == 0:
            session.tracker.add_new_points_or_box(0, 1, box, np.array([2, 3], np.int32))
        session.tracker.preflight()
        session.tracker.track_frame(t, reverse=False)
        store.release(session, t)
        held.append(store.video_bytes(session))
        fixed.append(store.fixed_bytes())
        if t + 1 < frames and (held[-1] > stop_bytes or _rss() - rss0 > rss_limit):
            break
    out: dict[str, Any] = {"window": window, "frames": frames, "held": held, "fixed": fixed,
                           "seconds": time.perf_counter() - t0, "rss_growth": _rss() - rss0}  # fmt: skip
    if len(held) < frames:
        k = max(2, min(50, len(held) // 2))
        slope = (held[-1] - held[-k]) / (k - 1)
        out["extrapolated"] = {"slope_per_frame": slope,
                               "at_end": held[-1] + slope * (frames - len(held))}  # fmt: skip
    return out


def held_series(pred: Any, clip: Path, click: list, window: int, metrics_url: str) -> dict:
    """``sam2_video_held_bytes`` after the click and after each propagated frame; the masks."""
    state = pred.init_state(str(clip), window=window)
    pred.add_new_points_or_box(state, 0, 1, points=click, labels=[1])
    out: dict[str, Any] = {"window": window, "after_prompt": vb.held_bytes(metrics_url)}
    out["frame"], out["held"], masks = [], [], []
    t0 = time.perf_counter()
    for idx, _, m in pred.propagate_in_video(state):
        masks.append(vb._np(m))
        out["frame"].append(int(idx))
        out["held"].append(vb.held_bytes(metrics_url))
    out["seconds"] = time.perf_counter() - t0
    pred.close_state(state)
    return {**out, "masks": masks}


def memory_section(args: argparse.Namespace, ctx: dict, log: Log) -> dict[str, Any]:
    from sam2_triton import SAM2VideoPredictor

    h, w = args.long_size
    clip = vb.write_clip(ctx["tmp"] / "long", args.long_frames, h, w)
    click = vb.clicks(h, w)[0][1]
    server = ctx["server"](True)
    runs = {}
    with SAM2VideoPredictor(url=server.grpc_url, timeout_s=TIMEOUT_S, stream=False) as pred:
        for name, window in (("windowed", vs.MIN_VIDEO_WINDOW), ("full", 0)):
            runs[name] = held_series(pred, clip, click, window, server.metrics_url)
            log(f"server, {name}: {args.long_frames} frames in {runs[name]['seconds']:.1f} s")
    ref = ctx["ref"]()
    state = ref.init_state(str(clip))
    ref.add_new_points_or_box(state, 0, 1, points=click, labels=[1])
    sam2_masks = [vb._np(m) for _, _, m in ref.propagate_in_video(state)]
    state.clear()
    exact = {k: vb.compare_masks(r.pop("masks"), sam2_masks) for k, r in runs.items()}
    books = {}
    for window in (vs.MIN_VIDEO_WINDOW, 0):
        books[str(window)] = bookkeeping(args.bookkeeping_frames, window, args.stop_gib * GIB)
        log(f"bookkeeping, window {window}: {len(books[str(window)]['held'])} frames in "
            f"{books[str(window)]['seconds']:.1f} s")  # fmt: skip
    return {
        "clip": {"frames": args.long_frames, "height": h, "width": w, "click": click},
        "server": runs,
        "exactness": exact,
        "bookkeeping": books,
        "stop_bytes": args.stop_gib * GIB,
    }


# --- live streams ---------------------------------------------------------------------------------
def live_run(url: str, frames: list[np.ndarray], click: list, streams: int) -> dict[str, Any]:
    """``streams`` live streams at once: frame 0 sent and clicked (untimed), then the other
    frames each sent as soon as the previous one is answered."""
    h, w = frames[0].shape[:2]

    def setup(p: Any) -> Any:
        state = p.init_stream(h, w, window=vs.MIN_VIDEO_WINDOW)
        p.track_frame(state, frames[0])
        p.add_new_points_or_box(state, 0, 1, points=click, labels=[1])
        return state

    def timed(p: Any, state: Any) -> list[float]:
        lat = []
        for f in frames[1:]:
            t0 = time.perf_counter()
            p.track_frame(state, f)
            lat.append(time.perf_counter() - t0)
        return lat

    got, stats = concurrent(url, streams, setup, timed, (vs.VIDEO_MODEL,))
    wall = max(g[1] for g in got) - min(g[0] for g in got)
    n = len(frames) - 1
    return {
        "wall_s": wall,
        "latency_s": summarize([x for g in got for x in g[2]]),
        "total_fps": streams * n / wall,
        "per_stream_fps": [n / (g[1] - g[0]) for g in got],
        "stats": stats.get(vs.VIDEO_MODEL),
    }


def live_section(args: argparse.Namespace, ctx: dict, log: Log) -> dict[str, Any]:
    h, w = args.long_size
    folder = vb.write_clip(ctx["tmp"] / "live", args.live_frames + 1, h, w)
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"))]
    click = vb.clicks(h, w)[0][1]
    modes = (True, False) if not args.url or args.url_unbatched else (True,)
    urls = {on: ctx["server"](on).grpc_url for on in modes}
    rows = []
    for i, s in enumerate(args.streams):
        for on in Rounds.order(modes, i):
            res = live_run(urls[on], frames, click, s)
            rows.append({"streams": s, "batching": on, **res})
            log(f"{s} streams, batching {'on' if on else 'off'}: {res['total_fps']:.3f} "
                f"frames/s, median latency {res['latency_s']['median']:.1f} s")  # fmt: skip
    return {"frames": args.live_frames, "height": h, "width": w, "fps": args.fps, "rows": rows}


# --- the run ----------------------------------------------------------------------------------
def _list(kind: Callable[[str], Any], choices: tuple = ()) -> Callable[[str], list]:
    """An argparse type: comma-separated values of ``kind`` (ints >= 1, or one of ``choices``)."""

    def parse(text: str) -> list:
        try:
            items = [kind(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError:
            items = []
        if not items or (set(items) - set(choices) if choices else min(items) < 1):
            raise argparse.ArgumentTypeError(f"invalid list {text!r} {choices or '(ints >= 1)'}")
        return items

    return parse


def _hw(text: str) -> tuple[int, int]:
    h, w = ([*_list(int)(text.lower().replace("x", ",")), 0, 0])[:2]
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"expected HxW of at least 16x16, got {text!r}")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``video-scale`` options on ``parser``."""
    a = parser.add_argument
    a(
        "--url",
        help="gRPC address of a running server with the --video export of --model-repository "
        "(e.g. the GPU flavour: docker compose up) instead of a local CPU tritonserver",
    )
    a("--metrics-url", help="its metrics endpoint (default: http://<host>:8002/metrics)")
    a("--device", default="cpu", help="where SAM 2 in-process runs (cpu, cuda)")
    a(
        "--url-unbatched",
        help="with --url: a second server whose sam2_video has video_request_batching off, "
        "for the live section's on/off comparison (without it: on only)",
    )
    a(
        "--only",
        type=_list(str, SECTIONS),
        default=list(SECTIONS),
        help="objects,memory,live (default all)",
    )
    a("--objects", type=_list(int), default=[1, 4, 8], help="objects per video (default 1,4,8)")
    a("--videos", type=_list(int), default=[1, 2, 4], help="concurrent videos (default 1,2,4)")
    a("--frames", type=int, default=2, help="frames tracked after the prompt frame (default 2)")
    a("--repeats", type=int, default=1, help="rounds of the objects section (default 1)")
    a("--video-size", type=_hw, default=(240, 320), help="HxW of the objects clip (240x320)")
    a("--long-frames", type=int, default=24, help="frames of the memory clip (default 24)")
    a("--long-size", type=_hw, default=(64, 96), help="HxW of memory/live frames (64x96)")
    a("--bookkeeping-frames", type=int, default=2000, help="frames appended (default 2000)")
    a("--stop-gib", type=float, default=8.0, help="bookkeeping stops above this (default 8)")
    a(
        "--streams",
        type=_list(int),
        default=[1, 2, 4],
        help="concurrent live streams (default 1,2,4)",
    )
    a("--live-frames", type=int, default=4, help="timed frames per live stream (default 4)")
    a("--fps", type=float, default=1.0, help="frame rate a live stream needs (default 1.0)")
    a("--model-repository", type=Path, help="an export with --video (default: cached one)")
    a("--work-dir", type=Path, help="export cache (default <bench cache>/video)")
    a("--seed", type=int, default=0, help="random weights seed (default 0)")
    a("--json", type=Path, help="write the raw numbers here")
    a("--markdown", type=Path, help=f"write/replace the '{HEADING}' section of this file")
    a("--plot", type=Path, help="memory PNG (default: video-memory.png beside --markdown)")


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if min(args.frames, args.long_frames, args.live_frames, args.bookkeeping_frames,
           args.repeats, args.fps) <= 0:  # fmt: skip
        print("error: frame counts, --repeats and --fps must be > 0", file=sys.stderr)
        return 1
    started = time.time()
    result: dict[str, Any] = {"machine": machine.describe(), "sections": {}, "config": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        if not callable(v)}}  # fmt: skip
    try:
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sam2-vscale-")))
            repo = args.model_repository
            work = args.work_dir or default_work_dir() / "video"
            repo = repo or vb.ensure_video_export(work, args.seed, log)
            if not vb.has_video(repo):
                raise BenchSetupError(f"{repo} has no video models: export it with --video")
            state_dict, config, weights = vb.state_dict_for(repo, args.seed)
            ref = functools.cache(lambda: vb.reference_predictor(state_dict, args.device, config))

            @functools.cache
            def server(batching: bool) -> Any:
                if args.url:  # an existing server (e.g. the GPU flavour: docker compose up)
                    url = args.url if batching else args.url_unbatched
                    host = url.rsplit(":", 1)[0]
                    metrics = args.metrics_url or f"http://{host}:8002/metrics"
                    return types.SimpleNamespace(grpc_url=url, metrics_url=metrics)
                return start_server(repo, tmp / f"batching-{batching}", batching, stack, log)

            ctx = {"tmp": tmp, "server": server, "ref": ref}
            result.update(weights=weights, model_repository=str(repo))
            for name, fn in (("objects", objects_section), ("memory", memory_section),
                             ("live", live_section)):  # fmt: skip
                if name in args.only:
                    t0 = time.perf_counter()
                    result["sections"][name] = fn(args, ctx, log)
                    log(f"section {name}: {time.perf_counter() - t0:.0f} s")
                    if args.json:  # what is done survives a later section's failure
                        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
            result["server"] = (
                f"the server at {args.url}"
                if args.url
                else "local tritonserver (CPU flavour, video models only)"
            )
    except BenchSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["machine"]["load_average_end"] = machine.load_average()
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
    result["duration_s"] = round(time.time() - started, 1)
    result["command"] = COMMAND + " " + " ".join(sys.argv[1:] if argv is None else argv)
    png = args.plot or (args.markdown.parent / "video-memory.png" if args.markdown else None)
    if "memory" in result["sections"] and png:
        plot_memory(result["sections"]["memory"], png)
        rel = os.path.relpath(png, args.markdown.parent) if args.markdown else str(png)
        result["plot"] = rel
        log(f"wrote {png} and {png.with_suffix('.csv')}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    text = section(result)
    print(text)
    if args.markdown:
        from .report import write_section

        write_section(args.markdown, HEADING, text, keep=KEEP)
        log(f"wrote the '{HEADING}' section of {args.markdown}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
