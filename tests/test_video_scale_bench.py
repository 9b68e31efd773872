"""``sam2-triton bench video-scale`` without Triton: options, bookkeeping, the report, the
cached export's reuse."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from sam2_triton import video_spec as vs
from sam2_triton_bench import cli, targets
from sam2_triton_bench import video_bench as vb
from sam2_triton_bench import video_scale_bench as vsb
from sam2_triton_bench import video_scale_report as vsr
from sam2_triton_bench.report import replace_section
from sam2_triton_serve import repository


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["video-scale", *argv])


def test_subcommand_options() -> None:
    args = parse()
    assert args.bench_command == "video-scale"
    assert args.only == list(vsb.SECTIONS)
    assert (args.objects, args.videos, args.streams) == ([1, 4, 8], [1, 2, 4], [1, 2, 4])
    assert (args.frames, args.long_frames, args.live_frames, args.fps) == (2, 24, 4, 1.0)
    args = parse("--only", "memory,live", "--objects", "1,8", "--video-size", "64x96")
    assert args.only == ["memory", "live"] and args.objects == [1, 8]
    assert args.video_size == (64, 96)
    for bad in (["--only", "objects,gpu"], ["--objects", "0"], ["--videos", "a"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def test_bookkeeping_is_flat_with_a_window_and_grows_without() -> None:
    frames = 200
    windowed = vsb.bookkeeping(frames, vs.MIN_VIDEO_WINDOW)["held"]
    whole = vsb.bookkeeping(frames, 0)["held"]
    assert len(windowed) == len(whole) == frames
    full = vs.MIN_VIDEO_WINDOW + 2  # the window's frames and the conditioning frame's output
    assert len(set(windowed[full:])) == 1
    assert all(b > a for a, b in zip(whole, whole[1:]))
    assert whole[-1] > 5 * windowed[-1]


def test_bookkeeping_stops_early_and_extrapolates() -> None:
    r = vsb.bookkeeping(1000, 0, stop_bytes=30 * 2**20)
    assert 1 < len(r["held"]) < 1000 and r["held"][-1] > 30 * 2**20
    ex = r["extrapolated"]
    assert ex["slope_per_frame"] > 0
    assert ex["at_end"] == pytest.approx(
        r["held"][-1] + ex["slope_per_frame"] * (1000 - len(r["held"]))
    )


def result() -> dict:
    stats = {
        vs.VIDEO_MODEL: {"count": 6, "executions": 3},
        vs.MEMORY_ATTENTION_MODEL: {"count": 3, "executions": 3},
    }
    runs = {"server": [{"wall_s": 2.0, "frames": 4, "stats": stats}], "sam2": []}
    cells = [
        {
            "objects": n,
            "videos": 2,
            "server_fps": fps,
            "sam2_fps": fps / 2,
            "ratio": 2.0,
            "stats": stats,
            "runs": runs,
        }  # fmt: skip
        for n, fps in ((1, 4.0), (8, 2.0))
    ]
    held = [100 + 10 * min(t, 16) for t in range(40)]
    return {
        "command": "python -m sam2_triton_bench.video_scale_bench --frames 2",
        "date": "2026-01-01T00:00:00+0000",
        "duration_s": 12.0,
        "machine": {
            "cpu": "Test CPU",
            "usable_cores": 2,
            "memory_gib": 8,
            "load_average_start": [1.0],
            "load_average_end": [2.0],
        },  # fmt: skip
        "server": "local tritonserver",
        "weights": "tiny, random weights (seed 0)",
        "plot": "video-memory.png",
        "sections": {
            "objects": {
                "clip": {"frames": 3, "tracked": 2, "height": 64, "width": 96},
                "cells": cells,
                "marginal": {
                    "server": vsb.marginal(cells, "server"),
                    "sam2": vsb.marginal(cells, "sam2"),
                },  # fmt: skip
                "target": vsb.MARGINAL_TARGET,
            },
            "memory": {
                "clip": {"frames": 40, "height": 64, "width": 96},
                "server": {
                    "windowed": {
                        "window": 16,
                        "after_prompt": 50.0,
                        "frame": list(range(40)),
                        "held": held,
                    }
                },  # fmt: skip
                "exactness": {"windowed": {"max_logit_diff": 1e-5, "min_iou": 0.99}},
                "bookkeeping": {
                    "16": {"window": 16, "frames": 40, "held": held},
                    "0": {
                        "window": 0,
                        "frames": 40,
                        "held": held[:20],
                        "extrapolated": {"slope_per_frame": 10.0, "at_end": 4 * 2**30},
                    },
                },  # fmt: skip
                "stop_bytes": 8 * 2**30,
            },
            "live": {
                "frames": 4,
                "height": 64,
                "width": 96,
                "fps": 1.0,
                "rows": [
                    {
                        "streams": 2,
                        "batching": on,
                        "total_fps": 2.5,
                        "per_stream_fps": [1.5, 1.0],
                        "latency_s": {"n": 8, "median": 0.8, "p95": 1.2},
                        "stats": {"count": 8, "executions": 4 if on else 8},
                    }
                    for on in (True, False)
                ],
            },  # fmt: skip
        },
    }


def test_section_renders_every_part() -> None:
    r = result()
    text = vsr.section(r)
    assert text.startswith(vsr.HEADING + "\n")
    assert r["command"] in text and "Test CPU" in text and r["weights"] in text
    assert "medians of one run" in text
    objects = r["sections"]["objects"]
    # marginal cost: t(8) = 1/2, t(1) = 1/4 -> (1/2 - 1/4) / 7 / (1/4)
    assert objects["marginal"]["server"] == {"2": pytest.approx(1 / 7)}
    assert f"{1 / 7:.2f}" in text
    assert "| 1 | 2 | 4.000 | 2.000 | 2.00× | 6 / 3 |" in text
    assert "3 / 3 (1.3)" in text  # 1 object x 4 frames over 3 memory attention calls
    assert "4.00 GiB, extrapolated" in text and "![memory held per frame](video-memory.png)" in text
    assert "| 2 | on | 0.800 s | 1.200 s | 2.500 |" in text
    assert "| 8 / 4 | 2 (each gets 1.250 fps) |" in text
    assert "| 2 | off |" in text
    only_live = {**r, "sections": {"live": r["sections"]["live"]}}
    assert "### Objects" not in vsr.section(only_live)
    assert vsb.section is vsr.section and vsb.HEADING == vsr.HEADING


def test_markdown_section_is_replaced_and_the_rest_kept() -> None:
    doc = (
        "# Benchmarks\n\nintro\n\n## Video\n\nvideo text\n\n"
        f"{vsb.HEADING}\n\nold numbers\n\n### Analysis\n\nhand-written\n\n## Later\n\nlast\n"
    )
    text = vsb.section(result())
    new = replace_section(doc, vsb.HEADING, text, keep=vsb.KEEP)
    assert "old numbers" not in new and "hand-written" in new
    assert new.startswith("# Benchmarks\n\nintro\n\n## Video\n\nvideo text\n\n")
    assert new.rstrip().endswith("## Later\n\nlast")
    assert new.count(vsb.HEADING) == 1 and "| 2 | on |" in new
    appended = replace_section("# Benchmarks\n", vsb.HEADING, text, keep=vsb.KEEP)
    assert appended.startswith("# Benchmarks\n\n" + vsb.HEADING)


def test_a_cached_video_export_with_stale_configs_is_exported_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / f"{vb.VARIANT}-seed0-fp32"
    key = "0123456789abcdef"
    manifest = {"weights": {"random": True, "seed": 0}, "image_dtype": "float32",
                "feature_dtype": "float32", "engine_cache_key": key}  # fmt: skip
    (repo / vs.VIDEO_MODEL).mkdir(parents=True)
    (repo / repository.MANIFEST_FILENAME).write_text(json.dumps(manifest))
    for m in vs.VIDEO_GRAPHS:
        repository.model_file(repo, m).parent.mkdir(parents=True, exist_ok=True)
        repository.model_file(repo, m).write_bytes(b"onnx")
    opts = repository.RepositoryOptions(engine_cache_key=key)
    for rel, text in repository.config_files(opts, video=True).items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "")

    monkeypatch.setattr(targets.subprocess, "run", fake_run)  # the export runs in a subprocess
    logs: list[str] = []
    assert vb.ensure_video_export(tmp_path, 0, logs.append) == repo
    assert calls == [] and "reusing" in logs[-1]  # every config as the export writes it
    video_cfg = repo / vs.VIDEO_MODEL / "config.pbtxt"
    current = video_cfg.read_text()
    old = current.replace("max_batch_size: 8", "max_batch_size: 0")  # before request batching
    assert old != current
    video_cfg.write_text(old)
    assert vb.ensure_video_export(tmp_path, 0, logs.append) == repo
    assert len(calls) == 1 and "--video" in calls[0] and str(repo) in calls[0]
    assert f"{vs.VIDEO_MODEL}/config.pbtxt" in logs[-2]
    video_cfg.write_text(current)  # a missing model (no sam2_video_stream) is stale too
    (repo / vs.VIDEO_STREAM_MODEL / "config.pbtxt").unlink()
    assert vb.ensure_video_export(tmp_path, 0, logs.append) == repo
    assert len(calls) == 2
