"""The "## Text prompts" section of docs/benchmarks.md from a ``text_bench`` result."""

from __future__ import annotations

from .report import fmt_ratio, fmt_s

HEADING = "## Text prompts"
KEEP = ("### Analysis",)  # hand-written subsections that --markdown keeps
SIDE_NAMES = {
    "pytorch": "Lang-SAM's pipeline in PyTorch, in-process",
    "triton": "Triton `sam2_text` (`LangSAM`, one request per image)",
}
STAGES = (
    ("preprocess", "Grounding DINO preprocessing (processor: resize, normalise, tokenise)"),
    ("detector", "Grounding DINO network (Triton: `grounding_dino_*` requests)"),
    ("postprocess", "Grounding DINO post-processing (thresholds, labels)"),
    ("encoder", "SAM 2 image encoder (`set_image`; Triton: `sam2_encoder`)"),
    ("decoder", "SAM 2 mask decoder, all boxes (`predict`; Triton: `sam2_decoder`)"),
    ("png", "client: PNG encoding of the image"),
    ("rest", "the rest (see below)"),
)
EXACTNESS_GROUPS = (
    ("fills_canvas", "filling their canvas (the same detector input on both sides)"),
    ("padded", "padded to their canvas by `sam2_text` (Lang-SAM runs them unpadded)"),
)
GPU_COMMAND = (
    "# on the GPU host, serving an export made with `sam2-triton export --detector DIR`\n"
    "sam2-triton bench text --url localhost:8001 --model-repository model_repository \\\n"
    "    --device cuda --images 20 --repeats 3 --json docs/gpu/text-benchmark.json"
)


def _f(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def tables(result: dict) -> str:
    """The Markdown tables of a run: speed, speed per image size, exactness, stages."""
    s, runs = result["summary"], result["runs"]
    rows = [
        "| side | images | s/image (median) | min–max | vs PyTorch | paired | objects per image |",
        "|---|---|---|---|---|---|---|",
    ]
    for side in ("pytorch", "triton"):
        x = s[side]
        vs = "1.00×" if side == "pytorch" else f"**{fmt_ratio(result['ratio'])}**"
        paired = "–" if side == "pytorch" else fmt_ratio(result["paired_ratio"])
        objects = ", ".join(str(r["objects"][side]) for r in runs)
        rows.append(
            f"| {SIDE_NAMES[side]} | {x['n']} | {fmt_s(x['median'])} | {x['min']:.2f}–"
            f"{x['max']:.2f} s | {vs} | {paired} | {objects} |"
        )
    out = ["\n".join(rows), ""]
    rows = [
        "| image (H×W) | detector canvas | fills it | images | PyTorch s/image | Triton s/image | "
        "Triton / PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, b in result["by_size"].items():
        rows.append(
            f"| {size.replace('x', '×')} | {b['canvas']} | {'yes' if b['fills_canvas'] else 'no'} "
            f"| {b['images']} | {fmt_s(b['pytorch'])} "
            f"| {fmt_s(b['triton'])} | {fmt_ratio(b['ratio'])} |"
        )
    out += ["\n".join(rows), ""]
    rows = [
        "| images compared (warm-up included) | objects PyTorch / Triton | count mismatches | "
        "max \\|box diff\\| | same order | max \\|score diff\\| | labels differ | mask IoU min "
        "(mean) | max \\|mask score diff\\| |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group, label in EXACTNESS_GROUPS:
        e = result["exactness"][group]
        if e["images"]:
            iou = "–" if e["min_iou"] is None else f"{e['min_iou']:.5f} ({e['mean_iou']:.5f})"
            rows.append(
                f"| {e['images']} {label} | {e['objects'][0]} / {e['objects'][1]} | "
                f"{e['count_mismatches']} | {e['max_box_px']:.1e} px | "
                f"{'yes' if e['same_order'] else 'no'} | {e['max_score_diff']:.1e} | "
                f"{e['labels_differ']} | {iou} | {e['max_mask_score_diff']:.1e} |"
            )
    out += ["\n".join(rows), ""]
    b = result["breakdown"]
    tri = (b.get("triton") or {}).get("parts", {})
    rows = [
        "| stage (seconds per image, mean over the timed images) | PyTorch in-process | Triton |",
        "|---|---|---|",
    ]
    for key, label in STAGES:
        pt, tr = b["pytorch"].get(key), tri.get(key)
        if pt is not None or tr is not None:
            rows.append(f"| {label} | {_f(pt, '.2f')} | {_f(tr, '.2f')} |")
    rows.append(
        f"| **total (mean)** | **{s['pytorch']['mean']:.2f}** | **{s['triton']['mean']:.2f}** |"
    )
    out += ["\n".join(rows), ""]
    return "\n".join(out)


def _setup(result: dict) -> str:
    m, d, t = result["machine"], result["detector"], result["thresholds"]
    threads = result["threads"]
    ort = sorted(set((threads.get("ort_intra_op") or {}).values()))
    ort_text = "onnxruntime threads: the server's settings"
    if ort:
        cpus = threads.get("cpu_count")
        ort_text = f"onnxruntime intra-op threads of the served graphs: {', '.join(ort)}" + (
            f" (0: os.cpu_count() = {cpus})" if "0" in ort and cpus else ""
        )
    cal = t.get("calibration")
    how = (
        f"calibrated on the warm-up image: midway between its {cal['kept']}th and "
        f"{cal['kept'] + 1}th highest PyTorch score, {_f(cal['margin'], '.1e')} from each; "
        "random weights score nearly every query close to 1"
        if cal
        else "given"
    )
    sizes = ", ".join(f"{h}×{w}" for h, w in result["sizes"])
    return (
        f"{result['date']}, {result['duration_s']:.0f} s; {m['cpu']}, {m['usable_cores']} usable "
        f"cores, load average {m['load_average_start']} → {m['load_average_end']}; "
        f"{result['server']}; PyTorch on {result['device']} ({threads['torch']} torch threads); "
        f"{ort_text}. SAM 2.1 {result['weights']}; Grounding DINO {d['description']} "
        f"({d['parameters'] / 1e6:.0f} M parameters, resize {d['shortest_edge']}/"
        f"{d['longest_edge']}, {d['num_queries']} queries). Prompt `{result['prompt']}`; "
        f"box_threshold {t['box_threshold']:.6f} ({how}), text_threshold "
        f"{t['text_threshold']}: the same on both sides. {result['images']} images × "
        f"{result['repeats']} rounds, a new synthetic picture each ({sizes}, cycled), the two "
        "sides in a rotated order; one warm-up image per canvas on both sides first (not timed)."
    )


def section(result: dict) -> str:
    """The whole "## Text prompts" section (a hand-written "### Analysis" is kept by
    ``--markdown``)."""
    groups = [result["exactness"][g]["lang_sam_build"] for g, _ in EXACTNESS_GROUPS]
    e = {
        "masks": sum(x["masks"] for x in groups),
        "differ": sum(x["differ"] for x in groups),
        "min_iou": min((x["min_iou"] for x in groups if x["min_iou"] is not None), default=None),
    }
    own = (
        f"Lang-SAM builds SAM 2 without `build_sam2`'s `dynamic_multimask_via_stability` (its "
        f"`instantiate` of the config has no overrides): of the {e['masks']} PyTorch masks, "
        f"{e['differ']} would differ with that build (min IoU {_f(e['min_iou'], '.4f')}; "
        "computed untimed on the same features).\n\n"
        if e["masks"]
        else ""
    )
    errors = "".join(f"**Error:** {x}.\n\n" for x in result["errors"])
    return (
        f"{HEADING}\n\n```\n{result['command']}\n```\n\n{_setup(result)}\n\n{errors}"
        + tables(result)
        + "\n"
        + own
        + "The rest: PyTorch: building Lang-SAM's result (numpy conversions); Triton: "
        "`sam2_text`'s own python (PNG decode, the detector's preprocessing and tokeniser, "
        "post-processing, mask RLE, JSON), BLS copies, transport and the client's JSON and RLE "
        "decoding (Triton's per-model statistics hold the graphs only).\n\n"
        "### GPU\n\n"
        "No GPU was available for this measurement. On a GPU host serving an export with "
        "`--detector` (docker compose), run the same comparison against that server with the "
        "PyTorch side on the same GPU (SAM 2's weights and the detector directory are read "
        "from the repository's manifest):\n\n"
        f"```\n{GPU_COMMAND}\n```\n"
    )
