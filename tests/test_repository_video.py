"""``sam2-triton export --video``: the five video graphs and ``sam2_video`` in the repository.

Golden configs (one contract in ``sam2_triton_serve.repository``, checked against the exported
ONNX of the session's one ``--video`` export), the manifest, and atomicity: a crash in the middle
of a video export leaves the previous repository exactly as it was, and an export without
``--video`` removes the video models of an earlier one (they would not match the new weights).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sam2_triton import spec, video_spec
from sam2_triton_serve import repository

from .conftest import VIDEO_EXPORT_ARGS, export_args

GRAPHS = video_spec.VIDEO_GRAPHS
ONNX_TYPES = {
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
}
B, M, P = video_spec.MAX_OBJECTS_PER_CALL, video_spec.MAX_MEMORIES, video_spec.MAX_OBJ_PTRS
N = spec.MAX_PROMPT_POINTS + 1


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _signature(values) -> dict[str, tuple[int, list[int]]]:
    return {
        v.name: (
            ONNX_TYPES[v.type.tensor_type.elem_type],
            [d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    }


def _profile(text: str) -> dict[str, list[int]]:
    return {k: [int(d) for d in v.split("x")] for k, v in (p.split(":") for p in text.split(","))}


# --- the generated configs ----------------------------------------------------------------------
def test_video_configs_only_with_video() -> None:
    image = repository.config_files()
    video = repository.config_files(video=True)
    assert {k: video[k] for k in image} == image  # the image models are unchanged
    added = {rel.split("/")[0] for rel in set(video) - set(image)}
    assert (
        added
        == set(repository.VIDEO_MODELS)
        == {
            *GRAPHS,
            video_spec.VIDEO_MODEL,
            video_spec.VIDEO_STREAM_MODEL,
        }
    )
    for name in repository.VIDEO_MODELS:
        for rel in ("config.pbtxt", "configs/cpu.pbtxt", "1/model.py"):
            assert f"{name}/{rel}" in video
    # the committed repository is the image-only default
    root = Path(__file__).resolve().parents[1] / "model_repository"
    assert not any((root / name).exists() for name in repository.VIDEO_MODELS)


def test_video_graph_profiles_golden() -> None:
    """GPU flavour: TensorRT FP16 profiles covering every shape the server sends; memory
    attention and the mask prompt on ONNX Runtime CUDA FP32 (P = 0, see repository.py)."""
    want = {
        video_spec.VIDEO_IMAGE_ENCODER_MODEL: {
            "trt_profile_min_shapes": "image:1x3x1024x1024",
            "trt_profile_max_shapes": f"image:{B}x3x1024x1024",
        },
        video_spec.VIDEO_MASK_DECODER_MODEL: {
            "trt_profile_min_shapes": "pix_feat:1x256x64x64,high_res_feats_0:1x32x256x256,"
            "high_res_feats_1:1x64x128x128,point_coords:1x1x2,point_labels:1x1,"
            "mask_input:1x1x256x256,has_mask_input:1,multimask_output:1",
            "trt_profile_max_shapes": f"pix_feat:{B}x256x64x64,high_res_feats_0:{B}x32x256x256,"
            f"high_res_feats_1:{B}x64x128x128,point_coords:{B}x{N}x2,point_labels:{B}x{N},"
            f"mask_input:{B}x1x256x256,has_mask_input:{B},multimask_output:{B}",
        },
        video_spec.MEMORY_ENCODER_MODEL: {
            "trt_profile_min_shapes": "vision_feat:1x256x64x64,pred_masks:1x1x256x256,"
            "object_score_logits:1x1,binarize_mask:1",
            "trt_profile_max_shapes": f"vision_feat:{B}x256x64x64,pred_masks:{B}x1x256x256,"
            f"object_score_logits:{B}x1,binarize_mask:{B}",
        },
    }
    assert set(want) == set(repository.VIDEO_TRT_GRAPHS)
    for name in GRAPHS:
        cfg = repository.video_graph_config(name, "gpu")
        assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 0
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        accels = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        if name not in want:  # FP32 on the CUDA execution provider, no warmup needed
            assert not accels and not cfg.model_warmup
            continue
        (accel,) = accels
        params = dict(accel.parameters)
        assert set(params) <= repository.ORT_TRT_ACCELERATOR_KEYS
        assert params["precision_mode"] == "FP16"
        assert params["trt_engine_cache_path"] == f"/engine_cache/{name}"
        for key, value in want[name].items():
            assert params[key] == value, (name, key)
        dynamic = {t.name for t in cfg.input if -1 in t.dims}
        for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
            assert set(_profile(params[key])) == dynamic, (name, key)
        assert [w.name for w in cfg.model_warmup] == ["one_object"]
        assert set(cfg.model_warmup[0].inputs) == {t.name for t in cfg.input}


def test_memory_attention_shape_ranges_include_zero_pointers() -> None:
    ranges = repository.video_shape_ranges(video_spec.MEMORY_ATTENTION_MODEL)
    assert ranges == {
        "vision_feat": ((1, 256, 64, 64), (B, 256, 64, 64)),
        "maskmem_features": ((1, 1, 64, 64, 64), (B, M, 64, 64, 64)),
        "maskmem_tpos": ((1,), (M,)),
        "obj_ptrs": ((1, 0, 256), (B, P, 256)),
        "obj_ptr_tpos": ((0,), (P,)),
    }
    assert video_spec.MEMORY_ATTENTION_MODEL not in repository.VIDEO_TRT_GRAPHS


def test_video_graph_cpu_flavour() -> None:
    for name in GRAPHS:
        cfg = repository.video_graph_config(name, "cpu")
        assert cfg.backend == "python" and cfg.max_batch_size == 0
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert "EXECUTION_ENV_PATH" not in cfg.parameters
        assert repository.model_shim(name) == repository.PYTHON_MODEL_SHIM  # onnx_model


@pytest.mark.parametrize("flavour", repository.FLAVOURS)
def test_sam2_video_config(flavour: str) -> None:
    cfg = repository.parse(repository.render(repository.video_config(flavour)))
    assert cfg.name == video_spec.VIDEO_MODEL
    # Triton's batch dimension, every input ragged, the dynamic batcher with a short queue
    # delay: requests of several videos reach the one instance together
    assert cfg.backend == "python" and cfg.max_batch_size == 8
    assert all(t.allow_ragged_batch for t in cfg.input)
    assert cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    # one instance, on the CPU, on both flavours: the videos live in its process
    groups = [(g.kind, g.count, list(g.gpus)) for g in cfg.instance_group]
    assert groups == [(mc.ModelInstanceGroup.KIND_CPU, 1, [])]
    assert not cfg.model_transaction_policy.decoupled and not cfg.response_cache.enable
    assert all(t.optional for t in cfg.input)
    dtypes = {v: k for k, v in repository._DTYPES.items()}
    assert [(t.name, dtypes[t.data_type], tuple(t.dims)) for t in cfg.input] == [
        (t.name, t.dtype, t.shape) for t in video_spec.video_inputs()
    ]
    assert [(t.name, dtypes[t.data_type], tuple(t.dims)) for t in cfg.output] == [
        (t.name, t.dtype, t.shape) for t in video_spec.video_outputs()
    ]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {
        "video_frame_budget_bytes": str(4 << 30),
        "max_videos": "8",
        "video_idle_ttl_s": "3600",
        # memory attention is compute-bound on a CPU: batching objects there only adds memory
        "attention_batch_bytes": str(8 << 30 if flavour == "gpu" else 1 << 30),
    }
    opts = repository.RepositoryOptions(
        video_frame_budget_bytes=123, max_videos=2, video_request_batching=False
    )
    unbatched = repository.video_config(flavour, opts)
    assert unbatched.parameters["max_videos"].string_value == "2"
    assert not unbatched.HasField("dynamic_batching")
    with pytest.raises(ValueError, match="video_idle_ttl_s"):
        repository.RepositoryOptions(video_idle_ttl_s=0)


@pytest.mark.parametrize("flavour", repository.FLAVOURS)
def test_sam2_video_stream_config(flavour: str) -> None:
    cfg = repository.parse(repository.render(repository.video_stream_config(flavour)))
    assert cfg.name == video_spec.VIDEO_STREAM_MODEL and cfg.backend == "python"
    assert cfg.model_transaction_policy.decoupled and cfg.max_batch_size == 0
    assert [t.name for t in cfg.input if not t.optional] == [
        video_spec.VIDEO_OP,
        video_spec.VIDEO_ID,
    ]
    assert [t.name for t in cfg.output] == [
        video_spec.FRAME_IDXS,
        video_spec.OBJ_IDS,
        video_spec.MASKS,
        video_spec.DONE,
    ]
    assert repository.model_shim(video_spec.VIDEO_STREAM_MODEL).endswith(
        "from sam2_triton_server.video_stream import TritonPythonModel  # noqa: F401\n"
    )


def test_sam2_video_shim() -> None:
    text = repository.model_shim(video_spec.VIDEO_MODEL)
    assert text == (
        '"""sam2_video: video tracking held on the server (BLS)."""\n\n'
        "from sam2_triton_server.video import TritonPythonModel  # noqa: F401\n"
    )
    if importlib.util.find_spec("sam2_triton_server.video") is not None:
        from sam2_triton_server.video import TritonPythonModel

        assert all(callable(getattr(TritonPythonModel, m, None)) for m in ("initialize", "execute"))


# --- the installed repository of `sam2-triton export --video` -----------------------------------
def test_video_export_installs_graphs_configs_and_manifest(video_repo: Path) -> None:
    manifest = json.loads((video_repo / repository.MANIFEST_FILENAME).read_text())
    opts = repository.RepositoryOptions(engine_cache_key=manifest["engine_cache_key"])
    for rel, text in repository.config_files(opts, video=True).items():
        assert (video_repo / rel).read_text() == text, rel
    assert manifest["video"]["enabled"] and manifest["video"]["passed"]
    assert manifest["video"]["graphs"] == list(GRAPHS)
    assert manifest["video"]["session_model"] == video_spec.VIDEO_MODEL
    assert set(manifest["video"]["max_abs_diff"]) == set(GRAPHS)
    assert max(manifest["video"]["max_abs_diff"].values()) <= 1e-4
    report = json.loads((video_repo / manifest["video"]["report"]).read_text())
    assert report["fingerprint"] == manifest["fingerprint"]  # the same weights as the image path
    for name in (spec.ENCODER_MODEL, spec.DECODER_MODEL, spec.AMG_MASKS_MODEL, *GRAPHS):
        entry = manifest["models"][name]
        path = video_repo / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
    assert not (video_repo / video_spec.VIDEO_MODEL / "1" / repository.MODEL_FILENAME).exists()
    assert not list(video_repo.parent.glob(f".{video_repo.name}.staging-*"))


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("flavour", repository.FLAVOURS)
def test_video_config_matches_onnx(video_repo: Path, name: str, flavour: str) -> None:
    rel = "config.pbtxt" if flavour == "gpu" else "configs/cpu.pbtxt"
    cfg = repository.parse((video_repo / name / rel).read_text())
    graph = onnx.load(str(repository.model_file(video_repo, name)), load_external_data=False).graph
    for section, sig in (
        (cfg.input, _signature(graph.input)),
        (cfg.output, _signature(graph.output)),
    ):
        assert [t.name for t in section] == list(sig)
        for t in section:
            assert (t.data_type, list(t.dims)) == sig[t.name], (name, t.name)


def test_video_engine_cache_key_covers_the_video_graphs(video_repo: Path) -> None:
    manifest = json.loads((video_repo / repository.MANIFEST_FILENAME).read_text())
    opts = repository.RepositoryOptions(image_dtype="float32", feature_dtype="float32")
    files = [repository.model_file(video_repo, m) for m in (spec.ENCODER_MODEL, spec.DECODER_MODEL)]
    videos = [repository.model_file(video_repo, m) for m in GRAPHS]
    assert repository.engine_cache_key([*files, *videos], opts) == manifest["engine_cache_key"]
    cfg = repository.parse(
        (video_repo / video_spec.MEMORY_ENCODER_MODEL / "config.pbtxt").read_text()
    )
    (accel,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.parameters["trt_engine_cache_prefix"] == (
        f"{video_spec.MEMORY_ENCODER_MODEL}_{manifest['engine_cache_key']}"
    )


def test_crash_mid_video_export_then_image_only_export(
    video_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after two video graphs were written (to staging) leaves the previous --video
    repository byte for byte; a later export without --video removes the video models (they
    would not match its weights) and leaves a repository of exactly the image models."""
    import shutil

    from sam2_triton_export import main, video_export

    repo = tmp_path / "model_repository"
    # (without the shims' bytecode that a server run from video_repo may have left)
    shutil.copytree(video_repo, repo, ignore=shutil.ignore_patterns("__pycache__"))
    before = _snapshot(repo)
    real_export = video_export._export
    written = []

    def crash(module, args, path, name):
        if len(written) == 2:
            raise RuntimeError("simulated crash mid video export")
        real_export(module, args, path, name)
        written.append(path)

    monkeypatch.setattr(video_export, "_export", crash)
    # seed 1: the image models staged (and verified) first differ from the installed ones
    args = [a if a != str(0) else "1" for a in VIDEO_EXPORT_ARGS]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main.export(export_args(*args, "--output", str(repo)))
    assert len(written) == 2 and not any(p.exists() for p in written)  # staging removed
    assert _snapshot(repo) == before
    assert not list(tmp_path.glob(".model_repository.staging-*"))

    monkeypatch.undo()
    # text models of an earlier --detector export go too (the repository is what the export says)
    for rel in (
        f"{repository.DETECTOR_GRAPHS[0]}/1/{repository.MODEL_FILENAME}",
        f"{repository.TEXT_MODELS[-1]}/config.pbtxt",
        "detector_export.json",
    ):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("from an earlier --detector export")
    manifest = main.export(
        export_args("--variant", "tiny", "--random-weights", "--seed", "1", "--output", str(repo))
    )
    assert manifest["video"] == {"enabled": False} and manifest["text"] == {"enabled": False}
    assert not any((repo / name).exists() for name in repository.VIDEO_MODELS)
    assert not any((repo / name).exists() for name in repository.TEXT_MODELS)
    assert not (repo / video_export.REPORT_FILE).exists()
    expected = {
        *repository.config_files(),
        *(f"{m}/1/{repository.MODEL_FILENAME}" for m in manifest["models"]),
        repository.MANIFEST_FILENAME,
    }
    assert set(_snapshot(repo)) == expected
    assert not list(tmp_path.glob(".model_repository.staging-*"))


# --- served by the real tritonserver (needs sam2_triton_server.video, written separately) -------
@pytest.mark.skipif(
    importlib.util.find_spec("sam2_triton_server.video") is None,
    reason="sam2_triton_server.video (the sam2_video model) is not written yet",
)
def test_video_graphs_served_with_zero_pointers(video_triton_server) -> None:
    """Every video graph loads on the CPU flavour; memory attention runs with P = 0."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(video_triton_server.grpc_url) as client:
        for name in repository.VIDEO_MODELS:
            assert client.is_model_ready(name), name
        feeds = {
            video_spec.VISION_FEAT: np.zeros((1, 256, 64, 64), np.float32),
            video_spec.MASKMEM_FEATURES: np.zeros((1, 1, 64, 64, 64), np.float32),
            video_spec.MASKMEM_TPOS: np.zeros((1,), np.int64),
            video_spec.OBJ_PTRS: np.zeros((1, 0, 256), np.float32),
            video_spec.OBJ_PTR_TPOS: np.zeros((0,), np.float32),
        }
        inputs = []
        for key, value in feeds.items():
            t = grpcclient.InferInput(
                key, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64"
            )
            t.set_data_from_numpy(value)
            inputs.append(t)
        out = client.infer(video_spec.MEMORY_ATTENTION_MODEL, inputs)
        assert out.as_numpy(video_spec.PIX_FEAT_WITH_MEM).shape == (1, 256, 64, 64)
