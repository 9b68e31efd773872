"""Every config.pbtxt parsed with Triton's own schema and checked against the ONNX files."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sam2_triton import spec
from sam2_triton_serve import repository

ROOT = Path(__file__).resolve().parents[1] / "model_repository"
CONFIGS = sorted(ROOT.glob("*/config.pbtxt")) + sorted(ROOT.glob("*/configs/*.pbtxt"))
ONNX_TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
              onnx.TensorProto.UINT8: mc.TYPE_UINT8, onnx.TensorProto.INT32: mc.TYPE_INT32}


def test_every_model_has_both_flavours() -> None:
    assert {p.relative_to(ROOT).as_posix() for p in CONFIGS} == {
        f"{m}/{f}" for m in (spec.ENCODER_MODEL, spec.DECODER_MODEL)
        for f in ("config.pbtxt", "configs/cpu.pbtxt")}


def _signature(values) -> dict[str, tuple[int, list[int]]]:
    out = {}
    for v in values:
        t = v.type.tensor_type
        out[v.name] = (ONNX_TYPES[t.elem_type], [d.dim_value if d.dim_value else -1 for d in t.shape.dim])
    return out


@pytest.fixture(scope="module")
def onnx_signatures(exported_repo: Path) -> dict[str, tuple[dict, dict]]:
    sigs = {}
    for model in (spec.ENCODER_MODEL, spec.DECODER_MODEL):
        m = onnx.load(str(repository.model_file(exported_repo, model)), load_external_data=False)
        sigs[model] = (_signature(m.graph.input), _signature(m.graph.output))
    return sigs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_matches_onnx(path: Path, onnx_signatures) -> None:
    cfg = repository.parse(path.read_text())  # Triton's schema: unknown fields raise
    assert cfg.name == path.parts[len(ROOT.parts)]
    inputs, outputs = onnx_signatures[cfg.name]
    for section, onnx_sig in ((cfg.input, inputs), (cfg.output, outputs)):
        assert {t.name for t in section} == set(onnx_sig)
        for t in section:
            dtype, dims = onnx_sig[t.name]
            assert t.data_type == dtype, t.name
            if cfg.max_batch_size > 0:
                assert dims[0] == -1, f"{t.name}: batch dimension must be dynamic in the ONNX"
                dims = dims[1:]
            assert list(t.dims) == dims, t.name


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name == "config.pbtxt"],
                         ids=lambda p: p.parent.name)
def test_gpu_flavour(path: Path) -> None:
    cfg = repository.parse(path.read_text())
    assert cfg.backend == "onnxruntime"
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    accels = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accels] == ["tensorrt"]
    params = dict(accels[0].parameters)
    assert set(params) <= repository.ORT_TRT_ACCELERATOR_KEYS  # unknown keys -> model refused
    assert params["precision_mode"] == "FP16"
    assert params["trt_engine_cache_enable"] == "true"
    assert params["trt_engine_cache_path"] == f"/engine_cache/{cfg.name}"
    for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        names = {item.split(":")[0] for item in params[key].split(",")}
        dynamic = {t.name for t in cfg.input if -1 in t.dims or cfg.max_batch_size > 0}
        assert dynamic <= names, f"{key} must cover every dynamic input"
    assert len(cfg.model_warmup) >= 1
    if cfg.name == spec.ENCODER_MODEL:
        assert cfg.max_batch_size > 1 and cfg.response_cache.enable
        q = cfg.dynamic_batching.default_queue_policy
        assert q.max_queue_size > 0 and q.timeout_action == mc.ModelQueuePolicy.REJECT
        assert 0 < cfg.dynamic_batching.max_queue_delay_microseconds <= 10_000
    else:
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "configs"],
                         ids=lambda p: p.parents[1].name)
def test_cpu_flavour(path: Path) -> None:
    cfg = repository.parse(path.read_text())
    assert cfg.backend == "python"
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert "EXECUTION_ENV_PATH" not in cfg.parameters  # no machine-specific paths committed
    assert (path.parents[1] / "1" / "model.py").read_text() == repository.PYTHON_MODEL_SHIM
    if cfg.name == spec.ENCODER_MODEL:
        assert cfg.max_batch_size > 1 and cfg.response_cache.enable


def test_unknown_accelerator_key_is_caught() -> None:
    text = (ROOT / spec.DECODER_MODEL / "config.pbtxt").read_text()
    bad = repository.parse(text.replace('"trt_engine_cache_enable"', '"trt_engine_cache_enabled"'))
    params = bad.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
    assert not set(params) <= repository.ORT_TRT_ACCELERATOR_KEYS


def test_fp16_options_change_the_dtypes() -> None:
    opts = repository.RepositoryOptions(image_dtype="uint8", feature_dtype="float16")
    enc = repository.encoder_config("gpu", opts)
    dec = repository.decoder_config("cpu", opts)
    assert {t.name: t.data_type for t in enc.input} == {spec.ENCODER_IMAGE: mc.TYPE_UINT8}
    assert {t.data_type for t in enc.output if t.name in spec.FEATURE_NAMES} == {mc.TYPE_FP16}
    assert {t.data_type for t in dec.input if t.name in spec.FEATURE_NAMES} == {mc.TYPE_FP16}
    with pytest.raises(ValueError, match="feature_dtype"):
        repository.RepositoryOptions(feature_dtype="bfloat16")
