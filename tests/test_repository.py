"""Every config.pbtxt parsed with Triton's own schema and checked against the ONNX files; every
model.py a shim onto ``sam2_triton_server``, which re-implements none of the SDK's logic."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sam2_triton import spec
from sam2_triton_serve import repository

ROOT = Path(__file__).resolve().parents[1] / "model_repository"
CONFIGS = sorted(ROOT.glob("*/config.pbtxt")) + sorted(ROOT.glob("*/configs/*.pbtxt"))
TRT_MODELS = (spec.ENCODER_MODEL, spec.DECODER_MODEL)  # TensorRT FP16 on the GPU flavour
ONNX_MODELS = (*TRT_MODELS, spec.AMG_MASKS_MODEL)  # sam2_amg_masks: FP32 on every flavour
BLS_MODELS = (spec.SESSION_MODEL, spec.SEGMENT_MODEL, spec.EVERYTHING_MODEL)  # python backend
ONNX_CONFIGS = [p for p in CONFIGS if p.relative_to(ROOT).parts[0] in ONNX_MODELS]
BLS_CONFIGS = [p for p in CONFIGS if p.relative_to(ROOT).parts[0] in BLS_MODELS]
ONNX_TYPES = {
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
}


def test_every_model_has_both_flavours() -> None:
    assert {p.relative_to(ROOT).as_posix() for p in CONFIGS} == {
        f"{m}/{f}"
        for m in (*ONNX_MODELS, *BLS_MODELS)
        for f in ("config.pbtxt", "configs/cpu.pbtxt")
    }


def _signature(values) -> dict[str, tuple[int, list[int]]]:
    out = {}
    for v in values:
        t = v.type.tensor_type
        out[v.name] = (
            ONNX_TYPES[t.elem_type],
            [d.dim_value if d.dim_value else -1 for d in t.shape.dim],
        )
    return out


@pytest.fixture(scope="module")
def onnx_signatures(exported_repo: Path) -> dict[str, tuple[dict, dict]]:
    sigs = {}
    for model in ONNX_MODELS:
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


@pytest.mark.parametrize(
    "path",
    [p for p in ONNX_CONFIGS if p.name == "config.pbtxt" and p.parent.name in TRT_MODELS],
    ids=lambda p: p.parent.name,
)
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


@pytest.mark.parametrize(
    "path", [p for p in ONNX_CONFIGS if p.parent.name == "configs"], ids=lambda p: p.parents[1].name
)
def test_cpu_flavour(path: Path) -> None:
    cfg = repository.parse(path.read_text())
    assert cfg.backend == "python"
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert "EXECUTION_ENV_PATH" not in cfg.parameters  # no machine-specific paths committed
    assert (path.parents[1] / "1" / "model.py").read_text() == repository.model_shim(cfg.name)
    if cfg.name == spec.ENCODER_MODEL:
        assert cfg.max_batch_size > 1 and cfg.response_cache.enable


def test_amg_masks_runs_fp32_on_the_gpu() -> None:
    """Segment-everything's thresholds must see SAM 2's FP32 logits: ONNX Runtime on the GPU,
    no TensorRT FP16 accelerator, one request = one batch of one crop (shapes vary)."""
    cfg = repository.parse((ROOT / spec.AMG_MASKS_MODEL / "config.pbtxt").read_text())
    assert cfg.backend == "onnxruntime"
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")


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
    # one instance per server, however many GPUs: an instance_group count is per GPU, so the
    # GPU flavour pins it to GPU 0 (else one session store per GPU, ids unknown to the others)
    groups = [(g.kind, g.count, list(g.gpus)) for g in cfg.instance_group]
    want = (
        (mc.ModelInstanceGroup.KIND_GPU, 1, [0]) if gpu else (mc.ModelInstanceGroup.KIND_CPU, 1, [])
    )
    assert groups == [want]
    assert not cfg.response_cache.enable and not cfg.model_transaction_policy.decoupled
    assert "EXECUTION_ENV_PATH" not in cfg.parameters
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["ENCODER_MODEL"] == spec.ENCODER_MODEL
    assert params["DECODER_MODEL"] == spec.DECODER_MODEL
    source = (path.parents[1] if not gpu else path.parent) / "1" / "model.py"
    assert source.read_text() == repository.model_shim(cfg.name)
    if cfg.name == spec.SESSION_MODEL:
        assert all(t.optional for t in cfg.input)  # op selects the inputs
        assert [t.name for t in cfg.input] == [t.name for t in spec.session_inputs()]
        assert [t.name for t in cfg.output] == [t.name for t in spec.session_outputs()]
        inputs = {t.name: t for t in cfg.input}
        flag = inputs[spec.SESSION_MULTIMASK]  # decode's optional token selection
        assert (flag.data_type, list(flag.dims)) == (mc.TYPE_BOOL, [1])
        outputs = {t.name: list(t.dims) for t in cfg.output}
        assert outputs[spec.LOW_RES_MASKS] == [-1, -1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE]
        assert outputs[spec.IOU_PREDICTIONS] == [-1, -1]  # C = 4, 3 or 1
        assert int(params["SESSION_CACHE_BYTES"]) > 16_777_216  # more than one FP32 image
        assert params["SESSION_FEATURES_ON_GPU"] == ("true" if gpu else "false")
    elif cfg.name == spec.EVERYTHING_MODEL:
        assert [t.name for t in cfg.input] == [spec.EVERYTHING_IMAGE, spec.EVERYTHING_OPTIONS]
        assert all(t.optional for t in cfg.input)  # image, or options.image_id
        assert {t.data_type for t in (*cfg.input, *cfg.output)} == {mc.TYPE_STRING}
        assert params["AMG_MASKS_MODEL"] == spec.AMG_MASKS_MODEL
        assert params["SESSION_MODEL"] == spec.SESSION_MODEL
        assert params["ENCODER_IMAGE_DTYPE"] == "float32"
    else:
        assert [t.name for t in cfg.input] == [spec.SEGMENT_IMAGE, spec.SEGMENT_PROMPTS]
        assert {t.data_type for t in (*cfg.input, *cfg.output)} == {mc.TYPE_STRING}
        assert params["ENCODER_IMAGE_DTYPE"] == "float32"


# --- every model.py: a shim onto sam2_triton_server -------------------------------------------
ALL_MODELS = (*ONNX_MODELS, *BLS_MODELS)
SERVER = Path(__file__).resolve().parents[1] / "server" / "sam2_triton_server"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_files_are_shims_onto_the_server_package(model: str) -> None:
    """model.py is a docstring and one import of TritonPythonModel from sam2_triton_server, as
    repository.py generates it, and that import gives a python-backend model class."""
    text = (ROOT / model / "1" / "model.py").read_text()
    assert text == repository.model_shim(model)  # regenerate: sam2-triton export
    docstring, statement = ast.parse(text).body
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value.value, str)
    assert isinstance(statement, ast.ImportFrom) and statement.level == 0
    assert statement.module.startswith("sam2_triton_server.")
    assert [(a.name, a.asname) for a in statement.names] == [("TritonPythonModel", None)]
    cls = importlib.import_module(statement.module).TritonPythonModel
    assert inspect.isclass(cls)
    assert all(callable(getattr(cls, m, None)) for m in ("initialize", "execute", "finalize"))
    assert len(text.splitlines()) <= 5


def _sdk_names() -> tuple[set[str], dict[str, object]]:
    """Public functions/classes of the SDK's pure modules, and spec's constants by name."""
    from sam2_triton import amg, prompts, transforms

    functions = {
        name
        for module in (spec, transforms, prompts, amg)
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", "") == module.__name__
    }
    constants = {k: v for k, v in vars(spec).items() if k.isupper()}
    return functions, constants


def _restated(source: str) -> list[tuple[int, str]]:
    """What a server module restates of the SDK: a function or class named like one of the SDK's
    (load_image, select_masks, ...), a module-level name of a spec constant (LOW_RES_SIZE, ...),
    or a module-level string (tuple) equal to a spec constant or tensor/model name."""
    functions, constants = _sdk_names()
    wire = {
        t.name
        for f in (
            spec.session_inputs,
            spec.session_outputs,
            spec.decoder_inputs,
            spec.decoder_outputs,
            spec.segment_inputs,
        )
        for t in f()
    }
    strings = {v for v in constants.values() if isinstance(v, str)} | wire
    strings |= {
        v for v in constants.values() if isinstance(v, tuple) and all(isinstance(x, str) for x in v)
    }
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in functions:
            found.append((node.lineno, f"def {node.name}"))
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        found += [(node.lineno, f"{n} = ...") for n in names if n in constants]
        try:
            value = ast.literal_eval(node.value) if node.value is not None else None
        except ValueError:
            continue
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if values in strings or any(isinstance(v, str) and v in strings for v in values):
            found.append((node.lineno, f"{names} = {value!r}"))
    return found


def test_the_restatement_detector_finds_copies() -> None:
    """The check below is not vacuous: it flags what the self-contained copies did."""
    copy = (
        'ENCODER_MODEL = "sam2_encoder"\n'
        'FEATURES = ("image_embed", "high_res_feats_0", "high_res_feats_1")\n'
        "LOW_RES_SIZE = 256\n"
        'IMAGE = "image"\n'
        "def select_masks(masks, ious, multimask_output): ...\n"
        "def load_image(data): ...\n"
    )
    assert {line for line, _ in _restated(copy)} == {1, 2, 3, 4, 5, 6}, _restated(copy)
    assert _restated("MAX_OBJECTS = 256\nIMAGE = spec.ENCODER_IMAGE\n") == []


def test_the_server_package_uses_the_sdk_and_restates_none_of_it() -> None:
    """sam2_triton_server does SAM 2's work with the SDK (transforms, prompts, spec), never with
    a copy: no function named like the SDK's, no restated contract constant, and every piece of
    the SDK it needs is referenced (so the work is not done some other way)."""
    sources = {p.name: p.read_text() for p in sorted(SERVER.glob("*.py"))}
    assert {"segment.py", "session.py", "onnx_model.py"} <= set(sources)
    for name, source in sources.items():
        assert _restated(source) == [], name
        assert "import hashlib" not in source, f"{name}: image ids are spec.session_image_id"
    used = {
        node.attr if isinstance(node, ast.Attribute) else node.name
        for source in sources.values()
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Attribute, ast.alias))
    }
    needed = {
        "load_image",
        "to_wire_image",
        "validate_prompt",
        "plan_decode",
        "select_masks",
        "postprocess",
        "session_image_id",
        "encode",
        "transform_coords",
        "generate_crop_boxes",
        "nms",
    }  # encode: pycocotools.mask's RLE
    assert needed <= used, needed - used


def test_session_options_change_the_configs() -> None:
    opts = repository.RepositoryOptions(
        image_dtype="float16", session_cache_bytes=12345, session_features_on_gpu=False
    )
    gpu = repository.session_config("gpu", opts)
    assert gpu.parameters["SESSION_CACHE_BYTES"].string_value == "12345"
    assert gpu.parameters["SESSION_FEATURES_ON_GPU"].string_value == "false"
    assert {t.name: t.data_type for t in gpu.input}[spec.ENCODER_IMAGE] == mc.TYPE_FP16
    seg = repository.segment_config("cpu", opts)
    assert seg.parameters["ENCODER_IMAGE_DTYPE"].string_value == "float16"
    with pytest.raises(ValueError, match="session_cache_bytes"):
        repository.RepositoryOptions(session_cache_bytes=0)


# --- the largest prompt: one constant for the SDK, the server models and the TRT profile ------
def _profile(text: str) -> dict[str, list[int]]:
    return {k: [int(d) for d in v.split("x")] for k, v in (p.split(":") for p in text.split(","))}


def test_decoder_profile_covers_the_largest_prompt_the_sdk_sends() -> None:
    cfg = repository.parse((ROOT / spec.DECODER_MODEL / "config.pbtxt").read_text())
    (accel,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    low = _profile(accel.parameters["trt_profile_min_shapes"])
    high = _profile(accel.parameters["trt_profile_max_shapes"])
    n, p = spec.MAX_PROMPTS_PER_REQUEST, spec.MAX_PROMPT_POINTS
    assert high[spec.POINT_COORDS] == [n, p, 2] and high[spec.POINT_LABELS] == [n, p]
    assert high[spec.MASK_INPUT][0] == n and high[spec.HAS_MASK_INPUT] == [n]
    assert low[spec.POINT_COORDS] == [1, 1, 2]
    assert p == spec.MAX_CLICKS_PER_PROMPT + 2  # a box adds two corner points
    with pytest.raises(ValueError, match="TensorRT profile would then refuse"):
        repository.RepositoryOptions(max_points=32)
    with pytest.raises(ValueError, match="exceed what the SDK sends"):
        repository.RepositoryOptions(max_prompts=n + 1)


def test_engine_cache_prefix_follows_the_key() -> None:
    base = repository.decoder_config("gpu", repository.RepositoryOptions())
    keyed = repository.decoder_config(
        "gpu", repository.RepositoryOptions(engine_cache_key="0123456789abcdef")
    )
    (a,) = base.optimization.execution_accelerators.gpu_execution_accelerator
    (b,) = keyed.optimization.execution_accelerators.gpu_execution_accelerator
    assert "trt_engine_cache_prefix" not in a.parameters  # committed configs: no export yet
    assert b.parameters["trt_engine_cache_prefix"] == f"{spec.DECODER_MODEL}_0123456789abcdef"
    with pytest.raises(ValueError, match="engine_cache_key"):
        repository.RepositoryOptions(engine_cache_key="../../etc")
