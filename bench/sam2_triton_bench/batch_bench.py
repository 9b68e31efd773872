"""Throughput of ``sam2-triton batch`` vs a plain loop, side by side in one run.

    .venv/bin/python -m sam2_triton_bench.batch_bench --images 12 --repeats 3

Starts two local Triton servers (CPU flavour) on the same export and, in interleaved rounds
(rotated order), measures images/s of:

- ``loop``: one ``SAM2Client``, for each image ``encode(path)`` + one ``decode`` of its prompts +
  COCO RLE of the best masks (the same work ``batch`` does, minus its journal and files);
- ``batch``: the ``sam2-triton batch`` command on server A (a subprocess: bench sits below the
  app in the layers and may not import it; its wall time includes the interpreter's start);
- ``batch x2``: the same command spread over servers A and B (two replicas on one machine).

Every variant of every round gets pictures of its own (other seeds), so neither Triton's
response cache nor the session store answers: each image is really encoded. Prints a Markdown
table (medians over rounds, ratios of medians and paired per-round ratios); ``--json`` keeps
the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sam2_triton import Prompt, SAM2Client, samples
from sam2_triton_serve.launcher import LocalTritonServer

from .stats import Rounds, paired_ratio, summarize
from .targets import default_work_dir, ensure_export

VARIANTS = ("loop", "batch", "batch x2")
TARGET = 1.5  # batch / loop images/s on one server


def picture(seed: int, h: int, w: int) -> np.ndarray:
    """The sample scene, shifted and noised per seed: every picture is a different input."""
    base = samples.sample_image(h, w).astype(np.int16)
    rng = np.random.default_rng(seed)
    base = np.roll(base, int(rng.integers(0, w)), axis=1)
    return np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)


def boxes(h: int, w: int) -> list[list[float]]:
    return [[0.2 * w, 0.4 * h, 0.5 * w, 0.75 * h], [0.6 * w, 0.3 * h, 0.8 * w, 0.55 * h]]


def make_set(folder: Path, seeds: range, h: int, w: int) -> Path:
    """JPEG pictures and a JSON Lines manifest with two boxes per picture."""
    folder.mkdir(parents=True)
    lines = []
    for seed in seeds:
        name = f"img{seed:05d}.jpg"
        Image.fromarray(picture(seed, h, w)).save(folder / name, quality=92)
        lines.append(json.dumps({"image": name, "boxes": boxes(h, w)}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def run_loop(manifest: Path, url: str) -> float:
    """The plain loop: images/s."""
    from pycocotools import mask as mask_utils

    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    start = time.perf_counter()
    with SAM2Client(url, embedding_cache_bytes=0) as client:
        for line in lines:
            emb = client.encode(str(manifest.parent / line["image"]))
            preds = client.decode(
                emb, [Prompt(box=b) for b in line["boxes"]], multimask_output=False
            )
            for p in preds:
                best = p.masks[int(np.argmax(p.scores))]
                mask_utils.encode(np.asfortranarray(best.astype(np.uint8)))
    return len(lines) / (time.perf_counter() - start)


def run_batch(manifest: Path, urls: list[str], max_in_flight: int) -> tuple[float, float]:
    """``sam2-triton batch``: images/s end to end (wall) and as the command reports it."""
    cmd = [sys.executable, "-m", "sam2_triton_app.cli", "batch", str(manifest), "-o",
           str(manifest.with_name("results.json")), "--max-in-flight", str(max_in_flight),
           "--no-progress"]  # fmt: skip
    for url in urls:
        cmd += ["--url", url]
    n = len(manifest.read_text().splitlines())
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed:\n{proc.stdout}\n{proc.stderr}")
    inner = re.search(r"images this run in ([\d.]+) s", proc.stdout)
    return n / wall, (n / float(inner.group(1)) if inner else float("nan"))


def _fmt(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"


def report(result: dict) -> str:
    s = result["summary"]
    loop = s["loop"]["median"]
    rows = [
        "| variant | servers | n | images/s (median) | min–max | vs loop | paired | "
        "in-command images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        v = s[name]
        paired = result["paired"].get(name)
        inner = result["inner"].get(name)
        rows.append(
            f"| {name} | {2 if name == 'batch x2' else 1} | {v['n']} | {_fmt(v['median'])} | "
            f"{_fmt(v['min'])}–{_fmt(v['max'])} | {v['median'] / loop:.2f}× | "
            f"{'–' if paired is None else f'{paired:.2f}×'} | {_fmt(inner)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam2_triton_bench.batch_bench")
    parser.add_argument("--images", type=int, default=12, help="pictures per variant and round")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--image-size", default="720x960", help="HxW of the JPEG pictures")
    parser.add_argument("--max-in-flight", type=int, default=4, help="batch --max-in-flight")
    parser.add_argument("--model-repository", type=Path, help="an export (default: cached one)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.image_size.lower().split("x"))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    repo = args.model_repository or ensure_export(default_work_dir(), "tiny", "fp32", None, 0, log)
    samples_s: dict[str, list[float]] = {v: [] for v in VARIANTS}
    inner: dict[str, list[float]] = {v: [] for v in VARIANTS}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sam2-batch-bench-") as tmp:
        log("starting two local Triton servers")
        with (
            LocalTritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as a,
            LocalTritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as b,
        ):
            warm = make_set(Path(tmp) / "warm", range(2), h, w)  # excluded: loads, first calls
            run_loop(warm, a.grpc_url)
            run_batch(warm, [b.grpc_url], args.max_in_flight)
            seed = 100
            for r in Rounds(args.repeats):
                for name in Rounds.order(VARIANTS, r):
                    manifest = make_set(
                        Path(tmp) / f"r{r}-{name.replace(' ', '')}",
                        range(seed, seed + args.images),
                        h,
                        w,
                    )
                    seed += args.images
                    if name == "loop":
                        rate = run_loop(manifest, a.grpc_url)
                    else:
                        urls = [a.grpc_url] + ([b.grpc_url] if name == "batch x2" else [])
                        rate, in_command = run_batch(manifest, urls, args.max_in_flight)
                        inner[name].append(in_command)
                    samples_s[name].append(rate)
                    log(f"round {r + 1}: {name}: {rate:.3f} images/s")
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "images": args.images,
        "image_size": [h, w],
        "max_in_flight": args.max_in_flight,
        "cpus": os.cpu_count(),
        "samples": samples_s,
        "summary": {k: summarize(v) for k, v in samples_s.items()},
        "paired": {
            k: (paired_ratio(samples_s[k], samples_s["loop"]) or {}).get("median")
            for k in VARIANTS
            if k != "loop"
        },
        "inner": {k: float(np.median(v)) if v else None for k, v in inner.items()},
    }
    ratio = result["summary"]["batch"]["median"] / result["summary"]["loop"]["median"]
    result["batch_vs_loop"] = ratio
    result["target_met"] = ratio >= TARGET
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(
        f"\nbatch / loop (one server): {ratio:.2f}x, target >= {TARGET}x: "
        f"{'met' if ratio >= TARGET else 'missed'}; {result['duration_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
