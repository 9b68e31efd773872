"""sam2-triton: one command line for the whole pipeline (export, serve, segment, batch, track,
demo, verify, bench, loadtest)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, add-arguments function, run function, help). Modules are imported only
# when their subcommand runs, so the client works without the export (torch) or serve
# (nvidia-pytriton) extras installed.
SUBCOMMANDS = {
    "export": (
        "sam2_triton_export.main",
        "add_arguments",
        "run",
        "export SAM 2.1 to ONNX, verify it, install it into a model repository",
    ),
    "serve": (
        "sam2_triton_serve.launcher",
        "add_serve_arguments",
        "serve_main",
        "run the local Triton server (CPU flavour) on a model repository",
    ),
    "segment": (
        "sam2_triton_app.segment",
        "add_arguments",
        "run",
        "segment an image through a running Triton server (clicks, boxes, --everything or --text)",
    ),
    "batch": (
        "sam2_triton_app.batch",
        "add_arguments",
        "run",
        "segment many images (folder, glob, COCO or JSON Lines prompts, or one --text prompt) "
        "into COCO RLE results; resumable, several servers",
    ),
    "track": (
        "sam2_triton_app.track",
        "add_arguments",
        "run",
        "track objects through a video (clicks/boxes on some frames) into per-frame masks "
        "and an overlay video",
    ),
    "demo": (
        "sam2_triton_app.demo",
        "add_arguments",
        "run",
        "export, serve locally, segment a sample image into a picture, stop",
    ),
    "loadtest": (
        "sam2_triton_bench.loadtest",
        "add_arguments",
        "run",
        "bounded load test of local Triton servers (loopback only): failures, "
        "serial equality, p99, memory",
    ),
    "verify": (
        "sam2_triton_app.verify",
        "add_arguments",
        "run",
        "check a running deployment's masks against exact FP32 on the same ONNX files",
    ),
    "bench": (
        "sam2_triton_bench.cli",
        "add_arguments",
        "run",
        "benchmarks side by side: serving costs vs in-process, writes docs/benchmarks.md",
    ),
}
EXTRAS = {"sam2_triton_export": "export", "sam2_triton_serve": "serve", "sam2_triton_bench": "dev"}


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get(module.split(".")[0], "dev")
        raise SystemExit(
            f"error: this command needs the '{extra}' extra ({exc.name} is missing): "
            f"pip install 'sam2-triton[{extra}]'"
        ) from exc


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam2-triton", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in (argv or []) if a in SUBCOMMANDS), None)
    for name, (module, add, _, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen subcommand's module is imported
            getattr(_load(module), add)(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        module, _, run, _ = SUBCOMMANDS[args.command]
        return getattr(_load(module), run)(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
