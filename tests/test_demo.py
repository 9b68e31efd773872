"""The README's main command, ``sam2-triton demo``, end to end on the real local Triton.

The repository already holds the demo's own export (tiny, random weights, seed 0), so the demo
skips exporting and runs the rest for real: start the server, segment the sample picture,
write the picture files, stop the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def test_demo_segments_the_sample_into_pictures(repo_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    proc = subprocess.run(
        [sys.executable, "-m", "sam2_triton_app.cli", "demo", "--model-repository",
         str(repo_copy), "--output-dir", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already holds this export; skipping" in proc.stdout  # no second export
    assert "RANDOM WEIGHTS" in proc.stdout + proc.stderr  # said loudly
    sample = np.asarray(Image.open(out / "sample.png"))
    overlay = np.asarray(Image.open(out / "overlay.png").convert("RGB"))
    mask = np.asarray(Image.open(out / "mask.png"))
    assert overlay.shape == sample.shape and mask.shape[:2] == sample.shape[:2]
    assert not np.array_equal(overlay, sample)  # masks and prompts were drawn on it
    result = json.loads((out / "result.json").read_text())
    assert result["image_size"] == list(sample.shape[:2])
    assert result["weights"] == "random (seed 0)"
    assert [o["prompt"] for o in result["objects"]] == ["click", "box"]
    assert all(0.0 <= o["area"] <= sample.shape[0] * sample.shape[1] for o in result["objects"])
