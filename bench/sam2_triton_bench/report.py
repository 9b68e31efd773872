"""The Markdown report (``benchmarks.md``) and its PNG plots (``img/bench_*.png``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

GPU_COMMAND = (
    "# on the GPU host, next to `docker compose up -d` (see SETUP.md)\n"
    "export SAM2_TRITON_ADMIN_KEY=...   # from .env: shared-memory registration is an admin API\n"
    "sam2-triton bench --url localhost:8001 --protocol grpc \\\n"
    "    --model-repository model_repository --output-dir docs/gpu"
)


def fmt_s(v: float | None) -> str:
    """Seconds in a readable unit."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if v >= 1:
        return f"{v:.2f} s"
    if v >= 0.01:
        return f"{v * 1e3:.0f} ms"
    return f"{v * 1e3:.1f} ms"


def fmt_bytes(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} MB"
    if v >= 1e3:
        return f"{v / 1e3:.1f} kB"
    return f"{v:.0f} B"


def fmt_ratio(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}×"


def _status(section: dict | None) -> str | None:
    """None when the section has results, else a one-line reason."""
    if not section:
        return "not run"
    if section.get("status") == "skipped":
        return f"skipped ({section.get('reason', '')})"
    if section.get("status") == "failed":
        return f"failed: {section.get('error', '?')}"
    return None


# --- plots ---------------------------------------------------------------------------------
def make_plots(results: dict, img_dir: Path) -> dict[str, str]:
    """Write the PNGs; return {key: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    s = results["sections"]
    made: dict[str, str] = {}

    def save(fig, key: str) -> None:
        name = f"bench_{key}.png"
        fig.tight_layout()
        fig.savefig(img_dir / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        made[key] = name

    def bars(ax, variants: dict, unit: float, xlabel: str, log: bool = False) -> None:
        names = [n for n, v in variants.items() if v.get("n")]
        med = [variants[n]["median"] * unit for n in names]
        p95 = [variants[n]["p95"] * unit for n in names]
        p99 = [variants[n]["p99"] * unit for n in names]
        y = range(len(names))
        ax.barh(y, med, color="#4c72b0", label="median")
        ax.scatter(p95, y, marker="|", s=200, color="#dd8452", label="p95", zorder=3)
        ax.scatter(p99, y, marker="|", s=200, color="#c44e52", label="p99", zorder=3)
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        if log:
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)

    enc = s.get("encoder")
    if not _status(enc):
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(enc["variants"]) + 1.5))
        bars(ax, enc["variants"], 1.0, "seconds per image (log scale)", log=True)
        ax.set_title("Encoder: one image, end to end")
        save(fig, "encoder")

    bat = s.get("batching")
    if not _status(bat):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for mode, rows in bat["modes"].items():
            cs = [int(c) for c in rows if rows[c]["throughput_median"] is not None]
            a1.plot(
                cs,
                [rows[str(c)]["throughput_median"] for c in cs],
                "o-",
                label=f"dynamic batching {mode}",
            )
            a2.plot(
                cs,
                [rows[str(c)]["latency"]["median"] for c in cs],
                "o-",
                label=f"dynamic batching {mode}",
            )
        a1.set_xlabel("concurrent requests")
        a1.set_ylabel("images / s")
        a1.set_title("Encoder throughput")
        a2.set_xlabel("concurrent requests")
        a2.set_ylabel("median latency per request (s)")
        a2.set_title("Encoder latency")
        for a in (a1, a2):
            a.set_xscale("log", base=2)
            a.set_xticks(bat["concurrency"], [str(c) for c in bat["concurrency"]])
            a.set_ylim(bottom=0)
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        save(fig, "batching")

    dec = s.get("decoder")
    if not _status(dec):
        fig, ax = plt.subplots(figsize=(6, 4))
        ns = [n for n in dec["ns"] if str(n) in dec["one_call"]]
        ax.plot(
            ns,
            [dec["one_call"][str(n)]["median"] for n in ns],
            "o-",
            label="one call with N prompts",
        )
        ax.plot(
            ns,
            [dec["separate_calls"][str(n)]["median"] for n in ns],
            "s-",
            label="N calls with one prompt",
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_yscale("log")
        ax.set_xlabel("prompts N")
        ax.set_ylabel("seconds for all N (median)")
        ax.set_title("Decoder: N prompts on one image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "decoder")

    click = s.get("click")
    if not _status(click):
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(click["variants"]) + 1.5))
        bars(ax, click["variants"], 1e3, "milliseconds")
        ax.set_title("Click latency: one click -> 3 masks at image size")
        save(fig, "click")

    by = s.get("bytes")
    if not _status(by):
        rows = [
            (name, proto, v)
            for name, per in by["calls"].items()
            for proto, v in per.items()
            if "sent" in v
        ]
        if rows:
            fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
            labels = [f"{name} [{proto}]" for name, proto, _ in rows]
            y = range(len(rows))
            ax.barh(
                y, [v["sent"] / 1e6 for _, _, v in rows], color="#4c72b0", label="client -> server"
            )
            ax.barh(
                y,
                [v["received"] / 1e6 for _, _, v in rows],
                left=[v["sent"] / 1e6 for _, _, v in rows],
                color="#55a868",
                label="server -> client",
            )
            ax.set_yticks(list(y), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("MB on the wire per call")
            ax.set_title("Bytes per call (TCP payload, framing included)")
            ax.grid(axis="x", alpha=0.3)
            ax.legend(fontsize=8)
            save(fig, "bytes")

    prof = s.get("profile")
    if not _status(prof):
        parts = {k: v for k, v in prof["breakdown_s"].items() if not k.startswith("total")}
        fig, ax = plt.subplots(figsize=(9, 2.6))
        left = 0.0
        colors = plt.get_cmap("tab10").colors
        for i, (k, v) in enumerate(parts.items()):
            ax.barh([0], [v * 1e3], left=left, color=colors[i % 10], label=k)
            left += v * 1e3
        ax.set_yticks([])
        ax.set_xlabel("milliseconds per click (client view, under cProfile)")
        ax.set_title(f"Where a click's time goes ({prof['protocol']})")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        save(fig, "profile")
    return made


# --- markdown ------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _latency_rows(
    variants: dict,
    ref: str | None = None,
    paired: dict | None = None,
) -> list[list[str]]:
    rows = []
    base = variants.get(ref, {}).get("median") if ref else None
    for name, v in variants.items():
        if not v.get("n"):
            continue
        rel = fmt_ratio(v["median"] / base) if base else "–"
        p = (paired or {}).get(name)
        rows.append(
            [
                name,
                str(v["n"]),
                fmt_s(v["median"]),
                fmt_s(v["p95"]),
                fmt_s(v["p99"]),
                rel,
                fmt_ratio(p["median"]) if p else "–",
            ]
        )
    return rows


def _click_headline(click: dict) -> str:
    """Bytes per click of the served click variants, and the session / shared-memory figures,
    all from the click section's own run (the same clicks, side by side)."""
    per_click = click.get("bytes_per_click") or {}
    head = click.get("headline") or {}
    out = ""
    rows = [
        [name, fmt_bytes(b.get("sent")), fmt_bytes(b.get("received")), fmt_bytes(b.get("total"))]
        for name, b in per_click.items()
        if "total" in b
    ]
    if rows:
        out += (
            "Bytes on the wire per click (request + response, framing included; counted "
            "through a relay after the timed rounds):\n\n"
            + _table(["variant", "request", "response", "total"], rows)
            + "\n\n"
        )
    pct = head.get("session_bytes_total_pct_of_features")
    shm = head.get("shm_vs_in_process")
    if pct is not None or shm is not None:
        proto = head.get("protocol", "grpc")
        parts = []
        if pct is not None:
            parts.append(
                f"a session click moves **{pct:.2f} %** of the bytes of a click that "
                f"sends the features ({proto}; request "
                f"{head['session_bytes_sent_pct_of_features']:.3f} %, response "
                f"{head['session_bytes_received_pct_of_features']:.1f} %)"
            )
        lean = head.get("masks_only_bytes_total_pct_of_features")
        if lean is not None:
            parts.append(
                f"**{lean:.2f} %** when the caller needs only the masks "
                "(`DecodeOptions(low_res_logits=False)`: the server answers the masks, the "
                "same bits, instead of the low-res logits)"
            )
        if shm is not None:
            parts.append(
                f"a {proto} + system shm click takes **{shm:.2f}×** the in-process "
                "decoder + masks (paired "
                f"{fmt_ratio(head.get('shm_vs_in_process_paired'))})"
            )
        out += "In this run: " + "; ".join(parts) + ".\n"
    return out


def _why(target: dict, results: dict) -> str:
    """Why a target was missed, and what would change it, from this run's own numbers."""
    s = results["sections"]
    prof = s.get("profile") or {}
    parts = prof.get("breakdown_s") or {}
    click = s.get("click") or {}
    v = click.get("variants") or {}

    def med(name: str) -> str:
        return fmt_s((v.get(name) or {}).get("median"))

    tid = target["id"]
    session = next((k for k in v if "session" in k), None)
    fix = (
        "What changes it: not sending the features with every click -- the server-side "
        "feature session (`sam2_session`)"
        + (f", measured in this run at {med(session)} per click" if session else "")
        + "; FP16 features halve the transfer; on a GPU host TensorRT makes the decoder a "
        "few ms, so the transfer is all that is left, and a session removes that too."
    )
    if tid == "click":
        ser = sum(
            val
            for k, val in parts.items()
            if "serialisation" in k or "to bytes" in k or "request message" in k
        )
        wait = parts.get("waiting for the reply (network + Triton + decoder)")
        up = parts.get("mask upsampling to image size (upsample_masks)")
        run_only = med("onnxruntime in-process, decoder run only")
        return (
            f"Every click ships the image's 16.8 MB of FP32 features to the server (the "
            f"in-process baseline passes a pointer). On the client that is {fmt_s(ser)} of "
            f"request building and protobuf serialisation per click (profiled); the wait "
            f"for the reply ({fmt_s(wait)}) holds the transfer over loopback, Triton's copy "
            f"of the request into the python backend's shared memory and the decoder "
            f"itself (in-process {run_only}). Mask upsampling ({fmt_s(up)}) costs the same "
            f"on both sides. " + fix
        )
    if tid == "click_shm":
        return (
            "With `use_shared_memory=True` the features no longer cross the socket: one "
            "region per embedding, registered by its first click and reused by the later "
            'ones (its all-zero "no mask" input too), so a click sends about 1 kB (see '
            "the bytes table). What is left is Triton's request path and the python "
            "backend's copy of the 16.8 MB of features from the region into its own shared "
            "memory on every click. " + fix
        )
    if tid == "click_session_bytes":
        return (
            "The masks-only click answers the masks as packed bits (zlib); their size "
            "depends on the masks' shapes (random weights give ragged masks; a real "
            "checkpoint's compact objects compress far better). A click that also returns "
            "SAM 2's low-res logits carries 262 kB of FP32 per mask, which no lossless "
            "encoding of these logits shrinks much."
        )
    if tid == "click_session":
        return (
            "A session click sends only the image id and the prompt; what is left is "
            "Triton's request path, the BLS hop from the session model to the decoder and "
            "the python backend's copies of the held features."
        )
    if tid == "encoder_overhead":
        return (
            "The served path adds sending 12.6 MB of pixels and receiving 16.8 MB of "
            "features (serialised and parsed on both ends) and the python backend's copies "
            "through shared memory; on a 2-core machine these copies compete with the "
            "encoder's own threads. A native ONNX Runtime/TensorRT backend (the GPU "
            "flavour) removes the python-backend copies; FP16 or uint8 wire images halve "
            "or quarter the upload."
        )
    if tid == "cache_hit":
        pre = prof.get("encode_preprocessing") or {}
        resize = (pre.get("resize to 1024x1024 (3 x PIL)") or {}).get("median")
        return (
            f"A hit still costs the client's preprocessing (the resize alone "
            f"{fmt_s(resize)}), 12.6 MB up and 16.8 MB down. The client's own embedding "
            "cache (on by default) answers a repeated image without any request."
        )
    if tid == "fp16_bytes":
        return (
            "The features halve exactly; the rest of the request (a 256 KB mask_input "
            "the decoder requires even without a mask, coordinates, framing) does not."
        )
    if tid == "fp16_iou":
        return (
            "FP16 rounding of the features moves mask borders; with real (not random) "
            "weights the logits are larger and borders move less."
        )
    if tid == "decoder_batch":
        return (
            "One call runs the decoder on all prompts at once and sends the features "
            "once; if it is not faster, the decoder's per-prompt cost dominates and the "
            "batch gives no GEMM efficiency on this CPU."
        )
    return ""


#: sections of benchmarks.md written by other benchmarks (everything_bench, batch_bench,
#: video_bench): a new ``sam2-triton bench`` report keeps them as they are
OTHER_SECTIONS = ("## Segment everything", "## Batch pipeline", "## Video")


def other_sections(markdown: str) -> str:
    """The ``OTHER_SECTIONS`` of an existing report, each up to the next ``## `` heading."""
    kept = []
    for block in re.split(r"(?m)^(?=## )", markdown):
        if block.startswith(OTHER_SECTIONS):
            kept.append(block if block.endswith("\n") else block + "\n")
    return ("\n" + "".join(kept)) if kept else ""


def write_section(path: Path, heading: str, text: str, keep: tuple[str, ...] = ()) -> None:
    """Replace (or append) the section ``heading`` of the markdown file ``path`` by ``text``
    (``replace_section``; a missing file is created)."""
    old = path.read_text() if path.exists() else ""
    path.write_text(replace_section(old, heading, text, keep=keep))


def replace_section(markdown: str, heading: str, text: str, keep: tuple[str, ...] = ()) -> str:
    """``markdown`` with its section ``heading`` (up to the next ``## `` heading) replaced by
    ``text``, or ``text`` appended when there is none. The old section's subsections whose
    heading starts with one of ``keep`` (e.g. a hand-written analysis) are carried over, placed
    before the first subsection of ``text`` (at its end when it has none)."""
    blocks = re.split(r"(?m)^(?=## )", markdown)
    text = text if text.endswith("\n") else text + "\n"
    for i, block in enumerate(blocks):
        if block.startswith(heading + "\n"):
            kept = "".join(
                sub if sub.endswith("\n\n") else sub.rstrip("\n") + "\n\n"
                for sub in re.split(r"(?m)^(?=### )", block)[1:]
                if keep and sub.startswith(keep) and sub.strip() not in text
            )
            parts = re.split(r"(?m)^(?=### )", text, maxsplit=1)
            head = parts[0] if parts[0].endswith("\n\n") else parts[0] + "\n"
            new = head + kept + (parts[1] if len(parts) > 1 else "")
            new = new.rstrip("\n") + "\n"
            if i + 1 < len(blocks):
                new += "\n"
            blocks[i] = new
            return "".join(blocks)
    if markdown and not markdown.endswith("\n"):
        markdown += "\n"
    return markdown + ("\n" if markdown and not markdown.endswith("\n\n") else "") + text


def render(results: dict, plots: dict[str, str], json_name: str) -> str:
    cfg = results["config"]
    m = results["machine"]
    s = results["sections"]
    info = results.get("info", {})
    out: list[str] = []
    w = out.append
    w("# Benchmarks: what serving SAM 2.1 on Triton costs, and what it wins\n")
    w(
        "Generated by `sam2-triton bench` (package `sam2_triton_bench`, `bench/`); raw numbers in "
        f"[`{json_name}`]({json_name}). Re-run it to refresh this page:\n"
    )
    w(
        "```bash\n.venv/bin/sam2-triton bench                 # ~15 min on 2 cores: exports "
        "(cached), starts the local Triton, measures, writes docs/benchmarks.md + docs/img/\n"
        ".venv/bin/sam2-triton bench --quick         # ~2 min smoke run (fewer rounds and sizes)\n"
        ".venv/bin/sam2-triton bench --url HOST:8001 --protocol grpc   # an existing server\n```\n"
    )
    w(
        "Options: `--variant` (tiny), `--repeats N` (rounds of the slow measurements; clicks use "
        "20×N), `--quick`, `--url`/`--protocol` (+ `--http-url`, `--metrics-url`, "
        "`--admin-key`), `--model-repository`/`--fp16-repository` (use these exports instead of "
        "exporting into the cache), `--image-size HxW`, `--skip SECTION`, `--output-dir`.\n"
    )

    w("## This run\n")
    mode = (
        f"existing server `{cfg.get('url')}`"
        if cfg.get("url")
        else "local tritonserver started by the benchmark"
    )
    rows = [
        ["date", results.get("started", "?")],
        [
            "duration",
            f"{results.get('duration_s', 0):.0f} s" + (" (`--quick`)" if cfg.get("quick") else ""),
        ],
        [
            "server",
            f"{mode}; Triton {info.get('server', {}).get('version', '?')}"
            + (f", ready in {info['server_start_s']:.1f} s" if info.get("server_start_s") else ""),
        ],
        ["model", f"SAM 2.1 {cfg.get('variant')}, {cfg.get('weights')}"],
        [
            "image",
            f"{cfg['image_size'][0]}×{cfg['image_size'][1]} (H×W) generated scene "
            "(`sam2_triton.samples.sample_image`); prompts in its pixels",
        ],
        ["CPU", f"{m.get('cpu')}, {m.get('cores')} cores ({m.get('usable_cores')} usable)"],
        ["memory", f"{m.get('memory_gib')} GiB"],
        [
            "GPU",
            ", ".join(
                f"{g['name']} ({g['memory']}, driver {g['driver']})" for g in m.get("gpus", [])
            )
            or "none (nvidia-smi absent)",
        ],
        [
            "load average (1/5/15 min)",
            f"start {m.get('load_average_start')}, end {results.get('load_average_end')}",
        ],
        ["software", ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())],
        ["in-process onnxruntime", ", ".join(info.get("onnxruntime_providers", [])) or "–"],
        [
            "PyTorch baseline",
            f"{info.get('sam2_device', '–')}, {info.get('torch_threads', '–')} threads",
        ],
    ]
    w(_table(["", ""], rows) + "\n")
    w(
        "**Method.** Every variant runs once before measuring (warm-up, excluded). Compared "
        "variants are interleaved: each round runs all of them once, in a rotated order, so that "
        "load from other processes on this shared 2-core machine hits them alike. Tables give "
        "medians and p95/p99 over all rounds (with few samples p99 is close to the maximum) and "
        'ratios of medians; "paired" is the median of the per-round ratios, which cancels most '
        "of the load drift. Numbers on a loaded 2-core VM vary by ±10–30 % between runs; the "
        "ratios are what to compare.\n"
    )

    w("## Targets\n")
    trows = []
    for t in results.get("targets", []):
        met = {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]
        digits = 4 if t["id"] == "fp16_iou" else 3
        measured = (
            "–"
            if t["measured"] is None
            else (
                f"{t['measured']:.{digits}f}"
                if t["id"] == "fp16_iou"
                else fmt_ratio(t["measured"], 3)
            )
        )
        paired = f" (paired {t['paired']:.3f}×)" if t.get("paired") else ""
        trows.append([t["what"], t["target"], measured + paired, t.get("detail") or "–", met])
    w(_table(["target", "goal", "measured", "values", "result"], trows) + "\n")
    missed = [t for t in results.get("targets", []) if t["met"] is False]
    if missed:
        w("Missed targets, why, and what would change them:\n")
        for t in missed:
            w(f"- **{t['id']}**: {_why(t, results)}")
        w("")

    # encoder
    w("## Encoder\n")
    enc = s.get("encoder")
    st = _status(enc)
    if st:
        w(f"_{st}_\n")
    else:
        w(
            f"One image ({cfg['image_size'][0]}×{cfg['image_size'][1]}) in, features out, end to "
            "end: the in-process baseline runs the client's own preprocessing and onnxruntime on "
            "the same `model.onnx`; the served variants are `SAM2Client.encode` (client cache "
            "off, a new picture each time, so a response-cache miss); PyTorch is "
            "`SAM2ImagePredictor.set_image`. "
            f"{enc['rounds']} rounds"
            + (" (stopped early: time budget)" if enc.get("stopped_early") else "")
            + ".\n"
        )
        w(
            _table(
                ["variant", "n", "median", "p95", "p99", "vs onnxruntime", "paired"],
                _latency_rows(
                    enc["variants"], "onnxruntime in-process", enc.get("paired_vs_onnxruntime")
                ),
            )
            + "\n"
        )
        if "encoder" in plots:
            w(f"![encoder](img/{plots['encoder']})\n")
        cm = enc.get("cache_metrics")
        w(
            "**Response cache.** `Triton ..., response-cache hit` sends the picture of the "
            "preceding miss again: Triton answers from its local cache (256 MiB) without running "
            "the encoder"
            + (
                f"; Triton's metrics counted {cm['hits']:.0f} hits for "
                f"{cm['expected_hits']} such calls (warm-up included)"
                if cm
                else ""
            )
            + ". `client embedding cache hit` is the SDK's own cache (on by default): a repeated "
            "picture costs decoding and hashing it, no request.\n"
        )
        if enc.get("failed"):
            w(
                "Left out (failed in warm-up): "
                + "; ".join(f"{k}: {v}" for k, v in enc["failed"].items())
                + "\n"
            )

    # batching
    w("## Dynamic batching\n")
    bat = s.get("batching")
    st = _status(bat)
    if st:
        w(f"_{st}_\n")
    else:
        w(
            "C requests at once, each a different ready-made `[1, 3, 1024, 1024]` input (client "
            "preprocessing excluded), raw tritonclient " + bat["protocol"] + ". **On** is the "
            "exported config (`dynamic_batching`, max queue delay 2 ms, `max_batch_size` 4 on "
            "CPU). **Off** is " + (bat.get("off_means") or "not measured") + '. "batch" is '
            "Triton's own count (`nv_inference_count / nv_inference_exec_count`): the mean batch "
            f"the model actually ran. {bat['rounds']} round(s).\n"
        )
        rows = []
        for c in bat["concurrency"]:
            row = [str(c)]
            for mode in ("on", "off"):
                r = bat["modes"].get(mode, {}).get(str(c))
                if not r:
                    row += ["–"] * 4
                    continue
                lat = r["latency"]
                row += [
                    f"{r['throughput_median']:.3f}" if r["throughput_median"] else "–",
                    fmt_s(lat.get("median")),
                    fmt_s(lat.get("p95")),
                    f"{r['avg_batch']:.2f}" if r.get("avg_batch") else "–",
                ]
            rows.append(row)
        w(
            _table(
                [
                    "C",
                    "on: images/s",
                    "on: median",
                    "on: p95",
                    "on: batch",
                    "off: images/s",
                    "off: median",
                    "off: p95",
                    "off: batch",
                ],
                rows,
            )
            + "\n"
        )
        if "batching" in plots:
            w(f"![batching](img/{plots['batching']})\n")
        top = str(max(bat["concurrency"]))
        on = bat["modes"].get("on", {}).get(top, {})
        off = bat["modes"].get("off", {}).get(top, {})
        if on.get("throughput_median") and off.get("throughput_median"):
            w(
                f"At C={top} batching on/off throughput: "
                f"{on['throughput_median'] / off['throughput_median']:.2f}× "
                + (
                    f"(batches of {on['avg_batch']:.2f} on average). "
                    if on.get("avg_batch")
                    else ". "
                )
            )
        w(
            "On 2 CPU cores the encoder is compute-bound: a batch of 4 costs about as much as 4 "
            "single passes, so what batching saves is per-request overhead (python-backend round "
            "trips), which is small next to seconds of compute and within this machine's "
            "run-to-run noise, while every request in a batch waits for the whole batch. On a "
            "GPU a batch costs far less than its single passes, which is what the GPU config's "
            "`max_batch_size` 8 is for.\n"
        )

    # decoder
    w("## Decoder: N prompts in one call vs N calls\n")
    dec = s.get("decoder")
    st = _status(dec)
    if st:
        w(f"_{st}_\n")
    else:
        w(
            f"One image's features, N single-click prompts, `multimask_output=False`, masks "
            f"upsampled to the image size ({dec['protocol']}, {dec['rounds']} rounds).\n"
        )
        rows = []
        for n in dec["ns"]:
            one = dec["one_call"].get(str(n), {})
            many = dec["separate_calls"].get(str(n), {})
            if not one.get("n"):
                continue
            p = (dec.get("paired_one_vs_separate") or {}).get(str(n))
            rows.append(
                [
                    str(n),
                    fmt_s(one["median"]),
                    fmt_s(one["median"] / n),
                    fmt_s(many["median"]),
                    fmt_s(many["median"] / n),
                    fmt_ratio(one["median"] / many["median"]),
                    fmt_ratio(p["median"]) if p else "–",
                ]
            )
        w(
            _table(
                ["N", "one call", "per prompt", "N calls", "per prompt", "one / N calls", "paired"],
                rows,
            )
            + "\n"
        )
        if "decoder" in plots:
            w(f"![decoder](img/{plots['decoder']})\n")

    # click
    w("## Click latency: HTTP vs gRPC vs shared memory, FP32 vs FP16, in-process\n")
    click = s.get("click")
    st = _status(click)
    if st:
        w(f"_{st}_\n")
    else:
        w(
            f"Features already encoded; one new click → `multimask_output=True` → 3 masks at "
            f"{click['image_hw'][0]}×{click['image_hw'][1]}, the whole `SAM2Client.decode` call. "
            "The in-process baseline is the same client code with onnxruntime in place of the "
            "server (`decoder run only` is its `session.run` alone). `+ system shm`: "
            "`use_shared_memory=True` (the features go through a POSIX shared-memory region "
            f"instead of the socket). {click['rounds']} rounds.\n"
        )
        w(
            _table(
                ["variant", "n", "p50", "p95", "p99", "vs in-process", "paired"],
                _latency_rows(
                    click["variants"],
                    "onnxruntime in-process (decoder + masks)",
                    click.get("paired_vs_inprocess"),
                ),
            )
            + "\n"
        )
        if "click" in plots:
            w(f"![click](img/{plots['click']})\n")
        headline = _click_headline(click)
        if headline:
            w(headline)
        agree = click.get("masks_vs_onnxruntime_min_iou") or {}
        if agree:
            w(
                "Same masks everywhere (min IoU vs the in-process onnxruntime masks): "
                + ", ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                    for k, v in agree.items()
                )
                + ".\n"
            )
        if click.get("failed"):
            w(
                "Left out (failed in warm-up): "
                + "; ".join(f"{k}: {v}" for k, v in click["failed"].items())
                + "\n"
            )
        if not any("session" in k for k in click["variants"]):
            reason = (
                info.get("session_model_error")
                or info.get("session_error")
                or ("the server has no `sam2_session` model")
            )
            w(f"_Session mode (features kept on the server) not measured: {reason}._\n")

    # fp16
    w("## FP16 vs FP32 features\n")
    fp = s.get("fp16")
    st = _status(fp)
    if st:
        w(f"_{st}_\n")
    else:
        w(
            f"Exports with `--embedding-dtype fp16` vs the default, same weights, same image: "
            f"{fp['prompts']} prompts (12 clicks, 4 boxes, one with a negative click), 3 masks "
            f"each. Features per image: {fmt_bytes(fp['feature_bytes']['fp32'])} (FP32) vs "
            f"{fmt_bytes(fp['feature_bytes']['fp16'])} (FP16).\n"
        )
        w(
            _table(
                ["min mask IoU", "mean mask IoU", "max |Δ| low-res logits", "max |Δ| features"],
                [
                    [
                        f"{fp['min_iou']:.5f}",
                        f"{fp['mean_iou']:.5f}",
                        f"{fp['max_abs_diff_low_res_logits']:.2e}",
                        f"{fp['max_abs_diff_features']:.2e}",
                    ]
                ],
            )
            + "\n"
        )

    # bytes
    w("## Bytes on the wire per call\n")
    by = s.get("bytes")
    st = _status(by)
    if st:
        w(f"_{st}_\n")
    else:
        w(
            "Counted by a TCP relay between client and server for one call after a warm-up "
            "call (connection set-up and model metadata excluded): HTTP headers and JSON, gRPC's "
            "HTTP/2 frames and protobuf included. With shared memory the count includes the "
            "SDK's register/unregister requests of that call.\n"
        )
        rows = []
        for name, per in by["calls"].items():
            for proto, v in per.items():
                if "sent" in v:
                    rows.append([name, proto, fmt_bytes(v["sent"]), fmt_bytes(v["received"])])
                else:
                    rows.append([name, proto, v.get("error", "?"), ""])
        w(_table(["call", "protocol", "client → server", "server → client"], rows) + "\n")
        if "bytes" in plots:
            w(f"![bytes](img/{plots['bytes']})\n")

    # profile
    w("## Client hot spots (profile)\n")
    prof = s.get("profile")
    st = _status(prof)
    if st:
        w(f"_{st}_\n")
    else:
        total = prof["breakdown_s"]["total (profiled)"]
        w(
            f"cProfile of {prof['clicks']} clicks ({prof['protocol']}, same click as above); "
            f"unprofiled the click took {fmt_s(prof['click_wall']['median'])} (median) with "
            f"{fmt_s(prof['click_client_cpu']['median'])} of CPU in the calling thread.\n"
        )
        rows = [
            [k, fmt_s(v), f"{100 * v / total:.0f} %"]
            for k, v in prof["breakdown_s"].items()
            if not k.startswith("total")
        ]
        w(_table(["part of the click (client view)", "per click", "share"], rows) + "\n")
        if "profile" in plots:
            w(f"![profile](img/{plots['profile']})\n")
        ups = prof.get("upsample_one_thread_vs_bands")
        if ups and "error" not in ups:
            one, par = ups["one thread"], ups["parallel bands"]
            w(
                f"**Mask upsampling, one thread vs up to {ups['threads']} parallel row bands** (this "
                f"click's 3 masks at {cfg['image_size'][0]}×{cfg['image_size'][1]}, bit-identical "
                f"results, interleaved, {one['wall']['n']} each): wall "
                f"{fmt_s(one['wall']['median'])} → {fmt_s(par['wall']['median'])} (median), "
                f"CPU {fmt_s(one['cpu']['median'])} → {fmt_s(par['cpu']['median'])}. The bands "
                "only help when a second core is free; on this shared machine other processes "
                "often hold it.\n"
            )
        pre = prof.get("encode_preprocessing") or {}
        if pre:
            w(
                "Encode-side client work for this image (direct timing, median): "
                + ", ".join(f"{k} {fmt_s(v.get('median'))}" for k, v in pre.items())
                + ".\n"
            )
        alloc = prof.get("allocator")
        if alloc and "error" not in alloc:
            d, t = alloc["glibc defaults"], alloc["tuned thresholds"]
            w(
                "**Allocator experiment.** The same clicks in child processes, glibc's malloc as "
                "is vs `GLIBC_TUNABLES=" + alloc["env_tuned"]["GLIBC_TUNABLES"] + "` (freed "
                "17 MB buffers stay in the heap instead of going back to the kernel and being "
                "page-faulted in again on the next click; alternated twice):\n"
            )
            w(
                _table(
                    [
                        "malloc",
                        "click median",
                        "client CPU per click",
                        "minor page faults per click",
                    ],
                    [
                        [
                            "glibc defaults",
                            fmt_s(d["wall"]["median"]),
                            fmt_s(d["client_cpu"]["median"]),
                            f"{d['minor_faults_per_click']:.0f}",
                        ],
                        [
                            "tuned thresholds",
                            fmt_s(t["wall"]["median"]),
                            fmt_s(t["client_cpu"]["median"]),
                            f"{t['minor_faults_per_click']:.0f}",
                        ],
                    ],
                )
                + "\n"
            )
        elif alloc:
            w(f"Allocator experiment failed: {alloc['error'][:300]}\n")
    w(HOTSPOT_NOTES)

    # GPU
    w("## GPU\n")
    gpus = m.get("gpus") or []
    if cfg.get("url") and gpus:
        w(
            f"This run measured the server at `{cfg['url']}` from a host with "
            f"{', '.join(g['name'] for g in gpus)}: the tables above are the GPU numbers.\n"
        )
    else:
        w(
            "**Not measured**: no GPU was available where this report was made. The same "
            "command runs unchanged against the docker compose deployment on a GPU host "
            "(TensorRT FP16 configs) and writes the same report:\n"
        )
        w(f"```bash\n{GPU_COMMAND}\n```\n")
        w(
            "Against `--url` the benchmark measures what that server serves: encoder latency and "
            "concurrency (its own batching config), response cache, decoder N, click latency "
            "over gRPC/HTTP (shared memory when run on the same host with the admin key), bytes "
            "on the wire, and the in-process baselines from `--model-repository` (onnxruntime "
            "with CUDA and PyTorch on the GPU when they are installed). Batching off and FP16 "
            "are measured only when the server also serves `sam2_encoder_nobatch` / "
            "`sam2_encoder_fp16` + `sam2_decoder_fp16`.\n"
        )
    return "\n".join(out) + "\n"


HOTSPOT_NOTES = """\
What the profile says about the client, and what was done about it:

- **Mask upsampling** to the image size (about a fifth of a click here, the same cost in the
  in-process baseline) is bit-exact with PyTorch's `interpolate` (float64 emulation of its fused
  multiply-adds), so its arithmetic cannot be cut. `transforms.upsample_masks` now splits large
  outputs (>= 1 Mpixel) into bands of output rows computed in parallel threads (numpy releases
  the GIL): same operations per value, same CPU time, less wall time whenever a core is free
  (measured above, one thread vs bands, in this run).
- **Protobuf serialisation of the 17 MB request** (gRPC) and the tensor-to-bytes copies:
  `tritonclient` copies the features into the request message and serialises it on every click.
  Most of that time is page faults: glibc hands freed buffers this large back to the kernel, so
  the next click faults fresh pages in again (expensive under virtualisation). The allocator
  experiment measures keeping them (`GLIBC_TUNABLES` for the client process; a process-wide
  setting, so not something the SDK sets by itself). Sending no features per click (sessions)
  or shared memory removes it.
- **Encode**: `_wire.parse_encoder_result` no longer copies a single image's 16.8 MB of features
  a second time (tritonclient already gives each output its own buffer); that copy was a few
  percent of a response-cache hit. Preprocessing (PIL's antialiased float resize, 3 channels)
  runs once per image and matters only for cache hits.
"""
