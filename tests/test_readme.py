"""Every shell example of the README that talks to Triton is executed as written."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from sam2_triton_serve import repository

pytestmark = pytest.mark.triton
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = [
    b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if "$TRITON" in b or "$METRICS" in b
]


def _run(block: str, server, cwd: Path | None = None, **env_vars: str) -> str:
    env = {
        "TRITON": server.http_url.removeprefix("http://"),
        "METRICS": server.metrics_url.removeprefix("http://").removesuffix("/metrics"),
        "PATH": "/usr/bin:/bin",
        **env_vars,
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_readme_has_the_examples() -> None:
    assert len(BLOCKS) == 7


def test_health_metadata_config(triton_server) -> None:
    out = _run(BLOCKS[0], triton_server).splitlines()
    assert out[0] == "200"
    meta, config = json.loads(out[1]), json.loads(out[2])
    assert meta["name"] == "sam2_decoder" and {i["name"] for i in meta["inputs"]} >= {
        "point_coords"
    }
    assert config["name"] == "sam2_encoder" and config["max_batch_size"] > 0


def test_inference_over_plain_rest(triton_server, exported_repo: Path) -> None:
    out = json.loads(_run(BLOCKS[1], triton_server))
    manifest = json.loads((exported_repo / repository.MANIFEST_FILENAME).read_text())
    (fingerprint,) = out["outputs"]
    assert fingerprint["name"] == "model_fingerprint" and fingerprint["shape"] == [1, 2]
    assert fingerprint["data"] == manifest["fingerprint"]


def test_bad_dtype_gets_400_naming_the_input(triton_server) -> None:
    body, code = _run(BLOCKS[2], triton_server).strip().splitlines()
    assert code == "400"
    assert "input 'image'" in json.loads(body)["error"] and "FP32" in body


def test_metrics_example(triton_server) -> None:
    out = _run(BLOCKS[3], triton_server)
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count"):
        assert f'{name}{{model="sam2_encoder"' in out
        assert f'{name}{{model="sam2_decoder"' in out


def test_one_shot_segmentation_with_curl(triton_server, tmp_path: Path) -> None:
    """The README's curl call to sam2_segment on a photo.png gives the SDK's mask."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    from sam2_triton import Prompt, SAM2Client

    yy, xx = np.mgrid[0:480, 0:640]
    photo = np.stack([np.sin(xx / 40.0), np.cos(yy / 30.0), np.sin((xx + yy) / 50.0)], -1)
    Image.fromarray(((photo + 1) * 127.5).astype(np.uint8)).save(tmp_path / "photo.png")
    result = json.loads(_run(BLOCKS[4], triton_server, cwd=tmp_path))
    assert (result["width"], result["height"], result["format"]) == (640, 480, "rle")
    (obj,) = result["objects"]
    with SAM2Client(triton_server.grpc_url, use_sessions=False) as client:
        pred = client.decode(
            client.encode(tmp_path / "photo.png"),
            Prompt(point_coords=[[320, 240]], point_labels=[1]),
            multimask_output=False,
        )
    assert obj["scores"] == [float(pred.scores[0])]
    rle = obj["masks"][0]
    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(mask.astype(bool), pred.masks[0])


def test_segment_everything_with_curl(triton_server, tmp_path: Path) -> None:
    """The README's curl call to sam2_everything: SAM 2's records, the SDK generator's masks.
    OPTIONS lowers the thresholds (random weights keep no mask at SAM 2's defaults)."""
    import numpy as np
    from PIL import Image

    from sam2_triton import SAM2AutomaticMaskGenerator
    from sam2_triton_bench.everything_bench import LOWERED

    yy, xx = np.mgrid[0:240, 0:320]
    photo = np.stack([np.sin(xx / 20.0), np.cos(yy / 15.0), np.sin((xx + yy) / 25.0)], -1)
    Image.fromarray(((photo + 1) * 127.5).astype(np.uint8)).save(tmp_path / "photo.png")
    options = {"points_per_side": 4, **LOWERED}
    escaped = json.dumps(options).replace('"', '\\"')
    result = json.loads(_run(BLOCKS[5], triton_server, cwd=tmp_path, OPTIONS=escaped))
    assert (result["width"], result["height"], result["output_mode"]) == (320, 240, "coco_rle")
    with SAM2AutomaticMaskGenerator(
        url=triton_server.grpc_url, output_mode="coco_rle", **options
    ) as generator:
        want = generator.generate(tmp_path / "photo.png")
    assert result["masks"] == want and len(want) >= 1


def test_text_prompts_with_curl(text_triton_server, tmp_path: Path) -> None:
    """The README's curl call to sam2_text: the result LangSAM.segment gets for the same file."""
    import numpy as np
    from PIL import Image

    from sam2_triton import LangSAM

    yy, xx = np.mgrid[0:240, 0:320]
    photo = np.stack([np.sin(xx / 20.0), np.cos(yy / 15.0), np.sin((xx + yy) / 25.0)], -1)
    Image.fromarray(((photo + 1) * 127.5).astype(np.uint8)).save(tmp_path / "photo.png")
    options = '{\\"box_threshold\\": 0.95, \\"text_threshold\\": 0.25}'
    result = json.loads(_run(BLOCKS[6], text_triton_server, cwd=tmp_path, OPTIONS=options))
    assert (result["width"], result["height"], result["text"]) == (320, 240, "cat. remote control.")
    assert (result["box_threshold"], result["text_threshold"]) == (0.95, 0.25)
    with LangSAM(url=text_triton_server.grpc_url) as model:
        want = model.segment(tmp_path / "photo.png", "cat. remote control.", box_threshold=0.95)
    assert len(result["objects"]) == len(want.labels) >= 1
    assert [o["label"] for o in result["objects"]] == list(want.labels)
    assert [o["mask"] for o in result["objects"]] == list(want.rles)
