"""``sam2-triton export``: SAM 2.1 checkpoint -> verified encoder/decoder ONNX in a Triton repository."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import sys
import time
from importlib import metadata
from pathlib import Path

from sam2_triton import spec, text_spec, video_spec
from sam2_triton_serve import repository

from . import amg_graph, amg_verify, checkpoints, install, onnx_export, verify
from .errors import ExportError, ParityError

logger = logging.getLogger(__name__)

VIDEO_HELP = (
    "also export video tracking (SAM2VideoPredictor): five per-frame ONNX graphs "
    f"({', '.join(video_spec.VIDEO_GRAPHS)}), each verified against PyTorch and SAM 2, and the "
    f"{video_spec.VIDEO_MODEL} session model (and {video_spec.VIDEO_STREAM_MODEL}, its "
    "frame-by-frame gRPC stream), installed together with the image models. "
    "Costs disk (tiny: ~150 MB more, large: ~1 GB; the image encoder is stored a second time) "
    "and time (about 3-5 more minutes on CPU, mostly memory-attention checks); "
    "the server then also holds video frames (video_frame_budget_bytes, default 4 GiB). "
    "Off by default; an export without it removes the video models of an earlier one"
)

DETECTOR_HELP = (
    "also export text prompts (Lang-SAM: Grounding DINO + SAM 2): the Grounding DINO model in "
    "DIR (a transformers save_pretrained directory: config.json, model.safetensors, tokenizer "
    "files; e.g. `huggingface-cli download IDEA-Research/grounding-dino-base --local-dir DIR`) "
    f"as two ONNX graphs ({', '.join(repository.DETECTOR_GRAPHS)}: one per image orientation), "
    "each verified against transformers, and the sam2_text model (text -> masks in one "
    "request). Costs disk (0.6 GB per graph measured for the Swin-T architecture, more for "
    "base) and time (minutes on CPU: verification ~2.5 min per graph for Swin-T). An export "
    "without it removes the text models of an earlier one"
)

RANDOM_WARNING = (
    "WARNING: RANDOM WEIGHTS (seed {seed}). These models produce meaningless masks; they exist "
    "for offline tests and demos. Use --checkpoint or --download for real SAM 2.1 weights."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the export options on ``parser``."""
    parser.add_argument(
        "--variant",
        choices=checkpoints.VARIANTS,
        default="tiny",
        help="SAM 2.1 model size (default: tiny)",
    )
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="official SAM 2.1 checkpoint file (.pt, {'model': state_dict})",
    )
    weights.add_argument(
        "--download",
        action="store_true",
        help="download the official checkpoint (sha256-verified, resumable) into --cache-dir",
    )
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights: torch.manual_seed(--seed) then build_sam2(...); "
        "for offline tests only, masks are meaningless",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where --download keeps checkpoints (default: $SAM2_TRITON_CACHE or "
        "~/.cache/sam2-triton)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("model_repository"),
        help="model repository root (default: model_repository)",
    )
    parser.add_argument(
        "--image-dtype",
        choices=("float32", "float16", "uint8"),
        default="float32",
        help="encoder input dtype: float32 is exact (12 MB/image); float16 "
        "(6 MB) and uint8 (3 MB) are compact, see docs/export.md",
    )
    parser.add_argument(
        "--embedding-dtype",
        choices=("fp32", "fp16"),
        default="fp32",
        help="dtype of the features passed from encoder to decoder: fp16 halves "
        "the 16.8 MB each decode call carries (default fp32)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max abs difference allowed between ONNX and PyTorch (default 1e-4)",
    )
    parser.add_argument("--video", action="store_true", help=VIDEO_HELP)
    parser.add_argument("--detector", type=Path, metavar="DIR", default=None, help=DETECTOR_HELP)
    # Hidden: the smaller video verification case set (video_export.QUICK_*), for the test suite
    # and quick local tries; documented in docs/video.md.
    parser.add_argument("--video-quick-verify", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Execute the export; returns the process exit code."""
    try:
        manifest = export(args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("Nothing was installed; the repository is unchanged.", file=sys.stderr)
        return 1
    print(
        f"Installed {spec.ENCODER_MODEL}, {spec.DECODER_MODEL} and {spec.AMG_MASKS_MODEL} into "
        f"{args.output}"
    )
    if getattr(args, "video", False):
        print(f"Installed the video models {', '.join(repository.VIDEO_MODELS)} into {args.output}")
    if getattr(args, "detector", None):
        print(f"Installed the text models {', '.join(repository.TEXT_MODELS)} into {args.output}")
    if manifest["weights"]["random"]:
        print(RANDOM_WARNING.format(seed=args.seed), file=sys.stderr)
    return 0


def _progress(done: int, total: int) -> None:
    pct = 100 * done / total if total else 0
    print(
        f"\r  downloading: {done / 1e6:7.1f} / {total / 1e6:.1f} MB ({pct:5.1f} %)",
        end="" if done < total else "\n",
        file=sys.stderr,
        flush=True,
    )


def _weights(args: argparse.Namespace) -> tuple[dict | None, dict]:
    if args.random_weights:
        print(RANDOM_WARNING.format(seed=args.seed), file=sys.stderr)
        return None, {"random": True, "seed": args.seed, "description": f"random seed {args.seed}"}
    path = args.checkpoint
    if args.download:
        info = checkpoints.checkpoint_info(args.variant)
        print(f"Checkpoint: {info.url}", file=sys.stderr)
        path = checkpoints.download(args.variant, args.cache_dir, progress=_progress)
    print(f"Loading {path}", file=sys.stderr)
    digest = checkpoints.sha256_file(path)
    official = checkpoints.checkpoint_info(args.variant)
    return checkpoints.load_state_dict(path), {
        "random": False,
        "path": str(path),
        "sha256": digest,
        "official": digest == official.sha256,
        "description": f"{path.name} sha256 {digest[:12]}",
    }


def export(args: argparse.Namespace) -> dict:
    """Export, verify, install; returns the manifest written into the repository."""
    import onnx
    import onnxruntime
    import torch

    from . import detector_export, video_export  # torch at import time: only when exporting
    from .modules import ImageEncoder, PromptDecoder

    t0 = time.perf_counter()
    feature_dtype = {"fp32": "float32", "fp16": "float16"}[args.embedding_dtype]
    state_dict, weights = _weights(args)
    model = checkpoints.build_model(args.variant, state_dict, seed=args.seed)
    fingerprint = checkpoints.weights_fingerprint(model)
    encoder = ImageEncoder(model, fingerprint, args.image_dtype, feature_dtype).eval()
    decoder = PromptDecoder(model, fingerprint).eval()
    opts = repository.RepositoryOptions(image_dtype=args.image_dtype, feature_dtype=feature_dtype)
    enc_rel = f"{spec.ENCODER_MODEL}/1/{repository.MODEL_FILENAME}"
    dec_rel = f"{spec.DECODER_MODEL}/1/{repository.MODEL_FILENAME}"
    amg_rel = f"{spec.AMG_MASKS_MODEL}/1/{repository.MODEL_FILENAME}"
    with install.interrupts_noted() as interrupts, install.staging_dir(args.output) as staged:
        timings = {}
        for rel, fn in (
            (enc_rel, lambda p: onnx_export.export_encoder(encoder, p)),
            (dec_rel, lambda p: onnx_export.export_decoder(decoder, p, feature_dtype)),
            (amg_rel, amg_graph.export),
        ):
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            print(f"Exporting {rel} ...", file=sys.stderr)
            fn(staged / rel)
            onnx_export.check_onnx(staged / rel)
            timings[rel.split("/")[0]] = round(time.perf_counter() - start, 1)
        print(
            "Verifying with onnxruntime against PyTorch and SAM2ImagePredictor ...", file=sys.stderr
        )
        start = time.perf_counter()
        report = verify.verify(
            model, encoder, decoder, staged / enc_rel, staged / dec_rel, tolerance=args.tolerance
        )
        report.amg_masks = amg_verify.verify(staged / amg_rel)
        timings["verify"] = round(time.perf_counter() - start, 1)
        _print_report(report)
        verify.check(report)
        want_video = getattr(args, "video", False)
        video = _export_video(args, model, fingerprint, staged) if want_video else None
        video_rels = [m["file"] for m in video["models"].values()] if video else []
        detector = _export_detector(args, staged) if getattr(args, "detector", None) else None
        detector_rels = [m["file"] for m in detector["models"].values()] if detector else []
        # TensorRT engines are named by the exported files: a re-export never reuses old ones.
        key = repository.engine_cache_key(
            [
                staged / enc_rel,
                staged / dec_rel,
                *(staged / rel for rel in [*video_rels, *detector_rels]),
            ],
            opts,
        )
        opts = dataclasses.replace(opts, engine_cache_key=key)
        if detector:
            info = detector["detector"]
            opts = dataclasses.replace(
                opts,
                detector_shortest_edge=info["shortest_edge"],
                detector_longest_edge=info["longest_edge"],
                detector_num_queries=info["num_queries"],
            )
        configs = repository.config_files(opts, video=bool(video), detector=bool(detector))
        for rel, text in configs.items():
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_text(text)
        manifest = {
            "format": 1,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "variant": args.variant,
            "sam2_config": checkpoints.checkpoint_info(args.variant).config,
            "weights": weights,
            "fingerprint": list(fingerprint),
            "image_dtype": args.image_dtype,
            "feature_dtype": feature_dtype,
            "engine_cache_key": key,
            "versions": {
                "sam2": metadata.version("sam2"),
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "opset": onnx_export.OPSET,
                "sam2_triton": metadata.version("sam2-triton"),
            },
            "models": {
                rel.split("/")[0]: _describe(staged / rel, rel)
                for rel in (enc_rel, dec_rel, amg_rel, *video_rels, *detector_rels)
            },
            "parity": report.as_dict(),
            "video": _video_manifest(video),
            "text": _text_manifest(detector),
            "seconds": {
                **timings,
                **({"video": video["seconds"]["total"]} if video else {}),
                **({"detector": detector["seconds"]} if detector else {}),
                "total": round(time.perf_counter() - t0, 1),
            },
        }
        (staged / repository.MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2) + "\n")
        video_files = video_export.video_files(video) if video else []
        detector_files = detector["files"] if detector else []
        if interrupts:  # an interrupt that a library swallowed: never install
            raise KeyboardInterrupt(f"signal {interrupts[0]} during the export")
        install.install(
            staged,
            args.output,
            [enc_rel, dec_rel, amg_rel, *video_files, *detector_files, *configs],
            last=repository.MANIFEST_FILENAME,
            # an earlier --video export's models would not match these weights; the repository
            # holds exactly what this export says (no text models without --detector)
            remove=[
                *([] if video else [*repository.VIDEO_MODELS, video_export.REPORT_FILE]),
                *([] if detector else [*repository.TEXT_MODELS, detector_export.REPORT_FILE]),
            ],
        )
    return manifest


def _export_video(args: argparse.Namespace, model, fingerprint, staged: Path) -> dict:
    """Export and verify the five video graphs into ``staged``; raise ``ParityError`` (nothing
    installed: the caller's staging directory is discarded) when a check fails."""
    from . import video_export

    quick = getattr(args, "video_quick_verify", False)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report = video_export.stage_video_modules(
        model,
        staged,
        fingerprint=fingerprint,
        memory_cases=video_export.QUICK_MEMORY_CASES if quick else video_export.MEMORY_CASES,
        sam_scenarios=video_export.QUICK_SAM_SCENARIOS if quick else video_export.SAM_SCENARIOS,
        tolerance=args.tolerance,
        progress=say,
    )
    _print_video_report(report)
    if not report["passed"]:
        raise ParityError(
            "video graphs differ from PyTorch/SAM 2: " + "; ".join(report["failures"])
        )
    return report


def _export_detector(args: argparse.Namespace, staged: Path) -> dict:
    """Export and verify the detector graphs into ``staged``; raise ``ParityError`` (nothing
    installed) when a check fails."""
    from . import detector_export

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report = detector_export.stage_detector(args.detector, staged, progress=say)
    for name, result in report["verify"].items():
        cases = [c for c in result["cases"].values() if "slots" in c]
        worst = {k: max((c["slots"][k] for c in cases), default=0.0) for k in ("box_px", "score")}
        tied = sum(c["tied_slots"] for c in cases)
        print(
            f"  {name}: boxes {worst['box_px']:.2e} px, scores {worst['score']:.2e} "
            f"(ONNX vs transformers; {tied} near-tied query slots left out)",
            file=sys.stderr,
        )
    print(f"  detector verification {'PASSED' if report['passed'] else 'FAILED'}", file=sys.stderr)
    if not report["passed"]:
        raise ParityError(
            "detector graphs differ from transformers: " + "; ".join(report["failures"])
        )
    return report


def _text_manifest(report: dict | None) -> dict:
    """The manifest's ``text`` entry: whether the text models are part of this export."""
    from .detector_export import REPORT_FILE

    if report is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "graphs": list(report["models"]),
        "model": text_spec.TEXT_MODEL,
        "detector": report["detector"],
        "model_dir": report["model_dir"],
        "report": REPORT_FILE,
        "passed": report["passed"],
    }


def _video_manifest(report: dict | None) -> dict:
    """The manifest's ``video`` entry: whether the video models are part of this export and
    the worst difference per graph (the full report is ``video_export.json``)."""
    from .video_export import REPORT_FILE

    if report is None:
        return {"enabled": False}
    worst = {
        name: max(
            [*report["onnx_vs_torch"].get(name, {}).values(), *report["vs_sam2"][name].values()]
        )
        for name in report["vs_sam2"]
    }
    return {
        "enabled": True,
        "graphs": list(video_spec.VIDEO_GRAPHS),
        "session_model": video_spec.VIDEO_MODEL,
        "image_dtype": report["image_dtype"],
        "report": REPORT_FILE,
        "passed": report["passed"],
        "tolerance": report["tolerance"],
        "max_abs_diff": worst,
        "rope": report["rope"],
        "memory_cases": report["memory_cases"],
        "sam_scenarios": report["sam_scenarios"],
    }


def _print_video_report(report: dict) -> None:
    print("  video graphs, max abs diff (ONNX vs PyTorch / PyTorch vs SAM 2):", file=sys.stderr)
    for name in report["vs_sam2"]:
        a = max(report["onnx_vs_torch"].get(name, {}).values(), default=0.0)
        b = max(report["vs_sam2"][name].values(), default=0.0)
        print(f"    {name:50s} {a:.2e} / {b:.2e}", file=sys.stderr)
    rope = max(report["rope"].values(), default=0.0)
    print(f"    {'RoPE real vs complex':50s} {rope:.2e}", file=sys.stderr)
    print(f"  video verification {'PASSED' if report['passed'] else 'FAILED'}", file=sys.stderr)


def _describe(path: Path, rel: str) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def sig(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append(
                {
                    "name": v.name,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                    "shape": dims,
                }
            )
        return out

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "file": rel,
        "sha256": digest,
        "bytes": path.stat().st_size,
        "inputs": sig(model.graph.input),
        "outputs": sig(model.graph.output),
    }


def _print_report(report: verify.ParityReport) -> None:
    print("  ONNX vs PyTorch modules (max abs diff):", file=sys.stderr)
    for k, v in report.onnx_vs_torch.items():
        print(f"    {k:50s} {v:.2e}", file=sys.stderr)
    print("  End to end vs SAM2ImagePredictor (max abs diff):", file=sys.stderr)
    for k, v in report.vs_sam2.items():
        print(f"    {k:50s} {v:.2e}", file=sys.stderr)
    print(
        f"    {'min mask IoU':50s} {report.min_mask_iou:.6f} (required >= {report.min_iou_required})",
        file=sys.stderr,
    )
    if report.amg_masks:
        print(f"  {spec.AMG_MASKS_MODEL} vs sam2.utils.amg:", file=sys.stderr)
        for k, v in report.amg_masks.items():
            print(f"    {k:50s} {v:.3g}", file=sys.stderr)
    print(f"  verification {'PASSED' if report.passed else 'FAILED'}", file=sys.stderr)
