"""``sam2-triton bench``: options, orchestration, JSON + Markdown + PNG output."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import machine, report, verdicts
from .runner import SECTIONS, SKIPPABLE, Bench, Plan, Progress, run_section
from .targets import BenchSetupError

JSON_NAME = "benchmarks.json"
MD_NAME = "benchmarks.md"


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 1200x1800, got {text!r}") from None
    if h < 8 or w < 8 or h * w > 64_000_000:
        raise argparse.ArgumentTypeError(f"image size {text} out of range")
    return h, w


def _skip(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in SKIPPABLE]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {bad}; choose from {', '.join(SKIPPABLE)}"
        )
    return items


def _only(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in SECTIONS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}"
        )
    return items


#: where ``--only`` runs write without ``--output-dir`` (never over docs/benchmarks.md)
PARTIAL_OUTPUT_DIR = Path(tempfile.gettempdir()) / "sam2-triton-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``bench`` options on ``parser``."""
    parser.add_argument(
        "--variant",
        default="tiny",
        choices=("tiny", "small", "base_plus", "large"),
        help="SAM 2.1 size to export and serve (default: tiny)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="benchmark this existing server (host:port) instead of starting "
        "the local Triton (e.g. a GPU host's docker compose)",
    )
    parser.add_argument(
        "--protocol",
        choices=("grpc", "http"),
        default="grpc",
        help="protocol of --url (default grpc); the other one is used too when "
        "--url is on Triton's default port",
    )
    parser.add_argument("--http-url", default=None, help="HTTP endpoint of --url's server")
    parser.add_argument("--grpc-url", default=None, help="gRPC endpoint of --url's server")
    parser.add_argument(
        "--metrics-url", default=None, help="metrics endpoint (http://host:8002) of --url's server"
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("SAM2_TRITON_ADMIN_KEY"),
        help="docker compose admin key (restricted shared-memory/config APIs); "
        "default $SAM2_TRITON_ADMIN_KEY",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds of the slow measurements (default 5, 1 with --quick); "
        "click latency uses 20x as many",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run (~2 min): fewer rounds, concurrency 1-2, N up to 16",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where benchmarks.md, benchmarks.json and img/ go (default docs; "
        f"with --only: {PARTIAL_OUTPUT_DIR})",
    )
    parser.add_argument(
        "--model-repository",
        default=None,
        help="an existing FP32 export to serve and to run in-process (default: "
        "export into --work-dir; with --url: only for the baselines)",
    )
    parser.add_argument(
        "--fp16-repository",
        default=None,
        help="an existing --embedding-dtype fp16 export (default: export one)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="where exports are cached (default $SAM2_TRITON_CACHE/bench or "
        "~/.cache/sam2-triton/bench)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="SAM 2.1 checkpoint to export (default: random weights, seed "
        "--seed; speed does not depend on the weights)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=(1200, 1800),
        metavar="HxW",
        help="benchmark image size (default 1200x1800)",
    )
    parser.add_argument(
        "--skip",
        type=_skip,
        default=[],
        help=f"comma-separated: {', '.join(SKIPPABLE)} ('sam2' skips the "
        "PyTorch baseline, 'http' the HTTP variants)",
    )
    parser.add_argument(
        "--only",
        type=_only,
        default=None,
        metavar="SECTIONS",
        help="comma-separated sections to run, every other one skipped; e.g. "
        "the click comparison alone, quickly: --quick --only click "
        "--skip sam2,http --image-size 480x640",
    )
    sub = parser.add_subparsers(
        dest="bench_command",
        metavar="{video,video-scale,text}",
        help="optional: run another benchmark instead (its options follow it)",
    )
    from . import video_bench

    video = sub.add_parser(
        "video",
        help="video tracking: SAM2VideoPredictor on Triton (gRPC, HTTP) vs SAM 2 in-process",
        description=video_bench.__doc__.split("\n\n")[0],
    )
    video_bench.add_arguments(video)
    from . import video_scale_bench

    scale = sub.add_parser(
        "video-scale",
        help="video at scale: objects x concurrent videos, memory over long videos, live streams",
        description=video_scale_bench.__doc__.split("\n\n")[0],
    )
    video_scale_bench.add_arguments(scale)
    from . import text_bench

    text = sub.add_parser(
        "text",
        help="text prompts: Grounding DINO + SAM 2 on Triton (sam2_text) vs Lang-SAM's pipeline "
        "in PyTorch",
        description=text_bench.__doc__.split("\n\n")[0],
    )
    text_bench.add_arguments(text)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; write the JSON, the Markdown report and the plots."""
    if getattr(args, "bench_command", None) == "video":
        from . import video_bench

        argv = sys.argv[sys.argv.index("video") + 1 :] if "video" in sys.argv else []
        return video_bench.run(args, argv)
    if getattr(args, "bench_command", None) == "video-scale":
        from . import video_scale_bench

        argv = sys.argv[sys.argv.index("video-scale") + 1 :] if "video-scale" in sys.argv else []
        return video_scale_bench.run(args, argv)
    if getattr(args, "bench_command", None) == "text":
        from . import text_bench

        argv = sys.argv[sys.argv.index("text") + 1 :] if "text" in sys.argv else []
        return text_bench.run(args, argv)
    log = Progress()
    if getattr(args, "only", None):
        args.skip = [
            *args.skip,
            *(s for s in SECTIONS if s not in args.only and s not in args.skip),
        ]
    if getattr(args, "output_dir", None) is None:
        args.output_dir = PARTIAL_OUTPUT_DIR if getattr(args, "only", None) else Path("docs")
    plan = Plan.make(args.quick, args.repeats)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    weights = (
        f"checkpoint {args.checkpoint}"
        if args.checkpoint
        else f"random weights (seed {args.seed}; speed does not depend on the weights)"
    )
    results: dict = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "config": {
            "variant": args.variant,
            "url": args.url,
            "protocol": args.protocol,
            "repeats": plan.repeats,
            "quick": plan.quick,
            "image_size": list(args.image_size),
            "skip": list(args.skip),
            "weights": weights,
            "plan": plan.__dict__,
        },
        "machine": machine.describe(),
        "sections": {},
    }
    log(
        f"sam2-triton bench: {'quick' if plan.quick else 'full'} run, variant {args.variant}, "
        f"{'server ' + args.url if args.url else 'local tritonserver'}; sections "
        f"{', '.join(s for s in SECTIONS if s not in args.skip)}"
    )
    bench = Bench(args, plan, log)
    code = 0
    try:
        bench.setup()
        if bench.manifest:
            w = bench.manifest.get("weights", {})
            results["config"]["weights"] = w.get("description", weights)
        for name in SECTIONS:
            results["sections"][name] = run_section(bench, name)
    except BenchSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:  # noqa: BLE001 - still write what was measured
        log(f"setup failed: {type(exc).__name__}: {exc}")
        results["setup_error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        results["info"] = bench.info
        bench.close()
    if code and not results["sections"]:
        return code
    results["duration_s"] = round(time.monotonic() - t0, 1)
    results["load_average_end"] = machine.load_average()
    results["targets"] = verdicts.evaluate(results)
    out_dir = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = report.make_plots(results, out_dir / "img")
    (out_dir / JSON_NAME).write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = out_dir / MD_NAME
    kept = report.other_sections(md.read_text()) if md.exists() else ""
    md.write_text(report.render(results, plots, JSON_NAME) + kept)
    log(
        f"wrote {out_dir / MD_NAME}, {out_dir / JSON_NAME} and {len(plots)} plots in "
        f"{out_dir / 'img'} ({results['duration_s']:.0f} s)"
    )
    for t in results["targets"]:
        state = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = "–" if t["measured"] is None else f"{t['measured']:.3f}"
        log(f"  {t['id']:17s} {value:>8s} (goal {t['target'].split(' (')[0]}): {state}")
    failed = [n for n, s in results["sections"].items() if s.get("status") == "failed"]
    if failed:
        log(f"sections that failed: {', '.join(failed)} (see {out_dir / JSON_NAME})")
        return 1
    return code
