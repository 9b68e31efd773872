"""Text prompts: Lang-SAM's pipeline (Grounding DINO, then SAM 2 on its boxes) through Triton
(``sam2_text``, one request per image) vs the same two models in PyTorch in this process.

    sam2-triton bench text --images 3 --repeats 2 --json docs/text-benchmark.json \\
        --markdown docs/benchmarks.md     # or: python -m sam2_triton_bench.text_bench ...

Models: SAM 2.1 (``--variant``, random weights ``--seed`` or ``--checkpoint``) and a Grounding
DINO directory (``--detector DIR``; default: seeded random weights of ``--detector-arch``, swin-t
having grounding-dino-tiny's shapes), exported with ``sam2-triton export --detector`` into a
cache folder and served by a local Triton (CPU flavour; ``--url``: a running server instead).
PyTorch side, as ``lang_sam`` runs it: ``GroundingDinoProcessor`` + ``GroundingDinoForObject
Detection`` + ``post_process_grounded_object_detection(threshold=box_threshold,
text_threshold=...)``, then ``SAM2ImagePredictor.set_image(np.asarray(image))`` and
``predict(box=boxes, multimask_output=False)`` (SAM 2 built by ``build_sam2``, as exported).
Triton side: ``sam2_triton.LangSAM.predict`` (PNG upload, one request, RLE masks decoded).

Every round, each image (a new synthetic picture, so Triton's response cache never answers the
encoder; sizes cycle over ``--sizes``) runs on both sides in a rotated order. The default sizes
fill the detector's canvases; ``sam2_text`` pads any other shape to its canvas (static graphs)
where Lang-SAM runs it unpadded, so such images are compared (and reported) apart. Random weights
score nearly every query near 1.0, so unless ``--box-threshold`` is given, the box threshold is
calibrated once on the warm-up image: midway between the ``--objects``-th and the next highest
PyTorch score. Both sides get the same thresholds; their object counts must agree per image
(a mismatch is reported as an error). Reported: seconds per image (medians, ratio, paired
ratio), per-image exactness (boxes, scores, labels, mask IoU) and where the time goes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import spec, text_spec

from . import machine
from .everything_bench import parse_sizes, png_seconds, stats_delta
from .metrics import model_statistics
from .stats import Rounds, paired_ratio, summarize
from .targets import (
    BenchSetupError,
    _matches,
    default_work_dir,
    has_models,
    read_manifest,
    run_export,
    stale_configs,
)
from .text_report import HEADING, KEEP, section
from .text_sides import SIDES, LangSamTorch, calibrate, exactness, one_image, picture
from .video_bench import state_dict_for

TARGET = 1.0  # Triton seconds per image / PyTorch in-process (the goal)
TIMEOUT_S = 1800.0
COMMAND = "sam2-triton bench text"
STAT_MODELS = (*text_spec.DETECTOR_MODELS.values(), spec.ENCODER_MODEL, spec.DECODER_MODEL)
WARM_SEED = 10_000  # the warm-up pictures' seeds (the timed ones count from 1)


# --- exports -------------------------------------------------------------------------------------
def ensure_random_detector(work_dir: Path, arch: str, seed: int, log: Any) -> Path:
    """``write_random_detector(arch, seed)`` in ``work_dir``, reused when complete and written
    by the current builder (``detector_random.BUILD``)."""
    from sam2_triton_export.detector_export import REQUIRED_FILES
    from sam2_triton_export.detector_random import BUILD, write_random_detector

    out = work_dir / f"gdino-{arch}-seed{seed}-build{BUILD}"  # a new builder: a new directory
    if all((out / f).is_file() for f in REQUIRED_FILES):
        return out
    log(f"writing a Grounding DINO ({arch}) with random weights (seed {seed}) into {out}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_random_detector(partial, arch, seed)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def ensure_text_export(
    work_dir: Path, variant: str, checkpoint: Path | None, seed: int, detector: Path, log: Any
) -> Path:
    """``sam2-triton export --detector DIR`` (SAM 2.1 ``variant``: ``checkpoint`` or random
    weights ``seed``) into ``work_dir``, reused when a previous run left a matching one there
    (same weights, same detector directory, configs as the current exporter writes them)."""
    det = detector.resolve()
    tag = det.name if det.parent == work_dir.resolve() else (
        f"{det.name}-{hashlib.sha1(str(det).encode()).hexdigest()[:8]}")  # fmt: skip
    weights_tag = f"seed{seed}" if checkpoint is None else f"ckpt-{checkpoint.stem}"
    repo = work_dir / f"{variant}-{weights_tag}-fp32-{tag}"
    m = read_manifest(repo)
    text = (m or {}).get("text", {})
    if (
        has_models(repo)
        and _matches(m, variant, "float32", checkpoint, seed)
        and text.get("enabled")
        and text.get("model_dir") == str(det)
        and all((repo / g / "1" / "model.onnx").is_file() for g in text_spec.DETECTOR_MODELS.values())
    ):  # fmt: skip
        video = bool(m.get("video", {}).get("enabled"))
        stale = stale_configs(repo, m, video=video, detector=True)
        if not stale:
            log(f"reusing the text export in {repo}")
            return repo
        log(f"the cached export in {repo} is stale ({', '.join(stale[:4])}): exporting again")
    weights = ["--checkpoint", str(checkpoint)] if checkpoint else ["--random-weights", "--seed", str(seed)]  # fmt: skip
    log(f"exporting {variant} with --detector {det} into {repo} (cached; minutes)")
    return run_export(["--variant", variant, *weights, "--detector", str(det)], repo)


def ort_threads(repo: Path | None) -> dict[str, str]:
    """``ORT_INTRA_OP_THREADS`` of the CPU flavour's graphs in ``repo`` ("0": os.cpu_count())."""
    from sam2_triton_serve import repository

    out = {}
    for model in STAT_MODELS:
        path = repo / model / "configs" / "cpu.pbtxt" if repo else None
        if path and path.is_file():
            params = repository.parse(path.read_text()).parameters
            if "ORT_INTRA_OP_THREADS" in params:
                out[model] = params["ORT_INTRA_OP_THREADS"].string_value
    return out


def canvas_of(size: tuple[int, int], edges: tuple[int, int]) -> tuple[str, bool]:
    """The detector canvas of an ``H x W`` image and whether the processor's resize fills it
    (Lang-SAM runs one image unpadded; ``sam2_text`` pads it to its canvas, and Swin sees the
    padding: only an image that fills its canvas gets the very same input on both sides)."""
    from sam2_triton_server.grounding import resized_size

    resized = resized_size(size, *edges)
    name = text_spec.canvas_for(resized, *edges)
    return name, resized == text_spec.canvases(*edges)[name]


# --- summaries ---------------------------------------------------------------------------------
def triton_breakdown(delta: dict | None, images: int, wall: float, png: float) -> dict | None:
    """Seconds per image: the graphs' request times (Triton's statistics, queue included), the
    client's PNG encoding (timed apart) and the rest of the wall time (``sam2_text``'s own python
    answers from its own thread, so its statistics do not hold it)."""
    if not delta or images == 0:
        return None

    def per(name: str, key: str = "success_ns") -> float:
        return delta.get(name, {}).get(key, 0) / 1e9 / images

    parts = {
        "detector": sum(per(m) for m in text_spec.DETECTOR_MODELS.values()),
        "encoder": per(spec.ENCODER_MODEL),
        "decoder": per(spec.DECODER_MODEL),
        "png": png,
    }
    parts["rest"] = wall - sum(parts.values())
    calls = {m: delta.get(m, {}).get("count", 0) / images for m in STAT_MODELS}
    return {"parts": parts, "calls_per_image": calls,
            "queue_s_per_image": {m: per(m, "queue_ns") for m in STAT_MODELS}}  # fmt: skip


def mean_parts(runs: list[dict]) -> dict[str, float]:
    keys = dict.fromkeys(k for r in runs for k in r["parts_pytorch"])
    return {k: float(np.mean([r["parts_pytorch"].get(k, 0.0) for r in runs])) for k in keys}


# --- the run -------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    import torch

    from sam2_triton import LangSAM

    started = time.time()
    described = machine.describe()
    with ExitStack() as stack:
        work = args.work_dir or default_work_dir() / "text"
        repo = args.model_repository
        manifest = (read_manifest(repo) or {}) if repo else {}
        detector, det_desc = args.detector, f"{args.detector}"
        if detector is None and manifest.get("text", {}).get("enabled"):
            detector = Path(manifest["text"]["model_dir"])
            det_desc = f"{detector} (the export's manifest)"
        if detector is None:
            if args.url:
                raise BenchSetupError("with --url give --detector DIR or --model-repository")
            detector = ensure_random_detector(work, args.detector_arch, args.seed, log)
            det_desc = f"{args.detector_arch}, random weights (seed {args.seed})"
        if args.url:
            url, server_info, threads = args.url, f"the server at {args.url}", None
        else:
            from sam2_triton_serve.launcher import LocalTritonServer

            repo = repo or ensure_text_export(
                work, args.variant, args.checkpoint, args.seed, detector, log
            )
            if not (repo / text_spec.TEXT_MODEL).is_dir():
                raise BenchSetupError(f"{repo} has no {text_spec.TEXT_MODEL}: export --detector")
            log(f"starting a local Triton on {repo}")
            server = stack.enter_context(LocalTritonServer(
                repo, http_port=0, grpc_port=0, metrics_port=0,
                required_models=STAT_MODELS))  # fmt: skip
            url = server.grpc_url if args.protocol == "grpc" else server.http_url
            server_info = f"local tritonserver (CPU flavour), ready in {server.start_seconds:.1f} s"
            threads = ort_threads(repo)
        state_dict, config, weights = state_dict_for(repo, args.seed)
        log(f"PyTorch side on {args.device}: SAM 2 {weights}; Grounding DINO {det_desc}")
        ref = LangSamTorch(detector, state_dict, config, args.device)
        tri = stack.enter_context(LangSAM(url=url, protocol=args.protocol, timeout_s=TIMEOUT_S))
        tri.wait_until_ready(timeout_s=600)
        edges = (ref.info["shortest_edge"], ref.info["longest_edge"])

        canvas = {size: canvas_of(size, edges) for size in args.sizes}
        firsts: dict[str, tuple[int, int]] = {}  # the first size of each canvas: warm-up
        for size in args.sizes:
            firsts.setdefault(canvas[size][0], size)
        warm = [picture(h, w, WARM_SEED + j) for j, (h, w) in enumerate(firsts.values())]
        cal = None
        box_t = args.box_threshold
        if box_t is None:
            t0 = time.perf_counter()
            cal = calibrate(ref, warm[0], args.prompt, args.objects, args.text_threshold)
            box_t = cal["box_threshold"]
            log(f"calibrated box_threshold {box_t:.6f} on the warm-up image (keeps {cal['kept']}, "
                f"margin {cal['margin']}; {time.perf_counter() - t0:.1f} s)")  # fmt: skip
        thresholds = (box_t, args.text_threshold)
        warm_runs = []
        for image in warm:
            warm_runs.append(one_image(ref, tri, image, args.prompt, thresholds, list(SIDES)))
            warm_runs[-1]["fills_canvas"] = canvas[(image.height, image.width)][1]
            done = warm_runs[-1]
            log(f"warm-up {image.height}x{image.width}: PyTorch "
                f"{done['seconds']['pytorch']:.1f} s, Triton {done['seconds']['triton']:.1f} s, "
                f"objects {done['objects']}")  # fmt: skip
        before = model_statistics(url, args.protocol, STAT_MODELS)
        runs: list[dict] = []
        png: list[float] = []
        rounds = Rounds(args.repeats)
        for r in rounds:
            for i in range(args.images):
                h, w = args.sizes[i % len(args.sizes)]
                n = r * args.images + i
                image = picture(h, w, seed=1 + n)  # a new picture: no response cache answers
                res = one_image(ref, tri, image, args.prompt, thresholds, Rounds.order(SIDES, n))
                runs.append({"round": r, "image": i, "seed": 1 + n, **res,
                             "fills_canvas": canvas[(h, w)][1]})  # fmt: skip
                png.append(png_seconds(np.asarray(image)))
                c = res["check"]
                log(f"round {r + 1}, image {i + 1} ({h}x{w}): PyTorch "
                    f"{res['seconds']['pytorch']:.2f} s, Triton {res['seconds']['triton']:.2f} s; "
                    f"objects {c['objects']}, box diff {c['box_px']:.1e} px, "
                    f"min IoU {c['min_iou']}")  # fmt: skip
        after = model_statistics(url, args.protocol, STAT_MODELS)

    seconds = {s: [x["seconds"][s] for x in runs] for s in SIDES}
    summary = {s: summarize(v) for s, v in seconds.items()}
    ratio = summary["triton"]["median"] / summary["pytorch"]["median"]
    paired = paired_ratio(seconds["triton"], seconds["pytorch"])
    by_size = {}
    for h, w in args.sizes:
        sel = [x for x in runs if x["size"] == [h, w]]
        if sel:
            med = {s: summarize([x["seconds"][s] for x in sel])["median"] for s in SIDES}
            by_size[f"{h}x{w}"] = {"images": len(sel), "canvas": canvas[(h, w)][0],
                                   "fills_canvas": canvas[(h, w)][1], **med,
                                   "ratio": med["triton"] / med["pytorch"]}  # fmt: skip
    compared = [*warm_runs, *runs]
    errors = [
        f"image {x.get('seed', 'warm-up')} ({x['size'][0]}x{x['size'][1]}"
        f"{'' if x['fills_canvas'] else ', padded to its canvas'}): PyTorch kept "
        f"{x['check']['objects'][0]} objects, Triton {x['check']['objects'][1]}"
        for x in compared
        if not x["check"]["count_equal"]
    ]
    delta = stats_delta(before, after)
    return {
        "schema": 1,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "server": server_info,
        "protocol": args.protocol,
        "model_repository": str(repo) if repo else None,
        "weights": weights,
        "detector": {
            "dir": str(detector),
            "description": det_desc,
            **ref.info,
            "parameters": sum(p.numel() for p in ref.detector.parameters()),
        },
        "prompt": args.prompt,
        "thresholds": {
            "box_threshold": box_t,
            "text_threshold": args.text_threshold,
            "calibration": cal,
            "objects": args.objects if cal else None,
        },
        "sizes": [list(s) for s in args.sizes],
        "images": args.images,
        "repeats": rounds.done,
        "device": args.device,
        "threads": {
            "torch": torch.get_num_threads(),
            "ort_intra_op": threads,
            "cpu_count": None if args.url else os.cpu_count(),
        },  # fmt: skip
        "machine": {**described, "load_average_end": machine.load_average()},
        "warm_up": warm_runs,
        "runs": runs,
        "seconds": seconds,
        "summary": summary,
        "ratio": ratio,
        "paired_ratio": paired["median"] if paired else None,
        "target": TARGET,
        "target_met": ratio <= TARGET,
        "by_size": by_size,
        "exactness": {
            "fills_canvas": exactness([x["check"] for x in compared if x["fills_canvas"]]),
            "padded": exactness([x["check"] for x in compared if not x["fills_canvas"]]),
        },
        "breakdown": {
            "pytorch": mean_parts(runs),
            "triton": triton_breakdown(
                delta, len(runs), float(np.mean(seconds["triton"])), float(np.mean(png))
            ),
        },
        "stats_delta": delta,
        "errors": errors,
    }


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        sizes = parse_sizes(text)
    except ValueError:
        sizes = []
    if not sizes or min(min(s) for s in sizes) < 16:
        raise argparse.ArgumentTypeError(f"expected HxW,HxW,... (each >= 16), got {text!r}")
    return sizes


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``text`` options on ``parser``."""
    a = parser.add_argument
    a("--images", type=int, default=3, help="timed images per round (default 3)")
    a("--repeats", type=int, default=2, help="interleaved rounds, new pictures each (default 2)")
    a("--sizes", type=_sizes, default=[(480, 800), (800, 480)],
      help="HxW,... of the synthetic images, cycled over (default 480x800,800x480: they fill "
      "the 800/1333 canvases; other shapes are padded to theirs by sam2_text, not by "
      "Lang-SAM)")  # fmt: skip
    a("--prompt", default="cat. remote control.", help="the text prompt (default: %(default)r)")
    a("--objects", type=int, default=8,
      help="calibrate box_threshold on the warm-up image so that it keeps this many boxes "
      "(default 8; random weights score nearly every box close to 1)")  # fmt: skip
    a("--box-threshold", type=_unit, default=None,
      help="a fixed box threshold instead of calibrating (Lang-SAM's default: 0.3)")  # fmt: skip
    a("--text-threshold", type=_unit, default=text_spec.TEXT_THRESHOLD,
      help="Lang-SAM's text threshold (default 0.25)")  # fmt: skip
    a("--detector", type=Path, metavar="DIR",
      help="a local Grounding DINO directory (save_pretrained) to export and run; default: "
      "the one of --model-repository's manifest, else random weights of --detector-arch")  # fmt: skip
    a("--detector-arch", choices=("swin-t", "test"), default="swin-t",
      help="architecture of the random detector (default swin-t: grounding-dino-tiny's shapes)")  # fmt: skip
    a("--variant", default="tiny", choices=("tiny", "small", "base_plus", "large"),
      help="SAM 2.1 size to export (default tiny)")  # fmt: skip
    a("--checkpoint", type=Path, help="SAM 2.1 checkpoint to export (default: random weights)")
    a("--seed", type=int, default=0, help="seed of the random weights, both models (default 0)")
    a("--model-repository", type=Path,
      help="an existing export with --detector (default: exported into --work-dir, cached)")  # fmt: skip
    a("--work-dir", type=Path, help="export cache (default <bench cache>/text)")
    a("--url", help="a running server (gRPC host:port, or http://host:port with --protocol "
      "http) instead of a local Triton; the PyTorch side then needs --model-repository or "
      "--detector (SAM 2 weights from the manifest, else random --seed)")  # fmt: skip
    a("--protocol", choices=("grpc", "http"), default="grpc", help="default grpc")
    a("--device", default="cpu", help="torch device of the PyTorch side (cpu, cuda)")
    a("--json", type=Path, help="write the raw numbers here")
    a("--markdown", type=Path, help=f"write/replace the '{HEADING}' section of this file")


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if min(args.images, args.repeats, args.objects) < 1:
        print("error: --images, --repeats and --objects must be >= 1", file=sys.stderr)
        return 1
    try:
        result = measure(args, log)
    except BenchSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["command"] = COMMAND + " " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    text = section(result)
    print(text)
    if args.markdown:
        from .report import write_section

        write_section(args.markdown, HEADING, text, keep=KEEP)
        log(f"wrote the '{HEADING}' section of {args.markdown}")
    log(f"Triton / PyTorch seconds per image: {result['ratio']:.2f}x (target <= {TARGET}x: "
        f"{'met' if result['target_met'] else 'missed'}); {result['duration_s']:.0f} s")  # fmt: skip
    for error in result["errors"]:
        log(f"error: {error}")
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam2_triton_bench.text_bench", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
