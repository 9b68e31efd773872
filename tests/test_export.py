"""Export: ONNX files, manifest, parity with SAM2ImagePredictor, atomicity, checkpoint errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam2_triton import spec
from sam2_triton_export import checkpoints, verify
from sam2_triton_export.errors import CheckpointError, ParityError
from sam2_triton_serve import repository

from .conftest import SEED, export_args

FEATURE_ATOL = 1e-4
LOGIT_ATOL = 1e-4
MIN_IOU = 0.9999


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): _sha(p) for p in sorted(repo.rglob("*")) if p.is_file()}


# --- files and manifest --------------------------------------------------------------------------
def test_onnx_files_pass_checker(exported_repo: Path) -> None:
    import onnx

    for model in (spec.ENCODER_MODEL, spec.DECODER_MODEL):
        onnx.checker.check_model(str(repository.model_file(exported_repo, model)), full_check=True)


def test_manifest_describes_the_export(exported_repo: Path) -> None:
    manifest = json.loads((exported_repo / repository.MANIFEST_FILENAME).read_text())
    assert manifest["variant"] == "tiny"
    assert manifest["weights"] == {
        "random": True,
        "seed": SEED,
        "description": f"random seed {SEED}",
    }
    assert manifest["parity"]["passed"] is True
    assert manifest["versions"]["opset"] == 17
    for model in (spec.ENCODER_MODEL, spec.DECODER_MODEL):
        entry = manifest["models"][model]
        path = exported_repo / entry["file"]
        assert entry["sha256"] == _sha(path) and entry["bytes"] == path.stat().st_size
    enc = manifest["models"][spec.ENCODER_MODEL]
    assert [i["name"] for i in enc["inputs"]] == [spec.ENCODER_IMAGE]
    assert [o["name"] for o in enc["outputs"]] == [t.name for t in spec.encoder_outputs()]
    dec = manifest["models"][spec.DECODER_MODEL]
    assert [i["name"] for i in dec["inputs"]] == [t.name for t in spec.decoder_inputs()]


def test_random_weights_are_seed_then_build_sam2(exported_repo: Path, sam2_model) -> None:
    manifest = json.loads((exported_repo / repository.MANIFEST_FILENAME).read_text())
    assert list(checkpoints.weights_fingerprint(sam2_model)) == manifest["fingerprint"]


def test_committed_configs_are_the_generator_output() -> None:
    root = Path(__file__).resolve().parents[1] / "model_repository"
    for rel, text in repository.config_files().items():
        assert (root / rel).read_text() == text, f"{rel} is stale: run sam2-triton export"


# --- parity with SAM2ImagePredictor -------------------------------------------------------------
class OrtPipeline:
    """The exported pair run in-process the way the client runs them (torch only for reference)."""

    def __init__(self, repo: Path, model) -> None:
        import onnxruntime as ort

        self.enc = ort.InferenceSession(str(repository.model_file(repo, spec.ENCODER_MODEL)))
        self.dec = ort.InferenceSession(str(repository.model_file(repo, spec.DECODER_MODEL)))
        self.model = model

    def encode(self, image: np.ndarray) -> list[np.ndarray]:
        return self.enc.run(None, {spec.ENCODER_IMAGE: verify.model_input(image, "float32")})

    def decode(
        self,
        feats,
        hw,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
    ):
        h, w = hw
        prompt = {
            k: v
            for k, v in dict(point_coords=point_coords, point_labels=point_labels, box=box).items()
            if v is not None
        }
        if point_coords is not None and np.asarray(point_coords).ndim == 3:  # batched clicks
            scale = torch.tensor([w, h], dtype=torch.float32)
            coords = (torch.as_tensor(point_coords, dtype=torch.float32) / scale * 1024).numpy()
            labels = np.asarray(point_labels, np.int32)
        else:
            coords, labels = verify._wire_prompt(prompt, h, w)
        n = coords.shape[0]
        masks = (
            np.zeros((1, 1, 256, 256), np.float32)
            if mask_input is None
            else np.asarray(mask_input, np.float32).reshape(-1, 1, 256, 256)
        )
        has = np.full(masks.shape[0], 0.0 if mask_input is None else 1.0, np.float32)
        feeds = dict(zip(spec.FEATURE_NAMES, feats[:3]))
        low, iou, _, _ = self.dec.run(
            None,
            {
                **feeds,
                spec.POINT_COORDS: coords,
                spec.POINT_LABELS: labels,
                spec.MASK_INPUT: masks,
                spec.HAS_MASK_INPUT: has,
            },
        )
        low, iou = torch.from_numpy(low), torch.from_numpy(iou)
        if multimask_output:
            low, iou = low[:, 1:], iou[:, 1:]
        else:
            low, iou = self.model.sam_mask_decoder._dynamic_multimask_via_stability(low, iou)
        masks = F.interpolate(low, (h, w), mode="bilinear", align_corners=False) > 0
        assert low.shape[0] == n
        return masks.numpy(), iou.numpy(), low.clamp(-32, 32).numpy()


@pytest.fixture(scope="module")
def pipeline(exported_repo: Path, sam2_model) -> OrtPipeline:
    return OrtPipeline(exported_repo, sam2_model)


@pytest.fixture(scope="module")
def reference(sam2_model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(sam2_model)


IMAGE = verify.synthetic_image(480, 640, seed=1)
H, W = IMAGE.shape[:2]


@pytest.fixture(scope="module")
def encoded(pipeline: OrtPipeline, reference):
    reference.set_image(IMAGE)
    return pipeline.encode(IMAGE)


def test_encoder_features_match_set_image(encoded, reference) -> None:
    ref = [reference._features["image_embed"], *reference._features["high_res_feats"]]
    for name, ours, theirs in zip(spec.FEATURE_NAMES, encoded, ref):
        assert ours.shape == tuple(theirs.shape), name
        assert np.abs(ours - theirs.numpy()).max() <= FEATURE_ATOL, name


CASES = {
    "positive_point": dict(point_coords=np.array([[210.0, 170.0]]), point_labels=np.array([1])),
    "positive_and_negative": dict(
        point_coords=np.array([[210.0, 170.0], [450.0, 310.0]]), point_labels=np.array([1, 0])
    ),
    "box": dict(box=np.array([60.0, 70.0, 350.0, 270.0])),
    "box_and_points": dict(
        box=np.array([320.0, 190.0, 610.0, 430.0]),
        point_coords=np.array([[450.0, 310.0], [120.0, 100.0]]),
        point_labels=np.array([1, 0]),
    ),
    "eight_boxes": dict(
        box=np.array(
            [
                [x, y, x + 150.0, y + 120.0]
                for x in (10.0, 200.0, 330.0, 470.0)
                for y in (20.0, 300.0)
            ]
        )
    ),
    "eight_clicks": dict(
        point_coords=np.array([[[40.0 + 70 * i, 60.0 + 40 * i]] for i in range(8)]),
        point_labels=np.ones((8, 1), np.int64),
    ),
}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("case", list(CASES))
def test_decoder_matches_predict(case: str, multimask: bool, pipeline, reference, encoded) -> None:
    prompt = CASES[case]
    ref_masks, ref_iou, ref_low = reference.predict(**prompt, multimask_output=multimask)
    masks, iou, low = pipeline.decode(encoded, (H, W), **prompt, multimask_output=multimask)
    assert masks.size == ref_masks.size and low.size == ref_low.size
    assert np.abs(low.reshape(ref_low.shape) - ref_low).max() <= LOGIT_ATOL
    assert np.abs(iou.reshape(ref_iou.shape) - ref_iou).max() <= LOGIT_ATOL
    assert _iou(masks.reshape(ref_masks.shape), ref_masks > 0) >= MIN_IOU


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
def test_refinement_with_previous_low_res_mask(
    multimask: bool, pipeline, reference, encoded
) -> None:
    first = CASES["positive_point"]
    _, ref_iou, ref_low = reference.predict(**first, multimask_output=True)
    previous = ref_low[np.argmax(ref_iou)][None]  # [1,256,256], as SAM 2's notebooks do
    prompt = dict(
        point_coords=np.array([[210.0, 170.0], [260.0, 200.0]]),
        point_labels=np.array([1, 1]),
        mask_input=previous,
    )
    ref_masks, ref_iou, ref_low = reference.predict(**prompt, multimask_output=multimask)
    masks, iou, low = pipeline.decode(encoded, (H, W), **prompt, multimask_output=multimask)
    assert np.abs(low.reshape(ref_low.shape) - ref_low).max() <= LOGIT_ATOL
    assert _iou(masks.reshape(ref_masks.shape), ref_masks > 0) >= MIN_IOU


def test_encoder_batch_dimension_is_dynamic(pipeline) -> None:
    x = verify.model_input(IMAGE, "float32")
    one = pipeline.enc.run(None, {spec.ENCODER_IMAGE: x})
    three = pipeline.enc.run(None, {spec.ENCODER_IMAGE: np.concatenate([x, x, x])})
    for a, b in zip(one, three):
        assert b.shape[0] == 3 and np.abs(b - a).max() <= 1e-5


# --- failures leave the repository untouched ----------------------------------------------------
def test_failed_verification_installs_nothing(repo_copy: Path) -> None:
    from sam2_triton_export import main

    before = _snapshot(repo_copy)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        # tolerance 0 cannot be met (float32 rounding differs), so the real gate fails
        main.export(
            export_args(
                "--random-weights", "--seed", "1", "--tolerance", "0", "--output", str(repo_copy)
            )
        )
    assert _snapshot(repo_copy) == before
    assert not list(repo_copy.parent.glob(".model_repository.staging-*"))


def test_interrupted_export_keeps_previous_models(repo_copy: Path) -> None:
    before = _snapshot(repo_copy)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam2_triton_app.cli",
            "export",
            "--random-weights",
            "--seed",
            "2",
            "--output",
            str(repo_copy),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:  # interrupt once the encoder has been written to staging
        if "Exporting sam2_decoder" in line:
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert _snapshot(repo_copy) == before
    assert not list(repo_copy.parent.glob(".model_repository.staging-*"))


def test_only_staging_left_by_dead_exports_is_removed(tmp_path: Path) -> None:
    """A killed export (SIGKILL, OOM) leaves its staging directory; the next export removes it,
    but never one whose export still runs, one from another host, or one it cannot attribute."""
    import socket

    from sam2_triton_export import install

    repo = tmp_path / "model_repository"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    owners = {
        "dead": f"{socket.gethostname()} {dead}",
        "alive": f"{socket.gethostname()} {os.getpid()}",
        "elsewhere": f"another-host {dead}",
        "garbled": "???",
        "unowned": None,
    }
    for name, owner in owners.items():
        path = tmp_path / f".model_repository.staging-{name}"
        path.mkdir()
        (path / "model.onnx").write_bytes(b"half")
        if owner is not None:
            (path / install.OWNER_FILE).write_text(owner)
    with install.staging_dir(repo) as staged:
        assert (staged / install.OWNER_FILE).read_text().split() == [
            socket.gethostname(),
            str(os.getpid()),
        ]
        left = sorted(
            p.name.rsplit("-", 1)[1] for p in tmp_path.glob(".model_repository.staging-*")
        )
        assert staged.name.rsplit("-", 1)[1] in left
        left.remove(staged.name.rsplit("-", 1)[1])
        assert left == ["alive", "elsewhere", "garbled", "unowned"]
    assert not staged.exists()


# --- checkpoints -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_state_dict(sam2_model) -> dict:
    return {k: v.clone() for k, v in sam2_model.state_dict().items()}


def test_checkpoint_round_trip_gives_the_same_model(
    tmp_path: Path, tiny_state_dict, sam2_model
) -> None:
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": tiny_state_dict}, path)
    model = checkpoints.build_model("tiny", checkpoints.load_state_dict(path))
    assert checkpoints.weights_fingerprint(model) == checkpoints.weights_fingerprint(sam2_model)


def test_truncated_checkpoint_is_rejected(tmp_path: Path, tiny_state_dict) -> None:
    path = tmp_path / "full.pt"
    torch.save({"model": tiny_state_dict}, path)
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated|cannot read"):
        checkpoints.load_state_dict(cut)


def test_non_checkpoint_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        checkpoints.load_state_dict(path)


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load_state_dict(tmp_path / "nope.pt")


def test_checkpoint_without_model_key_is_rejected(tmp_path: Path, tiny_state_dict) -> None:
    path = tmp_path / "bare.pt"
    torch.save(tiny_state_dict, path)  # a bare state dict, not {"model": ...}
    with pytest.raises(CheckpointError, match="expected a dict with a 'model'"):
        checkpoints.load_state_dict(path)


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": _NotATensor()}}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        checkpoints.load_state_dict(path)


def test_sam2_0_checkpoint_is_recognised(tiny_state_dict) -> None:
    old = {
        k: v
        for k, v in tiny_state_dict.items()
        if not k.startswith(("no_obj_embed_spatial", "obj_ptr_tpos_proj"))
    }
    with pytest.raises(CheckpointError, match=r"SAM 2 \(2.0\) checkpoint"):
        checkpoints.build_model("tiny", old)


def test_checkpoint_of_another_variant_is_rejected(tiny_state_dict) -> None:
    with pytest.raises(CheckpointError, match="does not match the SAM 2.1 small config"):
        checkpoints.build_model("small", tiny_state_dict)


def test_published_checkpoint_table() -> None:
    for variant in checkpoints.VARIANTS:
        info = checkpoints.checkpoint_info(variant)
        assert info.url.startswith("https://") and info.url.endswith(info.file)
        assert len(info.sha256) == 64 and int(info.sha256, 16) and info.bytes > 100_000_000
    with pytest.raises(CheckpointError, match="unknown variant"):
        checkpoints.checkpoint_info("huge")


def test_export_help_lists_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sam2_triton_app.cli", "export", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--variant",
        "--checkpoint",
        "--download",
        "--random-weights",
        "--seed",
        "--output",
        "--image-dtype",
        "--embedding-dtype",
        "--tolerance",
    ):
        assert flag in out


def test_export_requires_a_weights_source() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sam2_triton_app.cli", "export"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr


# --- TensorRT engine cache keys follow the exported files ----------------------------------------
def _engine_prefixes(repo: Path) -> dict[str, str]:
    out = {}
    for model in (spec.ENCODER_MODEL, spec.DECODER_MODEL):
        cfg = repository.parse((repo / model / "config.pbtxt").read_text())
        (accel,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        out[model] = accel.parameters["trt_engine_cache_prefix"]
    return out


def test_engine_cache_key_changes_with_weights_and_stays_for_the_same_export(
    exported_repo: Path, seed1_repo: Path, tmp_path: Path
) -> None:
    """ONNX Runtime's own engine id hashes names and versions, not weights: without a key of
    ours, a re-export with other weights would be served by the old TensorRT engines."""
    from sam2_triton_export import main

    seed0 = _engine_prefixes(exported_repo)
    manifest = json.loads((exported_repo / repository.MANIFEST_FILENAME).read_text())
    key = manifest["engine_cache_key"]
    assert seed0 == {m: f"{m}_{key}" for m in seed0}
    seed1 = _engine_prefixes(seed1_repo)
    assert seed1 != seed0 and all(seed1[m] != seed0[m] for m in seed0)
    again = tmp_path / "model_repository"  # the same export once more: the engines are reused
    main.export(
        export_args(
            "--variant", "tiny", "--random-weights", "--seed", str(SEED), "--output", str(again)
        )
    )
    assert _engine_prefixes(again) == seed0
    fp16 = repository.RepositoryOptions(feature_dtype="float16")  # other options: other key
    files = [repository.model_file(exported_repo, m) for m in seed0]
    assert repository.engine_cache_key(files, fp16) != key


def test_an_interrupt_a_library_swallows_is_still_noted() -> None:
    """torch's exporter can swallow the KeyboardInterrupt of a Ctrl-C (it passes through C++);
    the export notes the signal anyway and does not install (main.export checks the list)."""
    from sam2_triton_export import install

    before = signal.getsignal(signal.SIGINT)
    with install.interrupts_noted() as seen:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs in the main thread at the next bytecode
        except KeyboardInterrupt:
            pass  # what a swallowing library does
        assert seen == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before
