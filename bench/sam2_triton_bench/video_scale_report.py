"""The report of ``sam2-triton bench video-scale``: the "## Video at scale" Markdown section
(objects and concurrent videos, memory held over a video, live streams) and the memory plot
(PNG, with a CSV of its series beside it), rendered from the benchmark's result dict."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from sam2_triton import video_spec as vs

HEADING = "## Video at scale"
GRAPHS = (vs.MEMORY_ATTENTION_MODEL, vs.VIDEO_MASK_DECODER_MODEL, vs.MEMORY_ENCODER_MODEL)
GIB = 1 << 30


# --- plot -----------------------------------------------------------------------------------------
def plot_memory(mem: dict, png: Path) -> None:
    """(a) the server's held bytes per frame, (b) the bookkeeping's, as a PNG; a CSV beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    for name, r in mem.get("server", {}).items():
        held = [np.nan if x is None else x / 1e6 for x in r["held"]]
        a.plot(r["frame"], held, marker="o", ms=3, label=f"{name} (window {r['window']})")
        rows += [(f"server {name}", f, x) for f, x in zip(r["frame"], r["held"])]
    a.set(xlabel="frame", ylabel="sam2_video_held_bytes (MB)", title="(a) Triton server")
    for window, r in mem.get("bookkeeping", {}).items():
        line = b.plot([x / GIB for x in r["held"]], label=f"window {window}")[0]
        rows += [(f"bookkeeping window {window}", f, x) for f, x in enumerate(r["held"])]
        if "extrapolated" in r:
            b.plot([len(r["held"]) - 1, r["frames"] - 1],
                   [r["held"][-1] / GIB, r["extrapolated"]["at_end"] / GIB],
                   ls="--", color=line.get_color(), label=f"window {window}, extrapolated")  # fmt: skip
    b.set(xlabel="frame", ylabel="bytes held (GiB)", title="(b) VideoStore bookkeeping")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    with png.with_suffix(".csv").open("w", newline="") as f:
        csv.writer(f).writerows([("series", "frame", "bytes"), *rows])


# --- report ---------------------------------------------------------------------------------------
def _f(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _mb(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:.1f} MB"


def _per_call(stats: dict, model: str, rows: int) -> str:
    s = stats.get(model)
    if not s or not s["count"]:
        return "–"
    return f"{s['count']} / {s['executions']} ({rows / s['count']:.1f})"


def objects_report(o: dict) -> str:
    """The "### Objects and concurrent videos" part: frames/s per cell, graph calls, the
    marginal cost of an object."""
    c = o["clip"]
    out = [f"### Objects and concurrent videos\n\nClip: {c['frames']} frames of {c['height']}×"
           f"{c['width']}, boxes spread over frame 0, {c['tracked']} frames tracked after it per "
           "video. Server: every video propagating at once (one SDK gRPC client thread each, "
           "stepped requests); SAM 2: the videos one after another in this process. Graph "
           "calls: requests / executions (tracked object-frames per request: the batch size; the "
           "memory encoder also encodes frame 0's prompted masks when propagation starts).\n",
           "| objects | videos | server frames/s | SAM 2 frames/s | server / SAM 2 | "
           "`sam2_video` requests / executions | memory attention calls | decoder calls | "
           "memory encoder calls |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for cell in o["cells"]:
        st = cell.get("stats") or {}
        rows = cell["objects"] * cell["runs"]["server"][0]["frames"]
        video = st.get(vs.VIDEO_MODEL)
        sv = f"{video['count']} / {video['executions']}" if video else "–"
        out.append(
            f"| {cell['objects']} | {cell['videos']} | {_f(cell['server_fps'])} | "
            f"{_f(cell['sam2_fps'])} | {_f(cell['ratio'], '.2f')}× | {sv} | "
            + " | ".join(_per_call(st, m, rows) for m in GRAPHS)
            + " |"
        )
    lines = []
    for variant, name in (("server", "server"), ("sam2", "SAM 2")):
        for v, x in o["marginal"][variant].items():
            lines.append(f"{name}, {v} video(s): {_f(x, '.2f')}")
    objs = sorted({c["objects"] for c in o["cells"]})
    if lines:
        out.append(
            f"\nMarginal cost of an object ((t({objs[-1]}) − t({objs[0]})) / {objs[-1] - objs[0]}"
            f" / t({objs[0]}), t = seconds per frame; target ≤ {o['target']}): "
            + "; ".join(lines)
            + ".\n"
        )
    return "\n".join(out) + "\n"


def memory_report(m: dict, plot: str | None) -> str:
    """The "### Memory held over a video" part: the server's held bytes and exactness, the
    bookkeeping's bytes; ``plot``: the PNG's path relative to the Markdown file, or None."""
    c = m["clip"]
    out = [f"### Memory held over a video\n\n(a) The server: {c['frames']} frames of "
           f"{c['height']}×{c['width']}, 1 object clicked on frame 0, `sam2_video_held_bytes` "
           "after each propagated frame.\n", "| run | after the click | "
           "after the window's frames | after the last frame | max \\|logit diff\\| vs SAM 2 "
           "| min IoU vs SAM 2 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in m["server"].items():
        e = m["exactness"].get(name, {})
        at = r["held"][min(vs.MIN_VIDEO_WINDOW, len(r["held"])) - 1] if r["held"] else None
        out.append(f"| {name} (window {r['window']}) | {_mb(r['after_prompt'])} | {_mb(at)} | "
                   f"{_mb(r['held'][-1] if r['held'] else None)} | "
                   f"{_f(e.get('max_logit_diff'), '.1e')} | {_f(e.get('min_iou'), '.4f')} |")  # fmt: skip
    out.append("\n(b) Bookkeeping (`VideoStore` + `VideoTracker`, stand-in graphs, no Triton): "
               "frames appended one at a time, 1 object; bytes a video holds (frames, cached "
               "features, outputs; no byte budget, so no feature is evicted) and, of them, those "
               "that cannot be recomputed (frames and memories).\n")  # fmt: skip
    out += ["| window | frames run | at frame 16 | at the last frame run (not recomputable) "
            "| at frame N |", "|---|---|---|---|---|"]  # fmt: skip
    for window, r in m["bookkeeping"].items():
        held, ex, fixed = r["held"], r.get("extrapolated"), r.get("fixed") or [None]
        end = f"{ex['at_end'] / GIB:.2f} GiB, extrapolated" if ex else f"{held[-1] / GIB:.2f} GiB"
        out.append(f"| {window} | {len(held)} of {r['frames']} | "
                   f"{held[min(15, len(held) - 1)] / GIB:.3f} GiB | {held[-1] / GIB:.3f} GiB "
                   f"({_mb(fixed[-1])}) | {end} (N = {r['frames']}) |")  # fmt: skip
    stop = m.get("stop_bytes")
    if stop:
        out.append(f"\nA run stops once it would hold over {stop / GIB:g} GiB (the frames share "
                   "one buffer and the stand-in outputs are views of one zero buffer, so this "
                   "process allocates little of it); the rest is extrapolated linearly from its "
                   "last frames.\n")  # fmt: skip
    if plot:
        out.append(f"![memory held per frame]({plot})\n")
    return "\n".join(out) + "\n"


def live_report(lv: dict) -> str:
    """The "### Live streams" part: latency and frames/s per number of streams."""
    fps = lv["fps"]
    out = [f"### Live streams\n\nEach stream: `init_stream` ({lv['height']}×{lv['width']}), its "
           f"first frame sent and clicked (untimed), then {lv['frames']} more sent, each as soon "
           "as the previous one is answered.\n", "| streams | `sam2_video` request batching "
           "| median latency | p95 latency | total frames/s | per stream frames/s (median) | "
           f"`sam2_video` requests / executions | streams sustained at {fps:g} fps |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in lv["rows"]:
        st = r.get("stats")
        lat = r["latency_s"]
        out.append(
            f"| {r['streams']} | {'on' if r['batching'] else 'off'} | {_f(lat.get('median'))} s "
            f"| {_f(lat.get('p95'))} s | {_f(r['total_fps'])} | "
            f"{_f(float(np.median(r['per_stream_fps'])))} | "
            f"{st['count'] if st else '–'} / {st['executions'] if st else '–'} | "
            f"{math.floor(r['total_fps'] / fps)} (each gets {_f(r['total_fps'] / r['streams'])}"
            " fps) |"
        )
    return "\n".join(out) + "\n"


def section(result: dict) -> str:
    """The "## Video at scale" section of docs/benchmarks.md."""
    m, s = result["machine"], result["sections"]
    head = (
        f"{HEADING}\n\n```\n{result['command']}\n```\n\n"
        f"{result['date']}, {result['duration_s']:.0f} s; {m['cpu']}, {m['usable_cores']} "
        f"usable cores, {m.get('memory_gib')} GiB, load average {m.get('load_average_start')} → "
        f"{m.get('load_average_end')}; {result['server']}; model: {result['weights']}; SAM 2 "
        f"in-process on {result.get('config', {}).get('device', 'cpu')}. Numbers are medians of one run (no repeats unless `--repeats`).\n"
    )
    parts = [head]
    if "objects" in s:
        parts.append(objects_report(s["objects"]))
    if "memory" in s:
        parts.append(memory_report(s["memory"], result.get("plot")))
    if "live" in s:
        parts.append(live_report(s["live"]))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(parts))
