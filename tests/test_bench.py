"""`sam2-triton bench`: report and JSON structure only. Never timed assertions: speed is what the
benchmark reports, not what tests check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sam2_triton_bench import report, verdicts
from sam2_triton_bench.runner import SECTIONS, Rounds
from sam2_triton_bench.stats import paired_ratio, summarize

CLI = [sys.executable, "-m", "sam2_triton.cli"]


def test_summaries_and_rounds() -> None:
    s = summarize([0.3, 0.1, 0.2, 0.4])
    assert s["n"] == 4 and s["median"] == pytest.approx(0.25)
    assert s["min"] <= s["median"] <= s["p95"] <= s["p99"] <= s["max"]
    assert summarize([]) == {"n": 0}
    assert paired_ratio([2.0, 4.0], [1.0, 2.0])["median"] == pytest.approx(2.0)
    assert [Rounds.order(["a", "b", "c"], r) for r in range(3)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_report_renders_when_nothing_was_measured(tmp_path: Path) -> None:
    results = {
        "started": "now", "duration_s": 1.0, "load_average_end": None,
        "config": {"variant": "tiny", "url": None, "quick": True, "image_size": [120, 180],
                   "weights": "random"},
        "machine": {"cpu": "x", "cores": 2, "gpus": [], "versions": {}},
        "sections": {name: {"status": "skipped", "reason": "--skip"} for name in SECTIONS},
    }
    results["targets"] = verdicts.evaluate(results)
    assert {t["id"] for t in results["targets"]} >= {
        "encoder_overhead", "cache_hit", "click", "click_shm", "fp16_bytes", "fp16_iou",
        "decoder_batch"}
    assert all(t["met"] is None for t in results["targets"])
    text = report.render(results, report.make_plots(results, tmp_path / "img"), "b.json")
    assert "## Targets" in text and "not measured" in text
    assert "## GPU" in text and "sam2-triton bench --url" in text


@pytest.mark.slow
@pytest.mark.triton
def test_quick_bench_writes_report_and_json(exported_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs"
    skipped = ["encoder", "batching", "fp16", "sam2", "http"]
    proc = subprocess.run(
        [*CLI, "bench", "--quick", "--model-repository", str(exported_repo),
         "--image-size", "480x640", "--skip", ",".join(skipped), "--output-dir", str(out),
         "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600)
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
    for name in ("onnxruntime in-process (decoder + masks)", "Triton grpc",
                 "Triton grpc + system shm"):
        assert click[name]["n"] >= 1
        assert {"median", "p95", "p99"} <= set(click[name])
    agreement = sections["click"]["masks_vs_onnxruntime_min_iou"]
    assert agreement["Triton grpc"] == pytest.approx(1.0)  # served masks = in-process masks
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
    images = [line.split("(img/")[1].rstrip(")") for line in md.splitlines()
              if line.startswith("![")]
    assert images and all((out / "img" / name).is_file() for name in images)
