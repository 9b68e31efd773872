"""The measured figures quoted in docs/ are the ones in the raw reports committed beside them."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_reliability_quotes_the_committed_load_report() -> None:
    report = json.loads((DOCS / "reliability-load.json").read_text())
    text = (DOCS / "reliability.md").read_text()
    o = report["options"]
    assert report["passed"] and not report["problems"]
    assert (o["clients"], o["requests"]) == (32, 200)  # the figure, not a shorter run
    assert report["completed"] == report["planned"] == 6400
    assert f"{o['clients']} clients x {o['requests']} = **{report['planned']}**" in text
    assert f"**{report['completed']} / {report['failed']} / {report['lost']}**" in text
    assert f"| **{report['mismatched']}** (masks" in text
    main = report["latency_s"]["main"]
    assert f"p50 {main['p50']:.2f} s, **p99 {main['p99']:.2f} s**, max {main['max']:.2f} s" in text
    assert f"{report['duration_s']:.1f} s, {report['throughput_rps']:.2f} requests/s" in text
    for key, label in (("server_rss", "server RSS"), ("server_pss", "server PSS")):
        m = report["memory_mb"][key]
        growth = f"{m['peak_second_half'] - m['peak_first_half']:.0f}"
        row = re.search(rf"^\| {label} \|(.*)$", text, re.M)
        assert row, label
        cells = [c.strip() for c in row.group(1).split("|")]
        stages = [
            f"{m[k]:.0f}" for k in ("start", "after_warmup", "peak_first_half", "peak_second_half")
        ]
        assert cells[:6] == [*stages, f"**+{growth}**", f"{m['end']:.0f}"], (label, cells)
    assert sum(report["retries"].values()) == 20 and "20 retries were logged" in text
