"""Video tracking: ``sam2_triton.SAM2VideoPredictor`` (Triton, gRPC and HTTP) vs SAM 2's own
``SAM2VideoPredictor`` in-process, side by side in one run.

    .venv/bin/python -m sam2_triton_bench.video_bench --frames 6 --repeats 2 \\
        --json docs/video-benchmark.json          # or: sam2-triton bench video ...

Writes a synthetic JPEG clip (two moving blocks, ``--video-size``), exports the tiny model with
random weights (seed 0) with ``sam2-triton export --video`` into a cache folder (or serves
``--model-repository``), starts a local Triton (CPU flavour) on it (``--url``: an existing
server instead) and builds SAM 2's predictor with the same weights (``reference_predictor``:
``build_sam2_video_predictor`` defaults, with the one patch that lets its bfloat16 memory
storage run on CPU). Every round, in a rotated order (ABC, BCA, ...), each variant opens the
clip (``init_state``), clicks once on each of 2 objects on frame 0 and runs
``propagate_in_video`` over the whole clip; the variants are SAM 2 in this process, ours over
gRPC and ours over HTTP (``propagate_steps`` frames per request, default 1). Reported:

- frames per second of ``propagate_in_video`` (medians over rounds, ratio of medians and the
  median of the per-round ratios), the session set-up (``init_state`` + clicks) apart;
- exactness of the first round: max |logit difference| and min IoU (logits > 0) of every mask
  of every frame and object, Triton vs SAM 2;
- bytes on the wire (request + response, HTTP/2 or HTTP framing included: ``wirebytes.
  CountingProxy``) of a warm-up session per protocol: per uploaded frame at ``init_state``, per
  click, per propagated frame;
- the server's memory: ``sam2_video_held_bytes`` (Triton's metrics port) and the RSS/PSS of the
  tritonserver process tree after init and after propagation, for 1 object (one extra session)
  and 2 objects (the timed rounds); SAM 2's ``inference_state`` tensor bytes alike;
- where the time of a propagated frame goes: Triton's per-model statistics of the four graphs
  and ``sam2_video`` over the timed propagations, next to SAM 2's (its ``forward_image``,
  ``_prepare_memory_conditioned_features``, ``_forward_sam_heads``, ``_encode_new_memory``,
  timed by wrapping those methods).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import types
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sam2_triton import video_spec as vs

from . import machine
from .metrics import model_statistics
from .stats import Rounds, TimedParts, paired_ratio, summarize
from .targets import BenchSetupError, default_work_dir, read_manifest, run_export, stale_configs

TARGET = 1.0  # Triton propagation frames/s / SAM 2 in-process frames/s (the goal)
TIMEOUT_S = 1800.0
SEED = 0
VARIANT = "tiny"
SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
VARIANTS = ("sam2", "triton grpc", "triton http")
OBJECTS = (1, 2)  # object ids clicked on frame 0 (the first one alone for the 1-object session)
SERVER_MODELS = (
    vs.VIDEO_IMAGE_ENCODER_MODEL,
    vs.MEMORY_ATTENTION_MODEL,
    vs.VIDEO_MASK_DECODER_MODEL,
    vs.MEMORY_ENCODER_MODEL,
    vs.VIDEO_MODEL,
)
HELD_METRIC = "sam2_video_held_bytes"
COMMAND = "python -m sam2_triton_bench.video_bench"
KEEP = ("### Analysis",)  # hand-written subsections of "## Video" that --markdown keeps
GPU_COMMAND = (
    "# on the GPU host, serving a repository exported with `sam2-triton export --video`\n"
    "python -m sam2_triton_bench.video_bench --url localhost:8001 --http-url "
    "http://localhost:8000 \\\n"
    "    --metrics-url localhost:8002 --model-repository model_repository --device cuda \\\n"
    "    --frames 64 --repeats 3 --json docs/gpu/video-benchmark.json"
)


# --- the clip -------------------------------------------------------------------------------------
def _blocks(h: int, w: int, t: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The two blocks of frame ``t`` as ``(y0, y1, x0, x1)``: a red one moving right, a green one
    moving left (the layout of tests/video_scenario.py, scaled to ``h x w``)."""
    bh, bw = max(2, round(0.31 * h)), max(2, round(0.23 * w))
    dx1, dx2 = max(1, round(w / 32)), max(1, round(3 * w / 128))
    y1, x1 = round(0.21 * h), min(w - bw, round(0.08 * w) + dx1 * t)
    y2, x2 = round(0.57 * h), max(0, round(0.62 * w) - dx2 * t)
    return (y1, y1 + bh, x1, x1 + bw), (y2, y2 + bh, x2, x2 + bw)


def write_clip(folder: Path, num_frames: int, h: int, w: int, seed: int = 0) -> Path:
    """A synthetic clip as SAM 2 reads videos: ``<index>.jpg`` frames, two moving blocks on a
    noisy background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(num_frames):
        f = np.full((h, w, 3), 40, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
        (a0, a1, a2, a3), (b0, b1, b2, b3) = _blocks(h, w, t)
        f[a0:a1, a2:a3] = (220, 40, 40)
        f[b0:b1, b2:b3] = (40, 200, 60)
        Image.fromarray(f).save(folder / f"{t:05d}.jpg", quality=95)
    return folder


def clicks(h: int, w: int) -> list[tuple[int, list[list[float]]]]:
    """``(obj_id, [[x, y]])``: one positive click in the middle of each block of frame 0."""
    out = []
    for obj_id, (y0, y1, x0, x1) in zip(OBJECTS, _blocks(h, w, 0)):
        out.append((obj_id, [[(x0 + x1) / 2.0, (y0 + y1) / 2.0]]))
    return out


# --- SAM 2 in-process -------------------------------------------------------------------------
def reference_predictor(state_dict: dict, device: str = "cpu", config: str = SAM2_CONFIG) -> object:
    """SAM 2's own ``SAM2VideoPredictor`` (``build_sam2_video_predictor`` defaults; SAM 2.1 tiny
    unless ``config`` says otherwise) on ``device`` with ``state_dict``.

    SAM 2 stores memory features as bfloat16 and reads them back into float32 attention; on a
    GPU that runs under ``torch.autocast(bfloat16)``, without autocast torch refuses the mixed
    matmul. So memories are upcast where ``_prepare_memory_conditioned_features`` reads them
    (exact: every bfloat16 is a float32): SAM 2's float32 computation with its bfloat16 storage.
    (The reference of tests/test_video.py and of this benchmark.)
    """
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(config, ckpt_path=None, device=device)
    predictor.load_state_dict(state_dict)
    predictor.eval()
    original = type(predictor)._prepare_memory_conditioned_features

    def upcast(bank: dict) -> dict:
        return {
            frame: {
                **out,
                "maskmem_features": None
                if out.get("maskmem_features") is None
                else out["maskmem_features"].to(torch.float32),
            }
            for frame, out in bank.items()
        }

    def prepare(self, *args, output_dict, **kwargs):
        bank = {key: upcast(output_dict[key]) for key in output_dict}
        return original(self, *args, output_dict=bank, **kwargs)

    predictor._prepare_memory_conditioned_features = types.MethodType(prepare, predictor)
    return predictor


SAM2_PARTS = (
    ("forward_image", "image encoder (forward_image)"),
    ("_prepare_memory_conditioned_features", "memory attention (_prepare_memory_conditioned_…)"),
    ("_forward_sam_heads", "mask decoder (_forward_sam_heads)"),
    ("_encode_new_memory", "memory encoder (_encode_new_memory)"),
)


def timed_sam2(predictor: Any) -> TimedParts:
    parts = TimedParts()
    for method, name in SAM2_PARTS:
        parts.wrap(predictor, method, name)
    return parts


def sam2_memory(state: dict) -> dict[str, int]:
    """SAM 2's ``inference_state``: all its tensor bytes, and those of its frames (``images``:
    float32 ``[N, 3, 1024, 1024]``, normalised)."""
    images = state.get("images")
    return {
        "state_bytes": torch_state_bytes(state),
        "images_bytes": int(images.numel() * images.element_size()) if images is not None else 0,
    }


def torch_state_bytes(state: Any) -> int:
    """Bytes of the distinct tensor storages SAM 2's ``inference_state`` holds."""
    import torch

    seen: dict[int, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(state)
    return sum(seen.values())


# --- one session --------------------------------------------------------------------------------
def _np(masks: Any) -> np.ndarray:
    if hasattr(masks, "detach"):
        masks = masks.detach().float().cpu().numpy()
    return np.asarray(masks, np.float32)


def session(
    predictor: Any,
    clip: Path,
    objects: list[tuple[int, list[list[float]]]],
    max_frames: int | None = None,
    keep: bool = False,
    between: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """``init_state``, one click per object on frame 0, ``propagate_in_video``: seconds of each
    phase, frames yielded, the masks (``keep``). ``between(phase, state)`` runs untimed after
    "init", after the clicks ("prompts") and after "propagate" (memory readings, server
    statistics); the state stays open (the caller closes it)."""
    t0 = time.perf_counter()
    state = predictor.init_state(str(clip))
    t_init = time.perf_counter() - t0
    if between:
        between("init", state)
    t0 = time.perf_counter()
    for obj_id, points in objects:
        predictor.add_new_points_or_box(state, 0, obj_id, points=points, labels=[1])
    t_prompts = time.perf_counter() - t0
    if between:
        between("prompts", state)
    masks: list[np.ndarray] = []
    frames = 0
    t0 = time.perf_counter()
    for _, _, m in predictor.propagate_in_video(state, max_frame_num_to_track=max_frames):
        frames += 1
        if keep:
            masks.append(_np(m))
    t_prop = time.perf_counter() - t0
    if between:
        between("propagate", state)
    return {
        "state": state,
        "init_s": t_init,
        "prompts_s": t_prompts,
        "propagate_s": t_prop,
        "frames": frames,
        "masks": masks,
    }


def compare_masks(ours: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, Any]:
    """Max |logit difference| and min IoU (logits > 0) over every frame and object."""
    if len(ours) != len(ref) or not ours:
        return {"frames": [len(ours), len(ref)], "max_logit_diff": None, "min_iou": None}
    diff, worst_iou, nonempty = 0.0, 1.0, 0
    for a, b in zip(ours, ref):
        if a.shape != b.shape:
            return {"frames": len(ours), "shape_mismatch": [list(a.shape), list(b.shape)]}
        diff = max(diff, float(np.abs(a - b).max()))
        pa, pb = a > 0, b > 0
        union = (pa | pb).reshape(len(a), -1).sum(1)
        inter = (pa & pb).reshape(len(a), -1).sum(1)
        nonempty += int((pb.reshape(len(b), -1).sum(1) > 0).sum())
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        worst_iou = min(worst_iou, float(iou.min()))
    return {
        "frames": len(ours),
        "max_logit_diff": diff,
        "min_iou": worst_iou,
        "nonempty_masks_sam2": nonempty,
    }


# --- Triton: statistics, metrics, memory --------------------------------------------------------
def add_delta(total: dict, before: dict | None, after: dict | None) -> None:
    if not before or not after:
        return
    for name, vals in after.items():
        acc = total.setdefault(name, {k: 0 for k in vals})
        for k, v in vals.items():
            acc[k] += v - before.get(name, {}).get(k, 0)


def triton_breakdown(delta: dict, computed: int, wall_s: float) -> dict[str, Any] | None:
    """Milliseconds per computed frame: the four graphs' compute time (Triton's
    ``compute_infer``; their queueing apart), the python backend's own work (``sam2_video``'s
    compute minus its graphs' request times) and the rest of the client's wall time (transport,
    (de)serialisation, the client's mask resize)."""
    if not delta or computed == 0 or vs.VIDEO_MODEL not in delta:
        return None

    def ms(name: str, key: str) -> float:
        return delta.get(name, {}).get(key, 0) / 1e6 / computed

    graphs = SERVER_MODELS[:-1]
    parts = {name: ms(name, "compute_infer_ns") for name in graphs}
    parts["graphs: queue + BLS/IPC outside compute"] = sum(
        ms(n, "success_ns") - ms(n, "compute_infer_ns") for n in graphs
    )
    parts["sam2_video python backend (numpy, copies)"] = ms(
        vs.VIDEO_MODEL, "compute_infer_ns"
    ) - sum(ms(n, "success_ns") for n in graphs)
    parts["client + transport (rest of the wall time)"] = wall_s * 1e3 / computed - ms(
        vs.VIDEO_MODEL, "success_ns"
    )
    return {
        "ms_per_frame": parts,
        "calls_per_frame": {n: delta.get(n, {}).get("count", 0) / computed for n in graphs},
        "total_ms_per_frame": wall_s * 1e3 / computed,
    }


def sam2_breakdown(parts: dict[str, float], computed: int, wall_s: float) -> dict[str, Any]:
    ms = {name: parts.get(name, 0.0) * 1e3 / computed for _, name in SAM2_PARTS}
    ms["the rest (bookkeeping, mask resize to the video)"] = wall_s * 1e3 / computed - sum(
        ms.values()
    )
    return {"ms_per_frame": ms, "total_ms_per_frame": wall_s * 1e3 / computed}


def held_bytes(metrics_url: str | None) -> float | None:
    from .metrics import metric, try_metrics_text

    text = try_metrics_text(metrics_url)
    if text is None or HELD_METRIC not in text:
        return None
    return metric(text, HELD_METRIC)


def server_memory(pid: int | None) -> dict[str, int | None]:
    from .procmem import tree_memory

    if pid is None:
        return {"rss": None, "pss": None}
    rss, pss = tree_memory([pid])
    return {"rss": rss, "pss": pss}


# --- bytes on the wire ----------------------------------------------------------------------------
def counted_session(
    url: str, protocol: str, clip: Path, objects: list, frames: int, propagate: int, steps: int
) -> dict[str, Any]:
    """One session through ``CountingProxy``: request/response bytes of ``init_state``, of the
    clicks and of ``propagate`` propagated frames (a readiness call first, off the count)."""
    from sam2_triton import SAM2VideoPredictor

    from .wirebytes import CountingProxy

    host, port = url.removeprefix("http://").rsplit(":", 1)
    out: dict[str, Any] = {"protocol": protocol, "frames": frames}
    with CountingProxy(host, int(port)) as proxy:
        address = proxy.address if protocol == "grpc" else f"http://{proxy.address}"
        with SAM2VideoPredictor(
            url=address, protocol=protocol, timeout_s=TIMEOUT_S, propagate_steps=steps
        ) as predictor:
            predictor.client.wait_until_ready()

            def phase(name: str, fn: Callable[[], Any]) -> Any:
                time.sleep(0.2)
                proxy.reset()
                value = fn()
                time.sleep(0.2)
                sent, received = proxy.counts()
                out[name] = {"request": sent, "response": received}
                return value

            state = phase("init", lambda: predictor.init_state(str(clip)))
            phase(
                "clicks",
                lambda: [
                    predictor.add_new_points_or_box(state, 0, o, points=p, labels=[1])
                    for o, p in objects
                ],
            )
            done = phase(
                "propagate",
                lambda: sum(
                    1
                    for _ in predictor.propagate_in_video(
                        state, max_frame_num_to_track=propagate - 1
                    )
                ),
            )
            predictor.close_state(state)
    out["propagated_frames"] = done
    out["objects"] = len(objects)
    return out


def tensor_bytes(objects: int) -> dict[str, int]:
    """The tensors' own bytes (no framing): an uploaded frame (uint8 ``[3, 1024, 1024]``) and a
    propagated frame's masks (float32 ``[O, 1, 256, 256]`` logits)."""
    low = vs.LOW_RES_SIZE
    return {
        "frame_upload": 3 * vs.IMAGE_SIZE * vs.IMAGE_SIZE,
        "masks_per_frame": objects * low * low * 4,
    }


# --- the export -----------------------------------------------------------------------------------
def has_video(repo: Path) -> bool:
    return (repo / vs.VIDEO_MODEL).is_dir() and all(
        (repo / m / "1" / "model.onnx").is_file() for m in vs.VIDEO_GRAPHS
    )


def ensure_video_export(work_dir: Path, seed: int, log) -> Path:
    """``sam2-triton export --variant tiny --random-weights --seed SEED --video`` into
    ``work_dir``, reused when a previous run left a matching one there: same weights, and every
    config file and ``model.py`` shim as the current export would write it (an older export's
    configs, e.g. ``sam2_video`` before batching or no ``sam2_video_stream``, mean a re-export)."""
    repo = work_dir / f"{VARIANT}-seed{seed}-fp32"
    m = read_manifest(repo) or {}
    w = m.get("weights", {})
    if has_video(repo) and w.get("random") and w.get("seed") == seed:
        stale = stale_configs(repo, m, video=True, detector=False)
        if not stale:
            log(f"reusing the video export in {repo}")
            return repo
        log(f"the cached export in {repo} is stale ({', '.join(stale[:4])}"
            f"{', ...' if len(stale) > 4 else ''}): exporting again")  # fmt: skip
    log(f"exporting {VARIANT} with --video into {repo} (cached for later runs; minutes)")
    args = ["--variant", VARIANT, "--random-weights", "--seed", str(seed), "--video"]
    return run_export(args, repo)


def state_dict_for(repo: Path | None, seed: int) -> tuple[dict, str, str]:
    """SAM 2's weights and config of ``repo`` (its manifest: variant, random weights with a seed
    or a checkpoint); without a manifest: tiny, random weights ``seed``."""
    from sam2_triton_export import checkpoints

    manifest = (read_manifest(repo) or {}) if repo else {}
    variant = manifest.get("variant", VARIANT)
    config = checkpoints.checkpoint_info(variant).config
    w = manifest.get("weights", {})
    if w and not w.get("random"):
        path = Path(w.get("path", ""))
        if not path.is_file():
            raise BenchSetupError(f"{repo} was exported from {path}, which is not here")
        return checkpoints.load_state_dict(path), config, f"{variant}, checkpoint {path}"
    seed = int(w.get("seed", seed))
    model = checkpoints.build_model(variant, seed=seed)
    return model.state_dict(), config, f"{variant}, random weights (seed {seed})"


# --- the run --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=6, help="frames of the clip (default 6)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved timed rounds (default 2)"
    )
    parser.add_argument(
        "--video-size", default="480x640", help="HxW of the clip's JPEG frames (default 480x640)"
    )
    parser.add_argument(
        "--propagate-steps",
        type=int,
        default=1,
        help="frames per propagation request (SAM2VideoPredictor.propagate_steps, default 1)",
    )
    parser.add_argument(
        "--model-repository", type=Path, help="an export with --video (default: cached one)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="export cache (default <bench cache>/video)"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="random weights seed (default 0)")
    parser.add_argument(
        "--url", help="an existing server's gRPC host:port instead of the local Triton"
    )
    parser.add_argument("--http-url", help="with --url: its HTTP endpoint (http://host:port)")
    parser.add_argument("--metrics-url", help="with --url: its metrics endpoint (host:port)")
    parser.add_argument("--device", default="cpu", help="torch device of SAM 2 (cpu, cuda)")
    parser.add_argument("--skip-http", action="store_true", help="no HTTP variant")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument(
        "--markdown", type=Path, help="write/replace the '## Video' section of this file"
    )


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    if h < 16 or w < 16:
        raise BenchSetupError(f"video size {text} too small")
    return h, w


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        result = measure(args, log)
    except BenchSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["command"] = COMMAND + " " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = report(result)
    print(text)
    if args.markdown:
        from .report import write_section

        write_section(args.markdown, "## Video", section(result), keep=KEEP)
        log(f"wrote the '## Video' section of {args.markdown}")
    r = result["ratio"]
    log(
        f"Triton gRPC / SAM 2 propagation frames/s: {r['grpc']:.2f}x (target >= {TARGET}x: "
        f"{'met' if r['grpc'] >= TARGET else 'missed'}); {result['duration_s']:.0f} s"
    )
    return 0


def measure(args: argparse.Namespace, log) -> dict[str, Any]:
    import torch

    if args.frames < 2:
        raise BenchSetupError("--frames must be >= 2")
    h, w = _size(args.video_size)
    started = time.time()
    described = machine.describe()
    variants = [v for v in VARIANTS if not (args.skip_http and v == "triton http")]
    objs = clicks(h, w)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sam2-video-bench-")))
        clip = write_clip(tmp / "clip", args.frames, h, w)
        repo = args.model_repository
        if args.url:
            grpc_url, http_url, metrics_url, pid = args.url, args.http_url, args.metrics_url, None
            server_info = f"external server {args.url}"
            if http_url is None and "triton http" in variants:
                variants.remove("triton http")
        else:
            from sam2_triton_serve.launcher import LocalTritonServer

            if repo is None:
                repo = ensure_video_export(
                    args.work_dir or default_work_dir() / "video", args.seed, log
                )
            if not has_video(repo):
                raise BenchSetupError(f"{repo} has no video models: export it with --video")
            log(f"starting a local Triton on {repo}")
            server = stack.enter_context(
                LocalTritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
            )
            grpc_url, http_url, metrics_url, pid = (
                server.grpc_url, server.http_url, server.metrics_url, server.pid,
            )  # fmt: skip
            server_info = f"local tritonserver (CPU flavour), ready in {server.start_seconds:.1f} s"
        state_dict, config, weights = state_dict_for(repo, args.seed)
        log(f"SAM 2 in-process on {args.device} ({weights}); clip {args.frames} x {h}x{w}")
        ref = reference_predictor(state_dict, args.device, config)
        parts = timed_sam2(ref)
        from sam2_triton import SAM2VideoPredictor

        preds = {"sam2": ref}
        for v in variants[1:]:
            proto = v.split()[1]
            preds[v] = stack.enter_context(
                SAM2VideoPredictor(
                    url=grpc_url if proto == "grpc" else http_url,
                    protocol=proto,
                    timeout_s=TIMEOUT_S,
                    propagate_steps=args.propagate_steps,
                )
            )
            preds[v].client.wait_until_ready()
        memory: dict[str, Any] = {"idle": {**server_memory(pid), "held": held_bytes(metrics_url)}}

        # warm-up (untimed): the counted sessions (bytes on the wire) and SAM 2 on 4 frames
        wire = {}
        short = 2  # frames propagated by the warm-ups (frame 0 and one computed frame)
        for v in variants[1:]:
            proto = v.split()[1]
            url = grpc_url if proto == "grpc" else http_url
            t0 = time.perf_counter()
            wire[proto] = counted_session(
                url, proto, clip, objs, args.frames, short, args.propagate_steps
            )
            log(f"warm-up {v} (through the counting relay): {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        warm = session(ref, clip, objs, max_frames=short - 1)
        close(ref, warm["state"])
        parts.take()
        log(f"warm-up sam2: {time.perf_counter() - t0:.1f} s")
        memory["after_warm_up"] = {**server_memory(pid), "held": held_bytes(metrics_url)}

        # one object (untimed for the comparison; memory per object)
        one = {}
        for v in ("triton grpc", "sam2"):
            readings: dict[str, Any] = {}

            def read(phase: str, state: Any, v: str = v, readings: dict = readings) -> None:
                if phase == "prompts":
                    return
                if v == "sam2":
                    readings[phase] = sam2_memory(state)
                else:
                    readings[phase] = {**server_memory(pid), "held": held_bytes(metrics_url)}

            res = session(preds[v], clip, objs[:1], between=read)
            close(preds[v], res["state"])
            parts.take()
            if v != "sam2":
                readings["closed"] = {**server_memory(pid), "held": held_bytes(metrics_url)}
            one[v] = {k: res[k] for k in ("init_s", "prompts_s", "propagate_s", "frames")}
            one[v]["memory"] = readings
            log(f"1 object, {v}: propagation {res['frames'] / res['propagate_s']:.2f} frames/s")

        # timed rounds: 2 objects, rotated order
        samples: dict[str, list[dict]] = {v: [] for v in variants}
        masks: dict[str, list[np.ndarray]] = {}
        sam2_parts: list[dict[str, float]] = []
        delta: dict[str, dict[str, int]] = {}
        triton_wall = {"s": 0.0, "computed": 0}
        two: dict[str, Any] = {}
        rounds = Rounds(args.repeats)
        for r in rounds:
            for v in Rounds.order(variants, r):
                readings = {}
                stats: dict[str, Any] = {}

                def read(
                    phase: str, state: Any, v: str = v, readings: dict = readings, stats=stats
                ) -> None:
                    if v == "sam2":
                        if phase == "prompts":
                            parts.take()  # the encoder of init_state, the clicks' decoder
                        else:
                            readings[phase] = sam2_memory(state)
                        return
                    if phase == "prompts":
                        stats["before"] = model_statistics(grpc_url, "grpc", SERVER_MODELS)
                        return
                    if phase == "propagate":
                        stats["after"] = model_statistics(grpc_url, "grpc", SERVER_MODELS)
                    readings[phase] = {**server_memory(pid), "held": held_bytes(metrics_url)}

                res = session(preds[v], clip, objs, keep=(r == 0), between=read)
                if v == "sam2":
                    sam2_parts.append(parts.take())
                else:
                    add_delta(delta, stats.get("before"), stats.get("after"))
                    triton_wall["s"] += res["propagate_s"]
                    triton_wall["computed"] += res["frames"] - 1
                close(preds[v], res["state"])
                if r == 0:
                    masks[v] = res["masks"]
                    two[v] = readings
                samples[v].append(
                    {k: res[k] for k in ("init_s", "prompts_s", "propagate_s", "frames")}
                )
                log(
                    f"round {r + 1}: {v}: propagation {res['frames'] / res['propagate_s']:.2f} "
                    f"frames/s ({res['propagate_s']:.1f} s), init {res['init_s']:.1f} s, "
                    f"clicks {res['prompts_s']:.2f} s"
                )
        memory["end"] = {**server_memory(pid), "held": held_bytes(metrics_url)}

    fps = {v: [s["frames"] / s["propagate_s"] for s in samples[v]] for v in variants}
    setup = {v: [s["init_s"] + s["prompts_s"] for s in samples[v]] for v in variants}
    summary = {v: summarize(fps[v]) for v in variants}
    ratio, paired = {}, {}
    for v in variants[1:]:
        proto = v.split()[1]
        ratio[proto] = summary[v]["median"] / summary["sam2"]["median"]
        p = paired_ratio(fps[v], fps["sam2"])
        paired[proto] = p["median"] if p else None
    computed = sum(s["frames"] - 1 for s in samples["sam2"])
    sam2_total = sum(s["propagate_s"] for s in samples["sam2"])
    sam2_sum = {n: sum(p.get(n, 0.0) for p in sam2_parts) for _, n in SAM2_PARTS}
    exact = {v: compare_masks(masks.get(v, []), masks.get("sam2", [])) for v in variants[1:]}
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "server": server_info,
        "model_repository": str(repo) if repo else None,
        "weights": weights,
        "clip": {
            "frames": args.frames,
            "height": h,
            "width": w,
            "objects": len(objs),
            "clicks": objs,
        },  # fmt: skip
        "propagate_steps": args.propagate_steps,
        "repeats": rounds.done,
        "sam2_device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": {**described, "load_average_end": machine.load_average()},
        "variants": variants,
        "samples": samples,
        "fps": fps,
        "summary": summary,
        "setup_s": {v: summarize(setup[v]) for v in variants},
        "ratio": ratio,
        "paired_ratio": paired,
        "target": TARGET,
        "exactness": exact,
        "one_object": one,
        "two_objects_memory": two,
        "memory": memory,
        "wire": wire,
        "tensor_bytes": tensor_bytes(len(objs)),
        "breakdown": {
            "triton": triton_breakdown(delta, triton_wall["computed"], triton_wall["s"]),
            "sam2": sam2_breakdown(sam2_sum, computed, sam2_total) if computed else None,
            "triton_stats_delta": delta,
        },
    }


def close(predictor: Any, state: Any) -> None:
    if isinstance(state, dict):  # SAM 2's inference_state: dropping it frees it
        state.clear()
    else:
        predictor.close_state(state)


# --- report ---------------------------------------------------------------------------------------
def _mb(n: float | None) -> str:
    from .report import fmt_bytes

    return fmt_bytes(n)


def _f(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def memory_model(result: dict) -> dict[str, float | None]:
    """Per frame and per object from ``sam2_video_held_bytes``: frames (after init), frames +
    features + 1 object's memory bank (1 object, after propagation), + 1 more object."""
    n = result["clip"]["frames"]
    one = result["one_object"].get("triton grpc", {}).get("memory", {})
    two = result["two_objects_memory"].get("triton grpc", {})
    h_init = (one.get("init") or {}).get("held")
    h1 = (one.get("propagate") or {}).get("held")
    h2 = (two.get("propagate") or {}).get("held")
    out: dict[str, float | None] = {"frames_per_frame": None, "object_per_frame": None,
                                    "features_per_frame": None}  # fmt: skip
    if h_init is not None:
        out["frames_per_frame"] = h_init / n
    if h1 is not None and h2 is not None:
        out["object_per_frame"] = (h2 - h1) / n
        if h_init is not None:
            out["features_per_frame"] = (h1 - h_init - (h2 - h1)) / n
    s1 = result["one_object"].get("sam2", {}).get("memory", {})
    s2 = result["two_objects_memory"].get("sam2", {})
    si = (s1.get("init") or {}).get("images_bytes")
    sp1 = (s1.get("propagate") or {}).get("state_bytes")
    sp2 = (s2.get("propagate") or {}).get("state_bytes")
    out["sam2_frames_per_frame"] = None if si is None else si / n
    out["sam2_object_per_frame"] = None if sp1 is None or sp2 is None else (sp2 - sp1) / n
    return out


def report(result: dict) -> str:
    """The Markdown tables of a run (the "## Video" section of docs/benchmarks.md)."""
    s, setup, variants = result["summary"], result["setup_s"], result["variants"]
    sam2 = s["sam2"]["median"]
    names = {"sam2": "SAM 2 `SAM2VideoPredictor` in-process", "triton grpc": "Triton, gRPC",
             "triton http": "Triton, HTTP"}  # fmt: skip
    rows = [
        "| variant | rounds | propagation frames/s (median) | min–max | vs SAM 2 | paired | "
        "init_state + 2 clicks (median) | max \\|logit diff\\| vs SAM 2 | min IoU vs SAM 2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        e = result["exactness"].get(v, {})
        paired = result["paired_ratio"].get(v.split()[-1]) if v != "sam2" else None
        rows.append(
            f"| {names[v]} | {s[v]['n']} | {s[v]['median']:.3f} | {s[v]['min']:.3f}–"
            f"{s[v]['max']:.3f} | {'**' if v != 'sam2' else ''}{s[v]['median'] / sam2:.2f}×"
            f"{'**' if v != 'sam2' else ''} | {_f(paired)}{'×' if paired else ''} | "
            f"{setup[v]['median']:.2f} s | {_f(e.get('max_logit_diff'), '.1e')} | "
            f"{_f(e.get('min_iou'), '.4f')} |"
        )
    out = ["\n".join(rows), ""]

    # one object
    one = result["one_object"]
    if one:
        cells = []
        for v in ("sam2", "triton grpc"):
            o = one.get(v)
            if o:
                cells.append(f"{names[v]} {o['frames'] / o['propagate_s']:.3f} frames/s")
        out.append(
            "One object (one session each after the warm-up, before the timed rounds; not "
            "interleaved): " + "; ".join(cells) + ".\n"
        )

    # wire
    wire = result["wire"]
    if wire:
        n = result["clip"]["frames"]
        tb = result["tensor_bytes"]
        rows = [
            "| protocol | init_state: per uploaded frame | clicks: per click | propagation: per "
            "frame (2 objects) |",
            "|---|---|---|---|",
        ]
        for proto, wv in wire.items():

            def cell(key: str, per: int, wv: dict = wv) -> str:
                x = wv[key]
                return (
                    f"{_mb((x['request'] + x['response']) / per)} ({_mb(x['request'] / per)} ↑ "
                    f"+ {_mb(x['response'] / per)} ↓)"
                )

            rows.append(
                f"| {proto} | {cell('init', n)} | {cell('clicks', wv['objects'])} | "
                f"{cell('propagate', wv['propagated_frames'])} |"
            )
        rows.append(
            f"| tensors alone | {_mb(tb['frame_upload'])} (uint8 3×1024×1024) | – | "
            f"{_mb(tb['masks_per_frame'])} (float32 logits 2×1×256×256) |"
        )
        out += ["\n".join(rows), ""]

    # memory
    mm = memory_model(result)
    one_m = one.get("triton grpc", {}).get("memory", {})
    two_m = result["two_objects_memory"].get("triton grpc", {})
    s1 = one.get("sam2", {}).get("memory", {})
    s2 = result["two_objects_memory"].get("sam2", {})

    def held(d: dict, k: str) -> str:
        return _mb((d.get(k) or {}).get("held"))

    def rss(d: dict, k: str) -> str:
        x = d.get(k) or {}
        return f"{_mb(x.get('rss'))} / {_mb(x.get('pss'))}"

    def sb(d: dict, k: str) -> str:
        return _mb((d.get(k) or {}).get("state_bytes"))

    idle = result["memory"].get("idle", {})
    warm = result["memory"].get("after_warm_up", {})
    rows = [
        "| objects | point | `sam2_video_held_bytes` | tritonserver tree RSS / PSS | SAM 2 "
        "`inference_state` tensors |",
        "|---|---|---|---|---|",
        f"| – | server idle (models loaded) | {_mb(idle.get('held'))} | "
        f"{_mb(idle.get('rss'))} / {_mb(idle.get('pss'))} | – |",
        f"| – | after the warm-up sessions (closed) | {_mb(warm.get('held'))} | "
        f"{_mb(warm.get('rss'))} / {_mb(warm.get('pss'))} | – |",
        f"| 1 | after init_state | {held(one_m, 'init')} | {rss(one_m, 'init')} | "
        f"{sb(s1, 'init')} |",
        f"| 1 | after propagation | {held(one_m, 'propagate')} | {rss(one_m, 'propagate')} | "
        f"{sb(s1, 'propagate')} |",
        f"| 1 | after close_state | {held(one_m, 'closed')} | {rss(one_m, 'closed')} | – |",
        f"| 2 | after init_state | {held(two_m, 'init')} | {rss(two_m, 'init')} | "
        f"{sb(s2, 'init')} |",
        f"| 2 | after propagation | {held(two_m, 'propagate')} | {rss(two_m, 'propagate')} | "
        f"{sb(s2, 'propagate')} |",
    ]
    out += ["\n".join(rows), ""]
    out.append(
        f"Per frame held by the server: {_mb(mm['frames_per_frame'])} of uploaded frame, "
        f"{_mb(mm['features_per_frame'])} of cached features; per object and frame: "
        f"{_mb(mm['object_per_frame'])} of memory bank (as `sam2_video_held_bytes` counts it). "
        f"SAM 2 in-process: {_mb(mm['sam2_frames_per_frame'])} per frame (its float32 frames; "
        "the rest of its state after init is the last frame's features), "
        f"{_mb(mm['sam2_object_per_frame'])} per object and frame.\n"
    )

    # breakdown
    b = result["breakdown"]
    tri, ref = b.get("triton"), b.get("sam2")
    if tri or ref:
        rows = ["| where a propagated frame's time goes (2 objects, ms per computed frame) | ms |",
                "|---|---|"]  # fmt: skip
        if ref:
            for k, v in ref["ms_per_frame"].items():
                rows.append(f"| SAM 2: {k} | {v:.0f} |")
            rows.append(f"| **SAM 2: total** | **{ref['total_ms_per_frame']:.0f}** |")
        if tri:
            for k, v in tri["ms_per_frame"].items():
                calls = tri["calls_per_frame"].get(k)
                label = f"`{k}` compute ({calls:.1f} calls/frame)" if calls is not None else k
                rows.append(f"| Triton: {label} | {v:.0f} |")
            rows.append(
                f"| **Triton (gRPC + HTTP): total** | **{tri['total_ms_per_frame']:.0f}** |"
            )
        out += ["\n".join(rows), ""]
    return "\n".join(out)


def section(result: dict) -> str:
    """The whole "## Video" section: the command, the machine, the tables (analysis is added by
    hand in docs/benchmarks.md after a documented run)."""
    m = result["machine"]
    c = result["clip"]
    return (
        "## Video\n\n"
        f"```\n{result['command']}\n```\n\n"
        f"{result['date']}, {result['duration_s']:.0f} s; {m['cpu']}, {m['usable_cores']} usable "
        f"cores, load average {m['load_average_start']} → {m['load_average_end']}; "
        f"{result['server']}; SAM 2 on {result['sam2_device']} ({result['torch_threads']} torch "
        f"threads); {result['weights']}. Clip: {c['frames']} JPEG frames of {c['height']}×"
        f"{c['width']}, {c['objects']} objects clicked on frame 0; {result['repeats']} "
        f"interleaved rounds; `propagate_steps` {result['propagate_steps']}.\n\n"
        + report(result)
        + "\n### GPU\n\n"
        "No GPU was available for this run. On a GPU host serving a `--video` export, run the "
        "same comparison against that server, with SAM 2 on the same GPU (`--device cuda`; its "
        "weights are read from the repository's manifest):\n\n"
        f"```\n{GPU_COMMAND}\n```\n\n"
        "With `--url` the server's process memory is not read (its processes are not this "
        "host's); `sam2_video_held_bytes` is, from `--metrics-url`; the per-model statistics "
        "come from the gRPC endpoint (a deployment may restrict them: the breakdown is then "
        "left out).\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
