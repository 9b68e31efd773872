"""The segment-everything benchmark's exactness numbers and report (no timings, no server)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam2_triton_bench import everything_bench as eb


def record(mask: np.ndarray, predicted_iou: float = 0.5) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
        "predicted_iou": predicted_iou,
        "stability_score": 0.9,
    }


def test_match_pairs_masks_one_to_one_and_counts_identical_ones() -> None:
    a = np.zeros((20, 30), bool)
    a[2:10, 3:12] = True
    b = np.zeros((20, 30), bool)
    b[12:18, 15:28] = True
    b_off = b.copy()
    b_off[12, 15] = False  # one pixel differs: matched, IoU < 1, not identical
    c = np.zeros((20, 30), bool)
    c[0:4, 20:30] = True
    want = [record(a), record(b), record(c)]
    got = [record(b_off, 0.52), record(a)]  # other order, one mask missing
    m = eb.match(got, want)
    assert (m["ours"], m["sam2"], m["pairs"], m["identical"]) == (2, 3, 2, 1)
    assert sorted(m["ious"]) == pytest.approx([(b.sum() - 1) / b.sum(), 1.0])
    assert m["max_diff_predicted_iou"] == pytest.approx(0.02)
    e = eb.exactness([m, eb.match(want, want), eb.match([], [])])
    assert (e["masks_ours"], e["masks_sam2"], e["pairs"], e["identical"]) == (5, 6, 5, 4)
    assert e["identical_share"] == pytest.approx(4 / 6)
    assert e["min_iou"] < 1.0 and e["mean_iou"] == pytest.approx(np.mean(m["ious"] + [1.0] * 3))


def test_sizes_and_report() -> None:
    assert eb.parse_sizes("480x640, 768X1024") == [(480, 640), (768, 1024)]
    with pytest.raises(ValueError):
        eb.parse_sizes("0x640")
    case = {**eb.asdict(eb.Case(48, 64, 4, 1)), "name": eb.Case(48, 64, 4, 1).name}
    result = {
        "cases": [
            {
                "case": case,
                "summary": {"sam2": {"median": 2.0}, "triton": {"median": 1.5}},
                "ratio": 0.75,
                "paired_ratio": None,
                "exactness": eb.exactness([]),
                "wire_bytes": {"request": 1500, "response": 2_500_000},
                "breakdown_sam2": {"encoder (set_image)": 1.0},
                "breakdown_triton": None,
            }
        ]
    }
    result["cases"][0]["summary"] = {
        "sam2": {"median": 2.0, "mean": 2.1},
        "triton": {"median": 1.5, "mean": 1.4},
    }
    text = eb.report(result)
    assert "| 48×64 | 4×4 | 1 | 0 / 0 (0 images: ) | – | – | 2.00 s | 1.50 s | **0.75×** |" in text
    assert "2.50 MB (1.5 kB + 2.50 MB)" in text and "| SAM 2: encoder (set_image) | 1.00 |" in text
    assert "| **SAM 2: total (mean)** | **2.10** |" in text


@pytest.mark.parametrize("name", ["everything-benchmark.json", "everything-benchmark-16.json"])
def test_the_doc_quotes_the_committed_run(name: str) -> None:
    """docs/benchmarks.md's "Segment everything" tables are the committed runs' own rows."""
    import json
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    result = json.loads((docs / name).read_text())
    section = (docs / "benchmarks.md").read_text().split("## Segment everything", 1)[1]
    rows = [r for r in eb.report(result).splitlines() if r.startswith("| ") and "---" not in r]
    assert rows and [r for r in rows if r not in section] == []
    for case in result["cases"]:
        e = case["exactness"]
        assert e["masks_ours"] == e["masks_sam2"] and e["min_iou"] >= 0.999
