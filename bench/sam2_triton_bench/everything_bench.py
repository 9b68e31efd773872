"""Segment everything: ``sam2_triton.SAM2AutomaticMaskGenerator`` (Triton) vs SAM 2's own
generator in-process, side by side in one run.

    .venv/bin/python -m sam2_triton_bench.everything_bench --json docs/everything-benchmark.json

Starts a local Triton (CPU flavour) on a cached export of the tiny model with random weights
(seed 0; ``--url`` uses an existing server instead) and builds the same seeded model with SAM 2
(``torch.manual_seed(0)``, ``build_sam2(..., ckpt_path=None)``). For every case (image size,
grid, crops) it runs, in interleaved rounds (rotated order, warm-up excluded), SAM 2's
``generate`` on the ``H x W x 3`` array in this process and the SDK's ``generate`` on the same
array (PNG upload, one ``sam2_everything`` request, COCO RLE back). Every round uses a new
picture (another seed), so Triton's response cache never answers the encoder.

Per case: median seconds per image of each and their ratio (target <= 0.8); exactness over all
images of the case, warm-up included (masks of each, mean IoU of the masks matched one to one,
share of bit-identical masks); bytes on the wire per image (request + response, counted by
``wirebytes.CountingProxy`` on the warm-up call, which goes through that relay); where the time
goes: Triton's own per-model statistics over the timed calls
(encoder, decoder, ``sam2_amg_masks``, the python backend's own work) next to SAM 2's
(``set_image``, ``_predict``, the rest of ``_process_batch``, the rest of ``generate``), timed by
wrapping those methods.

Random weights keep no mask at SAM 2's default thresholds, so both generators get the lowered
ones tests/test_everything.py also uses (``LOWERED``); every other parameter is SAM 2's default.
Both return ``output_mode="coco_rle"`` (the matching needs RLE; no side decodes masks).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import spec

from . import machine
from .metrics import model_statistics
from .stats import Rounds, TimedParts, paired_ratio, summarize
from .targets import default_work_dir, ensure_export

TARGET = 0.8  # Triton seconds per image / SAM 2 in-process
TIMEOUT_S = 1800.0  # per request: crops on 2 CPU cores take minutes
SEED = 0
LOWERED = dict(
    pred_iou_thresh=0.45,
    stability_score_thresh=0.15,
    stability_score_offset=0.05,
    mask_threshold=0.12,
    box_nms_thresh=0.95,
)
VARIANTS = ("sam2", "triton")
SERVER_MODELS = (
    spec.EVERYTHING_MODEL,
    spec.ENCODER_MODEL,
    spec.DECODER_MODEL,
    spec.AMG_MASKS_MODEL,
)


@dataclass
class Case:
    h: int
    w: int
    points_per_side: int
    crop_n_layers: int = 0

    @property
    def name(self) -> str:
        crops = f", crop_n_layers={self.crop_n_layers}" if self.crop_n_layers else ""
        return f"{self.h}x{self.w}, {self.points_per_side}x{self.points_per_side}{crops}"

    def kwargs(self) -> dict[str, Any]:
        return {
            **LOWERED,
            "points_per_side": self.points_per_side,
            "crop_n_layers": self.crop_n_layers,
            "output_mode": "coco_rle",
        }


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"480x640,768x1024"`` -> ``[(480, 640), (768, 1024)]`` (H x W)."""
    sizes = []
    for part in text.split(","):
        h, w = (int(v) for v in part.strip().lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError(f"bad size {part!r}")
        sizes.append((h, w))
    return sizes


def picture(h: int, w: int, seed: int) -> np.ndarray:
    from sam2_triton_export.verify import synthetic_image

    return synthetic_image(h, w, seed=seed)


# --- exactness ------------------------------------------------------------------------------
def match(got: list[dict], want: list[dict]) -> dict[str, Any]:
    """Masks of each side, matched one to one (greedy on IoU, highest first): mean/min IoU of
    the pairs, how many pairs have the same RLE (bit-identical masks), largest differences of
    the scores of the pairs."""
    from pycocotools import mask as coco_mask

    out: dict[str, Any] = {"ours": len(got), "sam2": len(want), "pairs": 0, "identical": 0,
                           "ious": [], "max_diff_predicted_iou": 0.0,
                           "max_diff_stability": 0.0}  # fmt: skip
    if not got or not want:
        return out

    def rles(records: list[dict]) -> list[dict]:
        return [
            {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
            for r in records
        ]

    ious = np.asarray(coco_mask.iou(rles(got), rles(want), [0] * len(want)), np.float64)
    order = np.argsort(-ious, axis=None, kind="stable")
    used_g, used_w = set(), set()
    for flat in order.tolist():
        g, w = divmod(flat, len(want))
        if g in used_g or w in used_w:
            continue
        used_g.add(g)
        used_w.add(w)
        a, b = got[g], want[w]
        out["ious"].append(float(ious[g, w]))
        out["identical"] += a["segmentation"]["counts"] == b["segmentation"]["counts"]
        out["max_diff_predicted_iou"] = max(
            out["max_diff_predicted_iou"], abs(a["predicted_iou"] - b["predicted_iou"])
        )
        out["max_diff_stability"] = max(
            out["max_diff_stability"], abs(a["stability_score"] - b["stability_score"])
        )
        if len(used_g) == min(len(got), len(want)):
            break
    out["pairs"] = len(out["ious"])
    return out


def exactness(matches: list[dict]) -> dict[str, Any]:
    """Totals over a case's images: masks of each side, mean/min IoU of the matched pairs,
    share of SAM 2's masks that ours reproduce bit for bit."""
    ious = [v for m in matches for v in m["ious"]]
    sam2 = sum(m["sam2"] for m in matches)
    return {
        "images": len(matches),
        "masks_ours": sum(m["ours"] for m in matches),
        "masks_sam2": sum(m["sam2"] for m in matches),
        "masks_per_image_ours": [m["ours"] for m in matches],
        "masks_per_image_sam2": [m["sam2"] for m in matches],
        "pairs": len(ious),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "min_iou": float(np.min(ious)) if ious else None,
        "identical": sum(m["identical"] for m in matches),
        "identical_share": sum(m["identical"] for m in matches) / sam2 if sam2 else None,
        "max_diff_predicted_iou": max((m["max_diff_predicted_iou"] for m in matches), default=0),
        "max_diff_stability": max((m["max_diff_stability"] for m in matches), default=0),
    }


# --- SAM 2 in-process, with its parts timed ----------------------------------------------------


def sam2_model(device: str) -> Any:
    """SAM 2.1 tiny with the seeded random weights ``sam2-triton export --random-weights
    --seed 0`` exports (tests/conftest.py)."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(SEED)
    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device=device)


def sam2_generator(model: Any, case: Case, parts: TimedParts) -> Any:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    gen = SAM2AutomaticMaskGenerator(model, **case.kwargs())
    parts.wrap(gen.predictor, "set_image", "encoder (set_image)")
    parts.wrap(gen.predictor, "_predict", "decoder + upsampling (_predict)")
    parts.wrap(gen, "_process_batch", "_process_batch")
    return gen


def sam2_breakdown(parts: dict[str, float], total: float) -> dict[str, float]:
    batch = parts.get("_process_batch", 0.0)
    predict = parts.get("decoder + upsampling (_predict)", 0.0)
    encoder = parts.get("encoder (set_image)", 0.0)
    return {
        "encoder (set_image)": encoder,
        "decoder + upsampling (_predict)": predict,
        "filters, stability, boxes, RLE (rest of _process_batch)": batch - predict,
        "NMS, COCO RLE, records (rest of generate)": total - encoder - batch,
    }


# --- Triton ------------------------------------------------------------------------------------
def stats_delta(before: dict | None, after: dict | None) -> dict | None:
    if not before or not after:
        return None
    return {
        name: {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after[name]}
        for name in after
    }


def triton_breakdown(
    delta: dict | None, images: int, client_s: float, png_s: float
) -> dict[str, Any] | None:
    """Seconds per image: the child models' request times (Triton's statistics, queue
    included), the client's PNG encoding (timed apart), and the rest of the wall time: the
    python backend's own work (``sam2_everything`` answers from its own thread, so Triton's
    statistics of that model do not hold it), the transport and the client's JSON parsing."""
    if not delta or images == 0:
        return None

    def per_image(name: str, key: str = "success_ns") -> float:
        return delta.get(name, {}).get(key, 0) / 1e9 / images

    children = {
        "encoder (sam2_encoder)": per_image(spec.ENCODER_MODEL),
        "decoder (sam2_decoder)": per_image(spec.DECODER_MODEL),
        "upsampling, filters, boxes (sam2_amg_masks)": per_image(spec.AMG_MASKS_MODEL),
    }
    parts = {
        **children,
        "client: PNG encoding of the array": png_s,
        "the rest: python backend (PNG decode, NMS, RLE, JSON, BLS copies), transport, "
        "client JSON parsing": client_s - sum(children.values()) - png_s,
    }
    return {
        "parts": parts,
        "calls_per_image": {n: delta.get(n, {}).get("count", 0) / images for n in SERVER_MODELS},
        "queue_s_per_image": {n: per_image(n, "queue_ns") for n in SERVER_MODELS},
    }


def png_seconds(image: np.ndarray) -> float:
    """What the SDK's upload encoding of ``image`` costs (PNG, compress_level=1)."""
    from PIL import Image

    t0 = time.perf_counter()
    Image.fromarray(np.ascontiguousarray(image)).save(io.BytesIO(), "PNG", compress_level=1)
    return time.perf_counter() - t0


def counted_generate(
    host_port: str, protocol: str, case: Case, image: np.ndarray
) -> tuple[list[dict], dict[str, int]]:
    """One ``generate`` through a counting relay: its records and the request and response
    bytes (the connection is set up by a readiness call first, off the count)."""
    from PIL import Image

    from sam2_triton import SAM2AutomaticMaskGenerator

    from .wirebytes import CountingProxy

    host, port = host_port.removeprefix("http://").rsplit(":", 1)
    with CountingProxy(host, int(port)) as proxy:
        url = proxy.address if protocol == "grpc" else f"http://{proxy.address}"
        with SAM2AutomaticMaskGenerator(
            url=url,
            protocol=protocol,
            embedding_cache_bytes=0,
            timeout_s=TIMEOUT_S,
            **case.kwargs(),
        ) as gen:
            gen.client.wait_until_ready()
            time.sleep(0.2)
            proxy.reset()
            records = gen.generate(image)
            time.sleep(0.2)
            sent, received = proxy.counts()
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG", compress_level=1)
    return records, {"request": sent, "response": received, "png_bytes": len(png.getvalue())}


# --- the run -----------------------------------------------------------------------------------
def run_case(
    case: Case,
    index: int,
    repeats: int,
    model: Any,
    url: str,
    protocol: str,
    log,
) -> dict[str, Any]:
    from sam2_triton import SAM2AutomaticMaskGenerator

    parts = TimedParts()
    reference = sam2_generator(model, case, parts)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    sam2_parts: list[dict[str, float]] = []
    png: list[float] = []
    matches = []
    base_seed = 1000 * (index + 1)
    with SAM2AutomaticMaskGenerator(
        url=url, protocol=protocol, embedding_cache_bytes=0, timeout_s=TIMEOUT_S, **case.kwargs()
    ) as ours:
        # warm-up (excluded from the timings): first calls, allocations; Triton's through the
        # counting relay (bytes on the wire); its masks count for exactness
        warm = picture(case.h, case.w, seed=base_seed)
        t0 = time.perf_counter()
        want = reference.generate(warm)
        warm_sam2 = time.perf_counter() - t0
        t0 = time.perf_counter()
        got, wire = counted_generate(url, protocol, case, warm)
        warm_triton = time.perf_counter() - t0
        matches.append(match(got, want))
        parts.take()
        ours.client.wait_until_ready()  # its connection, before the timed calls
        log(
            f"{case.name}: warm-up SAM 2 {warm_sam2:.1f} s, Triton {warm_triton:.1f} s; "
            f"masks {matches[0]['ours']}/{matches[0]['sam2']}; wire {wire}"
        )
        before = model_statistics(url, protocol, SERVER_MODELS)
        for r in Rounds(repeats):
            image = picture(case.h, case.w, seed=base_seed + 1 + r)  # new: no cache answers
            records = {}
            for name in Rounds.order(VARIANTS, r):
                gen = reference if name == "sam2" else ours
                t0 = time.perf_counter()
                records[name] = gen.generate(image)
                seconds[name].append(time.perf_counter() - t0)
                if name == "sam2":
                    sam2_parts.append(sam2_breakdown(parts.take(), seconds[name][-1]))
            matches.append(match(records["triton"], records["sam2"]))
            png.append(png_seconds(image))
            m = matches[-1]
            log(
                f"{case.name}: round {r + 1}: SAM 2 {seconds['sam2'][-1]:.2f} s, Triton "
                f"{seconds['triton'][-1]:.2f} s; masks {m['ours']}/{m['sam2']}, "
                f"{m['identical']} identical"
            )
        after = model_statistics(url, protocol, SERVER_MODELS)
    summary = {k: summarize(v) for k, v in seconds.items()}
    ratio = summary["triton"]["median"] / summary["sam2"]["median"]
    paired = paired_ratio(seconds["triton"], seconds["sam2"])
    triton_parts = triton_breakdown(
        stats_delta(before, after),
        len(seconds["triton"]),
        float(np.mean(seconds["triton"])),
        float(np.mean(png)),
    )
    return {
        "case": {**asdict(case), "name": case.name},
        "warm_up_s": {"sam2": warm_sam2, "triton": warm_triton},
        "seconds": seconds,
        "summary": summary,
        "ratio": ratio,
        "paired_ratio": paired["median"] if paired else None,
        "target_met": ratio <= TARGET,
        "exactness": exactness(matches),
        "matches": matches,
        "wire_bytes": wire,
        "breakdown_sam2": {k: float(np.mean([p[k] for p in sam2_parts])) for k in sam2_parts[0]}
        if sam2_parts
        else None,
        "breakdown_triton": triton_parts,
    }


def _mb(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def report(result: dict) -> str:
    """The Markdown tables of a run: one row per case, then where the time goes (the tables of
    docs/benchmarks.md, "Segment everything")."""
    rows = [
        "| size (H×W) | grid | crop layers | masks ours / SAM 2 | mean IoU (min) | bit-identical "
        "| s/image SAM 2 in-process | s/image Triton | Triton / SAM 2 | paired | wire bytes/image "
        "(request + response) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        e, case, wire = c["exactness"], c["case"], c["wire_bytes"]
        iou = "–" if e["mean_iou"] is None else f"{e['mean_iou']:.5f} ({e['min_iou']:.5f})"
        share = (
            "–"
            if e["identical_share"] is None
            else f"{100 * e['identical_share']:.0f} % ({e['identical']} of {e['masks_sam2']})"
        )
        per_image = ", ".join(str(n) for n in e["masks_per_image_sam2"])
        wire_txt = (
            "–"
            if not wire
            else f"{_mb(wire['request'] + wire['response'])} "
            f"({_mb(wire['request'])} + {_mb(wire['response'])})"
        )
        paired = "–" if c["paired_ratio"] is None else f"{c['paired_ratio']:.2f}×"
        rows.append(
            f"| {case['h']}×{case['w']} | {case['points_per_side']}×{case['points_per_side']} | "
            f"{case['crop_n_layers']} | {e['masks_ours']} / {e['masks_sam2']} "
            f"({e['images']} images: {per_image}) | {iou} | {share} | "
            f"{c['summary']['sam2']['median']:.2f} s | {c['summary']['triton']['median']:.2f} s | "
            f"**{c['ratio']:.2f}×** | {paired} | {wire_txt} |"
        )
    lines = ["\n".join(rows), ""]
    cases = [c for c in result["cases"] if c.get("breakdown_sam2")]
    if not cases:
        return "\n".join(lines)
    lines.append(
        "| stage (seconds per image, mean over the timed rounds) | "
        + " | ".join(c["case"]["name"].replace("x", "×") for c in cases)
        + " |"
    )
    lines.append("|---" * (len(cases) + 1) + "|")
    for side, variant in (("SAM 2", "sam2"), ("Triton", "triton")):
        tables = [
            c["breakdown_sam2"] if variant == "sam2" else (c["breakdown_triton"] or {}).get("parts")
            for c in cases
        ]
        for name in dict.fromkeys(k for t in tables if t for k in t):
            cells = ["–" if not t or name not in t else f"{t[name]:.2f}" for t in tables]
            lines.append(f"| {side}: {name} | " + " | ".join(cells) + " |")
        totals = [f"**{c['summary'][variant]['mean']:.2f}**" for c in cases]
        lines.append(f"| **{side}: total (mean)** | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam2_triton_bench.everything_bench")
    parser.add_argument("--points-per-side", type=int, default=8, help="grid (SAM 2: 32)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds per case")
    parser.add_argument("--sizes", default="480x640,768x1024", help="HxW,HxW,... of the images")
    parser.add_argument(
        "--crop-n-layers",
        type=int,
        default=1,
        help="add one case with these crop layers on the first size (0: none)",
    )
    parser.add_argument(
        "--crop-points-per-side", type=int, default=4, help="grid of the crops case"
    )
    parser.add_argument("--url", help="an existing server (host:port for grpc, http://... else)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--model-repository", type=Path, help="an export (default: cached one)")
    parser.add_argument("--device", default="cpu", help="torch device of SAM 2 (cpu, cuda)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cases = [Case(h, w, args.points_per_side) for h, w in sizes]
    if args.crop_n_layers > 0:
        cases.append(Case(*sizes[0], args.crop_points_per_side, args.crop_n_layers))
    started = time.time()
    described = machine.describe()  # load average at the start included
    import torch

    model = sam2_model(args.device)
    results = []
    with ExitStack() as stack:
        server_info = "external server " + args.url if args.url else ""
        if args.url:
            url = args.url
        else:
            from sam2_triton_serve.launcher import LocalTritonServer

            repo = args.model_repository or export_with_everything(log)
            log(f"starting a local Triton on {repo}")
            server = stack.enter_context(
                LocalTritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
            )
            url = server.grpc_url if args.protocol == "grpc" else server.http_url
            server_info = f"local tritonserver (CPU flavour), ready in {server.start_seconds:.1f} s"
        for i, case in enumerate(cases):
            results.append(run_case(case, i, args.repeats, model, url, args.protocol, log))
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": "python -m sam2_triton_bench.everything_bench "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "server": server_info,
        "protocol": args.protocol,
        "sam2_device": args.device,
        "torch_threads": torch.get_num_threads(),
        "thresholds": LOWERED,
        "target": TARGET,
        "machine": {**described, "load_average_end": machine.load_average()},
        "cases": results,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    for c in results:
        print(
            f"{c['case']['name']}: Triton / SAM 2 {c['ratio']:.2f}x, target <= {TARGET}x: "
            f"{'met' if c['target_met'] else 'missed'}"
        )
    print(f"{result['duration_s']:.0f} s")
    return 0


def export_with_everything(log) -> Path:
    """The cached export (tiny, seed 0, FP32) with ``sam2_everything`` and ``sam2_amg_masks``;
    an older cached export without them is exported again."""
    work_dir = default_work_dir() / "everything"
    repo = ensure_export(work_dir, "tiny", "fp32", None, SEED, log)
    if (
        not (repo / spec.AMG_MASKS_MODEL / "1" / "model.onnx").is_file()
        or not (repo / spec.EVERYTHING_MODEL).is_dir()
    ):
        log(f"{repo} has no {spec.EVERYTHING_MODEL}: exporting again")
        shutil.rmtree(repo)
        repo = ensure_export(work_dir, "tiny", "fp32", None, SEED, log)
    return repo


if __name__ == "__main__":
    sys.exit(main())
