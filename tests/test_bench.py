"""`sam2-triton bench`: report and JSON structure only. Never timed assertions: speed is what the
benchmark reports, not what tests check."""

from __future__ import annotations

import argparse
import ast
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sam2_triton_bench import cli, clicks, report, verdicts
from sam2_triton_bench.metrics import metric, metrics_text, metrics_url, samples
from sam2_triton_bench.runner import SECTIONS, Rounds
from sam2_triton_bench.stats import paired_ratio, summarize
from sam2_triton_bench.wirebytes import CountingProxy

CLI = [sys.executable, "-m", "sam2_triton_app.cli"]


def test_summaries_and_rounds() -> None:
    s = summarize([0.3, 0.1, 0.2, 0.4])
    assert s["n"] == 4 and s["median"] == pytest.approx(0.25)
    assert s["min"] <= s["median"] <= s["p95"] <= s["p99"] <= s["max"]
    assert summarize([]) == {"n": 0}
    assert paired_ratio([2.0, 4.0], [1.0, 2.0])["median"] == pytest.approx(2.0)
    assert [Rounds.order(["a", "b", "c"], r) for r in range(3)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
    ]


def test_report_renders_when_nothing_was_measured(tmp_path: Path) -> None:
    results = {
        "started": "now",
        "duration_s": 1.0,
        "load_average_end": None,
        "config": {
            "variant": "tiny",
            "url": None,
            "quick": True,
            "image_size": [120, 180],
            "weights": "random",
        },
        "machine": {"cpu": "x", "cores": 2, "gpus": [], "versions": {}},
        "sections": {name: {"status": "skipped", "reason": "--skip"} for name in SECTIONS},
    }
    results["targets"] = verdicts.evaluate(results)
    assert {t["id"] for t in results["targets"]} >= {
        "encoder_overhead",
        "cache_hit",
        "click",
        "click_shm",
        "fp16_bytes",
        "fp16_iou",
        "decoder_batch",
    }
    assert all(t["met"] is None for t in results["targets"])
    text = report.render(results, report.make_plots(results, tmp_path / "img"), "b.json")
    assert "## Targets" in text and "not measured" in text
    assert "## GPU" in text and "sam2-triton bench --url" in text


BENCH = Path(__file__).resolve().parents[1] / "bench" / "sam2_triton_bench"
PRIVATE = ("sam2_triton._", "sam2_triton.demo")


def test_bench_uses_only_public_sdk_modules() -> None:
    """The layers: bench/ imports the SDK's public modules, never ``_wire``/``_core``/... ."""
    found = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n.startswith(PRIVATE)]
    assert not found


# What Triton 2.51 writes on its metrics port (abridged; counters without ``_total``), plus a
# python-backend custom counter that has it.
TRITON_TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="sam2_encoder",version="1"} 3
nv_inference_request_success{model="sam2_decoder",version="1"} 5
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="sam2_encoder",reason="REJECTED",version="1"} 2
nv_inference_request_failure{model="sam2_encoder",reason="BACKEND",version="1"} 0
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="sam2_encoder",version="1"} 4
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="sam2_encoder",version="1"} 1
# HELP nv_cache_num_hits_per_model Number of cache hits per model
# TYPE nv_cache_num_hits_per_model counter
nv_cache_num_hits_per_model{model="sam2_encoder",version="1"} 7
# HELP nv_inference_queue_summary_us Summary of inference queue duration in microseconds
# TYPE nv_inference_queue_summary_us summary
nv_inference_queue_summary_us_count{model="sam2_encoder",version="1"} 4
nv_inference_queue_summary_us_sum{model="sam2_encoder",version="1"} 120
nv_inference_queue_summary_us{model="sam2_encoder",version="1",quantile="0.5"} 30
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.25
# HELP sam2_session_misses_total Session requests whose image id was not held
# TYPE sam2_session_misses_total counter
sam2_session_misses_total{model="sam2_session",op="decode",version="1"} 2
"""


def test_metrics_reads_tritons_exposition() -> None:
    t = TRITON_TEXT
    assert metric(t, "nv_inference_request_success") == 8
    assert metric(t, "nv_inference_request_success", model="sam2_encoder") == 3
    assert metric(t, "nv_inference_request_failure", model="sam2_encoder", reason="REJECTED") == 2
    assert metric(t, "nv_inference_count", model="sam2_encoder") == 4
    assert metric(t, "nv_inference_pending_request_count", model="sam2_encoder") == 1
    assert metric(t, "nv_cache_num_hits_per_model", model="sam2_encoder", version="1") == 7
    assert metric(t, "nv_inference_queue_summary_us_count", model="sam2_encoder") == 4
    assert metric(t, "nv_inference_queue_summary_us_sum") == 120
    assert metric(t, "nv_cpu_utilization") == 0.25
    assert metric(t, "sam2_session_misses_total", op="decode") == 2
    assert metric(t, "nv_inference_count", model="sam2_decoder") == 0  # no such sample
    assert metric(t, "nv_no_such_metric") == 0
    assert metric("", "nv_inference_count") == 0
    assert sorted(v for _, v in samples(t, "nv_inference_request_failure")) == [0, 2]
    assert metrics_url("127.0.0.1:8002") == "http://127.0.0.1:8002/metrics"
    assert metrics_url("http://h:8002/") == "http://h:8002/metrics"
    assert metrics_url("http://h:8002/metrics") == "http://h:8002/metrics"


@pytest.mark.triton
def test_metrics_parses_the_real_servers_text(triton_server) -> None:
    """Every sample line of the real server's text is read, with the value a line scan gives."""
    text = metrics_text(triton_server.metrics_url)
    line = re.compile(r"^(nv_inference_request_success)\{([^}]*)\}\s+(\S+)$", re.M)
    expected = sum(
        float(m.group(3)) for m in line.finditer(text) if 'model="sam2_encoder"' in m.group(2)
    )
    assert "nv_inference_request_success" in text
    assert metric(text, "nv_inference_request_success", model="sam2_encoder") == expected
    assert metric(text, "nv_inference_count", model="sam2_encoder") >= 0


def test_counting_proxy_counts_both_ways_and_captures() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = upstream.accept()
        with conn:
            data = b""
            while len(data) < 11:
                data += conn.recv(1024)
            conn.sendall(data.upper() * 3)

    threading.Thread(target=serve, daemon=True).start()
    with CountingProxy("127.0.0.1", upstream.getsockname()[1], capture=True) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            c.sendall(b"hello world")
            got = b""
            while len(got) < 33:
                got += c.recv(1024)
        time.sleep(0.1)
        assert got == b"HELLO WORLD" * 3
        assert proxy.counts() == (11, 33)
        assert bytes(proxy.captured) == b"hello world"
        proxy.reset()
        assert proxy.counts() == (0, 0) and not proxy.captured
    upstream.close()


def test_click_headline_session_bytes_and_shm_ratio() -> None:
    samples_ = {
        clicks.INPROCESS: [0.10, 0.20],
        "Triton grpc": [0.30, 0.50],
        "Triton grpc + system shm": [0.12, 0.30],
        "Triton grpc, session (features kept on the server)": [0.11, 0.21],
    }
    per_click = {
        "Triton grpc": {"sent": 17_000_000, "received": 1_000_000, "total": 18_000_000},
        "Triton grpc + system shm": {"sent": 2_000, "received": 1_000_000, "total": 1_002_000},
        "Triton grpc, session (features kept on the server)": {
            "sent": 500,
            "received": 400_000,
            "total": 400_500,
        },
    }
    head = clicks._headline(None, samples_, per_click, "grpc")
    assert head["session_bytes_total_pct_of_features"] == pytest.approx(100 * 400_500 / 18e6)
    assert head["session_bytes_sent_pct_of_features"] == pytest.approx(100 * 500 / 17e6)
    assert head["shm_vs_in_process"] == pytest.approx(0.21 / 0.15)
    assert head["shm_vs_in_process_paired"] == pytest.approx((1.2 + 1.5) / 2)
    text = report._click_headline({"bytes_per_click": per_click, "headline": head})
    assert "2.23 %" in text and "1.40×" in text and "| Triton grpc | 17.00 MB" in text
    assert clicks._headline(None, {}, {}, "grpc")["shm_vs_in_process"] is None


def test_only_runs_the_chosen_sections_elsewhere_than_docs() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--only", "click", "--skip", "sam2,http"])
    assert args.only == ["click"] and args.output_dir is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--only", "clicks"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--only", "sam2"])  # a baseline, not a section


@pytest.mark.slow
@pytest.mark.triton
def test_quick_bench_writes_report_and_json(exported_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs"
    skipped = ["encoder", "batching", "fp16", "sam2", "http"]
    proc = subprocess.run(
        [
            *CLI,
            "bench",
            "--quick",
            "--model-repository",
            str(exported_repo),
            "--image-size",
            "480x640",
            "--skip",
            ",".join(skipped),
            "--output-dir",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== click ==" in proc.stderr  # progress is shown while it runs

    results = json.loads((out / "benchmarks.json").read_text())
    assert results["config"]["quick"] is True
    m = results["machine"]
    assert m["cores"] >= 1 and m["memory_gib"] and m["cpu"] and "numpy" in m["versions"]
    sections = results["sections"]
    assert set(sections) == set(SECTIONS)
    for name in SECTIONS:
        expected = "skipped" if name in skipped else "ok"
        assert sections[name]["status"] == expected, (name, sections[name])

    click = sections["click"]["variants"]
    for name in (
        "onnxruntime in-process (decoder + masks)",
        "Triton grpc",
        "Triton grpc + system shm",
    ):
        assert click[name]["n"] >= 1
        assert {"median", "p95", "p99"} <= set(click[name])
    agreement = sections["click"]["masks_vs_onnxruntime_min_iou"]
    assert agreement["Triton grpc"] == pytest.approx(1.0)  # served masks = in-process masks
    per_click = sections["click"]["bytes_per_click"]
    assert per_click["Triton grpc"]["sent"] > 16_000_000  # the features, with every click
    assert per_click["Triton grpc + system shm"]["sent"] < 1_000_000
    head = sections["click"]["headline"]
    assert head["shm_vs_in_process"] > 0 and head["shm_vs_in_process_paired"] > 0
    if any("session" in name for name in click):
        assert 0 < head["session_bytes_total_pct_of_features"] < 100
    assert set(sections["decoder"]["one_call"]) == {"1", "4", "16"}
    calls = sections["bytes"]["calls"]
    assert calls["decode, 1 click (features FP32)"]["grpc"]["sent"] > 16_000_000
    assert "total (profiled)" in sections["profile"]["breakdown_s"]

    targets = {t["id"]: t for t in results["targets"]}
    assert targets["click"]["measured"] is not None and targets["click"]["met"] in (True, False)
    assert targets["encoder_overhead"]["met"] is None  # skipped: not measured, not "missed"

    md = (out / "benchmarks.md").read_text()
    for heading in ("## This run", "## Targets", "## Click latency", "## GPU"):
        assert heading in md
    images = [
        line.split("(img/")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")
    ]
    assert images and all((out / "img" / name).is_file() for name in images)


def test_a_new_bench_report_keeps_the_other_benchmarks_sections() -> None:
    """``sam2-triton bench`` rewrites benchmarks.md; the sections written by everything_bench and
    batch_bench (their own runs) are carried over as they are, its own sections are not."""
    from sam2_triton_bench import report

    old = (
        "# Benchmarks\n\n## Encoder\nold numbers\n\n## Segment everything\nA\n### GPU\nB\n\n"
        "## Batch pipeline\nC\n"
    )
    kept = report.other_sections(old)
    assert "## Segment everything\nA\n### GPU\nB\n" in kept and "## Batch pipeline\nC\n" in kept
    assert "old numbers" not in kept and report.other_sections("# x\n## Encoder\ny\n") == ""


def test_the_video_section_is_replaced_in_place_and_kept_by_a_new_bench_report() -> None:
    """video_bench --markdown replaces its "## Video" section where it is (keeping a hand-written
    "### Analysis"), appends it when there is none; ``sam2-triton bench`` carries it over."""
    old = (
        "# B\n\n## Encoder\nx\n\n## Video\nold table\n### Analysis\nmine\n\n## Batch pipeline\nC\n"
    )
    new = report.replace_section(
        old, "## Video", "## Video\nnew table\n### GPU\ng\n", keep=("### Analysis",)
    )
    assert "old table" not in new
    assert "## Video\nnew table\n\n### Analysis\nmine\n\n### GPU\ng\n\n## Batch pipeline" in new
    assert new.index("## Video") < new.index("## Batch pipeline") and "## Encoder\nx\n\n" in new
    assert report.replace_section("# B\n", "## Video", "## Video\nt\n") == "# B\n\n## Video\nt\n"
    assert "## Video\nold table\n" in report.other_sections(old)


def test_video_bench_clip_clicks_exactness_and_report(tmp_path: Path) -> None:
    """The benchmark's clip, clicks and mask comparison, and its tables from a made-up result
    (no server, no SAM 2, no timings)."""
    import numpy as np
    from PIL import Image

    from sam2_triton_bench import video_bench as vb

    clip = vb.write_clip(tmp_path / "clip", 3, 48, 64)
    assert sorted(p.name for p in clip.iterdir()) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    first = np.asarray(Image.open(clip / "00000.jpg"))
    for (_, [[x, y]]), color in zip(vb.clicks(48, 64), (0, 1)):
        assert first[int(y), int(x)].argmax() == color  # the click is on its (red, green) block
    a = [np.full((2, 1, 4, 4), -1.0, np.float32), np.ones((2, 1, 4, 4), np.float32)]
    b = [a[0].copy(), a[1] + 0.5]
    b[1][1, 0, 0, 0] = -1.0  # one pixel of one object flips
    e = vb.compare_masks(a, b)
    assert e["max_logit_diff"] == pytest.approx(2.0) and e["min_iou"] == pytest.approx(15 / 16)

    def phase(held: float) -> dict:
        return {"held": held, "rss": 2e9, "pss": 1.5e9}

    fps = {"sam2": [0.1, 0.12], "triton grpc": [0.11, 0.13], "triton http": [0.1, 0.12]}
    result = {
        "variants": list(fps),
        "summary": {v: summarize(x) for v, x in fps.items()},
        "setup_s": {v: summarize([10.0, 12.0]) for v in fps},
        "paired_ratio": {"grpc": 1.1, "http": 1.0},
        "exactness": {"triton grpc": e, "triton http": e},
        "clip": {"frames": 4, "height": 48, "width": 64, "objects": 2},
        "one_object": {
            "sam2": {
                "frames": 4,
                "propagate_s": 20.0,
                "memory": {
                    "init": {"state_bytes": 9e7, "images_bytes": 5e7},
                    "propagate": {"state_bytes": 9.3e7},
                },
            },
            "triton grpc": {
                "frames": 4,
                "propagate_s": 18.0,
                "memory": {"init": phase(12e6), "propagate": phase(98e6), "closed": phase(0)},
            },
        },
        "two_objects_memory": {
            "sam2": {"init": {"state_bytes": 9e7}, "propagate": {"state_bytes": 9.6e7}},
            "triton grpc": {"init": phase(12e6), "propagate": phase(101e6)},
        },
        "memory": {"idle": phase(0), "after_warm_up": phase(0)},
        "wire": {
            p: {k: {"request": 100, "response": 1000} for k in ("init", "clicks", "propagate")}
            | {"objects": 2, "propagated_frames": 2}
            for p in ("grpc", "http")
        },
        "tensor_bytes": vb.tensor_bytes(2),
        "breakdown": {
            "sam2": vb.sam2_breakdown({n: 1.0 for _, n in vb.SAM2_PARTS}, 3, 5.0),
            "triton": vb.triton_breakdown(
                {
                    m: {
                        "count": 3,
                        "success_ns": 10**9,
                        "compute_infer_ns": 9 * 10**8,
                        "queue_ns": 0,
                        "executions": 3,
                    }
                    for m in vb.SERVER_MODELS
                },
                3,
                6.0,
            ),
        },
    }
    md = vb.report(result)
    assert "| Triton, gRPC | 2 | 0.120 | 0.110–0.130 | **1.09×** | 1.10× | 11.00 s |" in md
    assert "| grpc | 275 B (25 B ↑ + 250 B ↓) |" in md  # 4 frames uploaded
    assert "per object and frame: 750.0 kB of memory bank" in md  # (101 - 98) MB / 4 frames
    assert "| **SAM 2: total** | **1667** |" in md and "Triton (gRPC + HTTP): total" in md
