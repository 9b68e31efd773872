"""``sam2-triton bench text``: options, the exactness checks, a CI-size run on the real local
Triton (the tiny "test" detector), and the committed documentation run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from sam2_triton_bench import cli
from sam2_triton_bench import text_bench as tb
from sam2_triton_bench import text_report as tr
from sam2_triton_bench import text_sides as ts

DOCS = Path(__file__).resolve().parents[1] / "docs"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["text", *argv])


def test_subcommand_options() -> None:
    args = parse()
    assert args.bench_command == "text"
    assert (args.images, args.repeats, args.objects) == (3, 2, 8)
    assert args.sizes == [(480, 800), (800, 480)] and args.prompt == "cat. remote control."
    assert args.box_threshold is None and args.text_threshold == 0.25
    assert args.detector_arch == "swin-t" and args.detector is None and args.url is None
    args = parse("--sizes", "96x128", "--box-threshold", "0.3", "--detector-arch", "test")
    assert args.sizes == [(96, 128)] and args.box_threshold == 0.3
    for bad in (["--sizes", "8x8"], ["--box-threshold", "2"], ["--detector-arch", "swin-b"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def side(boxes: list, scores: list, labels: list, masks: list) -> dict:
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, np.float32),
        "labels": labels,
        "masks": np.asarray(masks, bool).reshape(len(labels), 2, 2),
        "mask_scores": np.asarray(scores, np.float32),
    }


def test_compare_pairs_each_box_with_the_nearest_one() -> None:
    a = [[1, 1, 1, 1], [0, 0, 0, 0]]
    ref = side([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.8], ["cat", "dog"], a)
    got = side([[5, 5, 20, 20.5], [0, 0, 10, 10]], [0.8, 0.9], ["dog", "cat"], a[::-1])
    c = ts.compare(ref, got)
    assert c["count_equal"] and not c["same_order"] and c["box_px"] == 0.5
    assert c["labels_differ"] == 0 and c["ious"] == [1.0, 1.0] and c["score"] == 0.0
    fewer = ts.compare(ref, side([[0, 0, 10, 10]], [0.9], ["cat"], a[:1]))
    assert fewer["objects"] == [2, 1] and not fewer["count_equal"] and len(fewer["ious"]) == 1
    e = ts.exactness([c, fewer])
    assert e["count_mismatches"] == 1 and e["objects"] == [4, 3] and e["min_iou"] == 1.0


@pytest.mark.triton
@pytest.mark.slow
def test_a_ci_size_run_measures_both_sides(
    tmp_path: Path, text_repo: Path, text_triton_server
) -> None:
    """The whole command against the session's --detector export (the tiny test detector) and
    its server: 1 image x 1 round (+ 1 warm-up image per canvas), both sides measured, the same
    objects, boxes within 1e-3 px, mask IoU >= 0.999 (the sizes fill the 320x480 canvases: the
    very same detector input on both sides)."""
    out, md = tmp_path / "text.json", tmp_path / "bench.md"
    argv = ["--model-repository", str(text_repo), "--url", text_triton_server.grpc_url,
            "--images", "1", "--repeats", "1", "--objects", "3", "--sizes", "96x144,144x96",
            "--json", str(out), "--markdown", str(md)]  # fmt: skip
    assert tb.run(parse(*argv), argv) == 0
    result = json.loads(out.read_text())
    assert result["errors"] == [] and result["repeats"] == 1 and len(result["runs"]) == 1
    assert [r["size"] for r in result["warm_up"]] == [[96, 144], [144, 96]]  # both canvases
    assert [r["size"] for r in result["runs"]] == [[96, 144]]
    assert result["by_size"]["96x144"]["canvas"] == "landscape"
    assert all(r["fills_canvas"] for r in [*result["warm_up"], *result["runs"]])
    assert 0 < result["thresholds"]["box_threshold"] < 1
    for r in [*result["warm_up"], *result["runs"]]:
        assert r["seconds"]["pytorch"] > 0 and r["seconds"]["triton"] > 0
        assert r["objects"]["pytorch"] == r["objects"]["triton"]
        assert r["check"]["box_px"] <= 1e-3 and r["check"]["labels_differ"] == 0
        assert all(v >= 0.999 for v in r["check"]["ious"])
    assert all(r["objects"]["pytorch"] > 0 for r in result["runs"])  # SAM 2 ran on both sides
    assert result["exactness"]["padded"]["images"] == 0  # both sizes fill the 320x480 canvases
    e = result["exactness"]["fills_canvas"]
    assert e["images"] == 3 and e["count_mismatches"] == 0
    assert e["masks"] > 0 and e["min_iou"] >= 0.999
    assert e["max_box_px"] <= 1e-3
    assert result["summary"]["pytorch"]["n"] == result["summary"]["triton"]["n"] == 1
    assert result["ratio"] > 0 and result["threads"]["torch"] >= 1
    parts = result["breakdown"]["triton"]["parts"]
    assert parts["detector"] > 0 and parts["encoder"] > 0 and parts["decoder"] > 0
    assert result["breakdown"]["pytorch"]["detector"] > 0
    text = md.read_text()
    assert text.startswith(tr.HEADING + "\n") and "### GPU" in text
    assert tr.tables(result) in text


def test_the_doc_quotes_the_committed_run() -> None:
    """docs/benchmarks.md's "Text prompts" tables are the committed run's own rows, and that run
    kept the same objects on both sides with exact boxes and masks where the detector's input is
    the same (images that fill their canvas)."""
    result = json.loads((DOCS / "text-benchmark.json").read_text())
    doc = (DOCS / "benchmarks.md").read_text().split(tr.HEADING + "\n", 1)[1].split("\n## ")[0]
    rows = [r for r in tr.tables(result).splitlines() if r.startswith("| ") and "---" not in r]
    assert rows and [r for r in rows if r not in doc] == []
    e = result["exactness"]["fills_canvas"]
    assert e["count_mismatches"] == 0 and e["min_iou"] >= 0.999 and e["max_box_px"] <= 1e-3
