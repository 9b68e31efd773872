"""``sam2-triton batch``: segment many images through one or more Triton servers, resumably.

This module is the command: its options, the settings a journal records, the run and its exit
status. Inputs and prompts: ``batch_inputs``; journal and atomic output: ``batch_journal``;
images in flight over the servers: ``batch_scheduler``; one image: ``batch_worker``. Design:
``docs/batch.md``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sam2_triton.errors import InvalidInputError

from . import everything, text_prompts
from .batch_inputs import BatchInputError, InputSpec
from .batch_journal import Journal, Summary, assemble, remove_stale_temps
from .batch_scheduler import Scheduler, Servers, ServersDown
from .batch_worker import Options

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_SERVERS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EPILOG = """\
inputs: image files, folders (recursive) or glob patterns (segment everything), or ONE manifest:
  JSON Lines (.jsonl): {"image": "a.jpg", "points": [[x, y]], "labels": [1], "box": [x0, y0, x1,
  y1]} per line, or "boxes": [[...], ...], or "objects": [{"box": [...], "category_id": 3}, ...];
  COCO (.json): detections {"image_id", "bbox": [x, y, w, h], "category_id", "score"} with the
  dataset's "images" list (same file, or --coco-images). No prompts = segment everything.
  --text PROMPT (image files, folders, globs only): every image by that text prompt instead
  (Lang-SAM: Grounding DINO boxes, one SAM 2 mask per box; records add "label", "box_xyxy").

output: COCO results JSON (RLE masks), a failures JSON and a journal (<output>.journal). Run the
same command again to resume: finished images are skipped (key: path, size, mtime, prompts).

exit status: 0 all segmented; 1 finished, some images failed (see the failures file); 2 bad
arguments or inputs; 3 stopped, servers not answering (rerun to resume); 130 interrupted.
"""


def _non_negative(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the batch options on ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="images, folders, glob patterns, or a manifest"
    )
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="COCO results JSON to write"
    )
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        help="Triton server host:port; repeat for replicas: work goes to the least busy one "
        "(default localhost:8001 for gRPC, localhost:8000 for HTTP)",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--max-in-flight",
        type=everything.positive_int,
        metavar="N",
        default=4,
        help="images being segmented at once, over all servers (default 4); bounds memory",
    )
    parser.add_argument("--coco-images", help="COCO dataset JSON whose 'images' list maps ids")
    parser.add_argument(
        "--images-dir", help="folder of a manifest's relative image paths (default: its folder)"
    )
    parser.add_argument(
        "--multimask",
        choices=("auto", "on", "off"),
        default="auto",
        help="3 candidate masks per object, best kept: auto = only for a single click "
        "(not with --text: one mask per detected box)",
    )
    parser.add_argument(
        "--category-id", type=int, default=1, help="category of objects without one (default 1)"
    )
    parser.add_argument("--png-dir", type=Path, help="also write a label PNG per image here")
    parser.add_argument(
        "--failures", type=Path, help="failures JSON (default <output>.failures.json)"
    )
    parser.add_argument("--journal", type=Path, help="journal (default <output>.journal)")
    parser.add_argument(
        "--restart", action="store_true", help="discard an earlier run's journal and start over"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="per-request timeout, seconds (default 120; an image without prompts is ONE "
        "segment-everything request, with --text ONE detect-and-segment request: raise it for "
        "big grids or a big detector on a CPU server)",
    )
    parser.add_argument(
        "--retries",
        type=_non_negative(int),
        metavar="N",
        default=4,
        help="re-sends of a request the server refused or could not take, with exponential "
        "backoff (default 4)",
    )
    parser.add_argument(
        "--retry-backoff",
        type=_non_negative(float),
        metavar="S",
        default=1.0,
        help="first retry delay, seconds, doubled per retry (default 1)",
    )
    parser.add_argument(
        "--max-server-failures",
        type=everything.positive_int,
        metavar="N",
        default=8,
        help="stop after this many images in a row failed because no server answered "
        "(default 8); they are retried on the next run",
    )
    everything.add_generator_arguments(parser, "segment everything (images without prompts)")
    text_prompts.add_text_arguments(
        parser,
        "text prompt (needs a server exported with --detector)",
        "segment what the text names in every image, as Lang-SAM does (e.g. 'cat.'): "
        "Grounding DINO finds the boxes, SAM 2 masks each one; inputs must be image files, "
        "folders or globs, not a manifest",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# --- settings ----------------------------------------------------------------------------------------
def _options(args: argparse.Namespace) -> Options:
    text = text_prompts.text_options(args)
    kwargs = everything.generator_kwargs(args)
    if text is not None and kwargs:
        raise InvalidInputError(
            "the segment-everything options (--points-per-side, --pred-iou-thresh, "
            "--stability-score-thresh, --everything-options) do not go with --text"
        )
    if text is not None and args.multimask != "auto":
        raise InvalidInputError(
            "--multimask goes with point/box prompts; --text predicts one mask per detected box"
        )
    png_dir = args.png_dir.resolve() if args.png_dir else None
    return Options(args.multimask, args.category_id, png_dir, kwargs, text)


def settings(spec: InputSpec, options: Options) -> dict[str, Any]:
    """What decides the results: recorded in the journal, compared on resume. Servers,
    concurrency, timeouts and retries may change between runs."""
    out = {
        **spec.identity(),
        "multimask": options.multimask,
        "category_id": options.category_id,
        "png_dir": str(options.png_dir) if options.png_dir else None,
        "everything": options.everything,
    }
    if options.text is not None:  # only then: journals of runs without --text still match
        out["text"] = options.text
    return out


def _paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    output = args.output
    if output.is_dir():
        raise BatchInputError(f"--output {output} is a folder; give a file name like results.json")
    failures = args.failures or output.with_name(f"{output.stem}.failures.json")
    journal = args.journal or output.with_name(f"{output.name}.journal")
    if len({output.resolve(), failures.resolve(), journal.resolve()}) != 3:
        raise BatchInputError("--output, --failures and --journal must be different files")
    return output, failures, journal


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """``sam2-triton batch``; returns the exit status (see ``EPILOG``)."""
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        print("error: batch writes COCO RLE and needs pycocotools: pip install 'sam2-triton[rle]'",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    spec = InputSpec(tuple(args.inputs), args.coco_images, args.images_dir)
    try:
        options = _options(args)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        spec.check()
        if options.text is not None and spec.kind != "images":
            raise BatchInputError(
                "--text goes with image files, folders or globs, not a manifest (its prompts "
                "would be ignored)"
            )
        output, failures, journal_path = _paths(args)
        journal = Journal(journal_path, settings(spec, options), restart=args.restart)
    except (BatchInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, spec, options, journal, output, failures)
    finally:
        journal.close()


def _run(
    args: argparse.Namespace,
    spec: InputSpec,
    options: Options,
    journal: Journal,
    output: Path,
    failures: Path,
) -> int:
    for path in (output, failures):
        remove_stale_temps(path)
    try:
        tasks = list(spec.tasks()) if spec.kind == "coco" else None
        total = len(tasks) if tasks is not None else spec.total()
        todo = sum(
            not journal.done(t.key) for t in (tasks if tasks is not None else spec.tasks())
        )  # fmt: skip
    except BatchInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if journal.resumed:
        print(f"resuming {journal.path}: {total - todo} of {total} images already done")
    if options.png_dir is not None:
        options.png_dir.mkdir(parents=True, exist_ok=True)
        for stale in options.png_dir.glob(".*.png.tmp-*"):  # a killed run's (the journal's
            stale.unlink(missing_ok=True)  # lock says no other run is writing here)
    urls = list(dict.fromkeys(args.url)) or [None]
    servers = Servers([u or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
                       for u in urls], args)  # fmt: skip
    scheduler = Scheduler(servers, journal, options, args)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    try:
        if todo:
            servers.check()
            scheduler.run(iter(tasks) if tasks is not None else spec.tasks(), todo)
    except KeyboardInterrupt:
        scheduler.stop()
        print(
            f"\ninterrupted after {scheduler.finished} images; the journal keeps them: run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except ServersDown as exc:
        scheduler.stop()
        print(
            f"error: stopped: {exc}. {scheduler.finished} images were finished and are kept in "
            "the journal; run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_SERVERS
    except OSError as exc:
        scheduler.stop()
        print(f"error: cannot write: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    finally:
        signal.signal(signal.SIGTERM, previous)
        servers.close()
    elapsed = time.monotonic() - started
    summary = assemble(
        journal, iter(tasks) if tasks is not None else spec.tasks(), output, failures
    )
    _report(summary, scheduler, servers, elapsed, output, failures)
    return EXIT_OK if summary.failed == summary.retry == 0 else EXIT_FAILURES


def _report(
    summary: Summary,
    scheduler: Scheduler,
    servers: Servers,
    elapsed: float,
    output: Path,
    failures: Path,
) -> None:
    rate = scheduler.finished / elapsed if elapsed > 0 and scheduler.finished else 0.0
    print(
        f"{scheduler.finished} images this run in {elapsed:.1f} s ({rate:.3f} images/s); "
        f"per server: {', '.join(f'{u} {n}' for u, n in servers.sent.items())}"
    )
    print(f"wrote {output}: {summary.records} masks of {summary.images} images")
    if summary.failed or summary.retry:
        print(
            f"wrote {failures}: {summary.failed} images failed, {summary.retry} to retry "
            "(run the same command again to retry them)"
        )
    else:
        print(f"wrote {failures}: no failures")
