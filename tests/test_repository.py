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
ONNX_MODELS = (spec.ENCODER_MODEL, spec.DECODER_MODEL)
BLS_MODELS = (spec.SESSION_MODEL, spec.SEGMENT_MODEL)  # python backend in both flavours
ONNX_CONFIGS = [p for p in CONFIGS if p.relative_to(ROOT).parts[0] in ONNX_MODELS]
BLS_CONFIGS = [p for p in CONFIGS if p.relative_to(ROOT).parts[0] in BLS_MODELS]
ONNX_TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
              onnx.TensorProto.UINT8: mc.TYPE_UINT8, onnx.TensorProto.INT32: mc.TYPE_INT32}


def test_every_model_has_both_flavours() -> None:
    assert {p.relative_to(ROOT).as_posix() for p in CONFIGS} == {
        f"{m}/{f}" for m in (*ONNX_MODELS, *BLS_MODELS)
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


@pytest.mark.parametrize("path", ONNX_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
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


@pytest.mark.parametrize("path", [p for p in ONNX_CONFIGS if p.name == "config.pbtxt"],
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


@pytest.mark.parametrize("path", [p for p in ONNX_CONFIGS if p.parent.name == "configs"],
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


# --- the BLS models: sam2_session and sam2_segment --------------------------------------------
@pytest.mark.parametrize("path", BLS_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_bls_model_configs(path: Path) -> None:
    cfg = repository.parse(path.read_text())
    gpu = path.name == "config.pbtxt"
    assert cfg.name == path.relative_to(ROOT).parts[0]
    assert cfg.backend == "python" and cfg.max_batch_size == 0
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(kind, 1)]  # one store, one process
    assert not cfg.response_cache.enable and not cfg.model_transaction_policy.decoupled
    assert "EXECUTION_ENV_PATH" not in cfg.parameters
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["ENCODER_MODEL"] == spec.ENCODER_MODEL
    assert params["DECODER_MODEL"] == spec.DECODER_MODEL
    source = (path.parents[1] if not gpu else path.parent) / "1" / "model.py"
    assert source.read_text() == repository.bls_model_source(cfg.name)
    if cfg.name == spec.SESSION_MODEL:
        assert all(t.optional for t in cfg.input)  # op selects the inputs
        assert [t.name for t in cfg.input] == [t.name for t in spec.session_inputs()]
        assert [t.name for t in cfg.output] == [t.name for t in spec.session_outputs()]
        assert int(params["SESSION_CACHE_BYTES"]) > 16_777_216  # more than one FP32 image
        assert params["SESSION_FEATURES_ON_GPU"] == ("true" if gpu else "false")
    else:
        assert [t.name for t in cfg.input] == [spec.SEGMENT_IMAGE, spec.SEGMENT_PROMPTS]
        assert {t.data_type for t in (*cfg.input, *cfg.output)} == {mc.TYPE_STRING}
        assert params["ENCODER_IMAGE_DTYPE"] == "float32"


_ALLOWED_IMPORTS = {"numpy", "triton_python_backend_utils", "PIL", "__future__"}


@pytest.mark.parametrize("model", BLS_MODELS)
def test_bls_model_files_are_self_contained(model: str) -> None:
    """model.py runs in the NGC container, where no sam2_triton package is installed."""
    import ast
    import sys

    tree = ast.parse(repository.bls_model_source(model))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{model}: relative import"
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in _ALLOWED_IMPORTS or top in sys.stdlib_module_names, f"{model}: {name}"


def test_session_model_agrees_with_spec() -> None:
    from sam2_triton_serve import segment_model, session_model

    sm = session_model
    assert (sm.ENCODER_MODEL, sm.DECODER_MODEL) == ONNX_MODELS
    assert (sm.OP, sm.IMAGE_ID, sm.ORIG_HW, sm.IMAGE) == (
        spec.SESSION_OP, spec.SESSION_IMAGE_ID, spec.SESSION_ORIG_HW, spec.ENCODER_IMAGE)
    assert tuple(sm.OP_INPUTS) == spec.SESSION_OPS
    assert (sm.ID_LEN, sm.ID_SALT, sm.UNKNOWN_IMAGE, sm.MAX_PIXELS) == (
        spec.SESSION_ID_LEN, spec.SESSION_ID_SALT, spec.SESSION_UNKNOWN_IMAGE,
        spec.SESSION_MAX_PIXELS)
    assert sm.FEATURE_NAMES == spec.FEATURE_NAMES and sm.FINGERPRINT == spec.FINGERPRINT
    assert sm.DECODER_OUTPUTS == (spec.LOW_RES_MASKS, spec.IOU_PREDICTIONS, spec.OBJECT_SCORE_LOGITS)
    assert (sm.POINT_COORDS, sm.POINT_LABELS, sm.MASK_INPUT, sm.HAS_MASK_INPUT) == (
        spec.POINT_COORDS, spec.POINT_LABELS, spec.MASK_INPUT, spec.HAS_MASK_INPUT)
    names = {t.name for t in spec.session_inputs()}
    assert {n for req, opt in sm.OP_INPUTS.values() for n in (*req, *opt)} | {sm.OP} == names
    assert {n for outs in sm.OP_OUTPUTS.values() for n in outs} == {
        t.name for t in spec.session_outputs()}
    seg = segment_model
    assert (seg.IMAGE, seg.PROMPTS, seg.RESULT) == (
        spec.SEGMENT_IMAGE, spec.SEGMENT_PROMPTS, spec.SEGMENT_RESULT)
    assert seg.PROMPT_KEYS == spec.SEGMENT_PROMPT_KEYS and seg.FORMATS == spec.SEGMENT_FORMATS
    assert (seg.IMAGE_SIZE, seg.LOW_RES_SIZE, seg.NUM_MASK_TOKENS) == (
        spec.IMAGE_SIZE, spec.LOW_RES_SIZE, spec.NUM_MASK_TOKENS)
    assert (seg.STABILITY_DELTA, seg.STABILITY_THRESH, seg.MASK_THRESHOLD) == (
        spec.STABILITY_DELTA, spec.STABILITY_THRESH, spec.MASK_THRESHOLD)


def test_session_options_change_the_configs() -> None:
    opts = repository.RepositoryOptions(image_dtype="float16", session_cache_bytes=12345,
                                        session_features_on_gpu=False)
    gpu = repository.session_config("gpu", opts)
    assert gpu.parameters["SESSION_CACHE_BYTES"].string_value == "12345"
    assert gpu.parameters["SESSION_FEATURES_ON_GPU"].string_value == "false"
    assert {t.name: t.data_type for t in gpu.input}[spec.ENCODER_IMAGE] == mc.TYPE_FP16
    seg = repository.segment_config("cpu", opts)
    assert seg.parameters["ENCODER_IMAGE_DTYPE"].string_value == "float16"
    with pytest.raises(ValueError, match="session_cache_bytes"):
        repository.RepositoryOptions(session_cache_bytes=0)
