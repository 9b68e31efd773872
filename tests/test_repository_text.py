"""``sam2-triton export --detector``: the detector graphs and ``sam2_text`` in the repository.

Golden configs (one contract, ``sam2_triton.text_spec`` + ``sam2_triton_serve.repository``),
checked against the ONNX of the session's one ``--detector`` export, its manifest and files.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sam2_triton import spec, text_spec
from sam2_triton_serve import repository

ONNX_TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}
GRAPHS = repository.DETECTOR_GRAPHS


def _profile(text: str) -> dict[str, list[int]]:
    return {k: [int(d) for d in v.split("x")] for k, v in (p.split(":") for p in text.split(","))}


def test_text_configs_only_with_detector() -> None:
    image = repository.config_files()
    text = repository.config_files(detector=True)
    added = {rel.split("/")[0] for rel in set(text) - set(image)}
    assert added == set(repository.TEXT_MODELS)
    assert not any(rel.startswith(tuple(repository.TEXT_MODELS)) for rel in image)
    for name in repository.TEXT_MODELS:
        for rel in (f"{name}/config.pbtxt", f"{name}/configs/cpu.pbtxt"):
            assert repository.parse(text[rel]).name == name


def test_detector_gpu_config_golden() -> None:
    opts = repository.RepositoryOptions()
    h, w = text_spec.SHORTEST_EDGE, text_spec.LONGEST_EDGE
    for name, canvas in zip(GRAPHS, ((h, w), (w, h))):
        cfg = repository.detector_config(name, "gpu", opts)
        assert (cfg.backend, cfg.max_batch_size) == ("onnxruntime", opts.detector_max_batch_size)
        dims = {i.name: list(i.dims) for i in cfg.input}
        assert dims[text_spec.PIXEL_VALUES] == [3, *canvas]
        assert dims[text_spec.PIXEL_MASK] == list(canvas)
        assert dims[text_spec.INPUT_IDS] == [-1]
        outs = {o.name: list(o.dims) for o in cfg.output}
        assert outs == {
            text_spec.LOGITS: [text_spec.NUM_QUERIES, text_spec.MAX_TEXT_LEN],
            text_spec.PRED_BOXES: [text_spec.NUM_QUERIES, 4],
        }
        (accel,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        p = accel.parameters
        assert p["precision_mode"] == "FP16" and p["trt_layer_norm_fp32_fallback"] == "true"
        assert p["trt_engine_cache_path"] == f"/engine_cache/{name}"
        b = opts.detector_max_batch_size
        assert _profile(p["trt_profile_min_shapes"]) == {
            text_spec.PIXEL_VALUES: [1, 3, *canvas],
            text_spec.PIXEL_MASK: [1, *canvas],
            **{n: [1, 1] for n in text_spec.TEXT_INPUT_NAMES},
        }
        assert _profile(p["trt_profile_max_shapes"]) == {
            text_spec.PIXEL_VALUES: [b, 3, *canvas],
            text_spec.PIXEL_MASK: [b, *canvas],
            **{n: [b, text_spec.MAX_TEXT_LEN] for n in text_spec.TEXT_INPUT_NAMES},
        }
        assert cfg.dynamic_batching.max_queue_delay_microseconds == opts.queue_delay_us
        (warm,) = cfg.model_warmup
        assert warm.batch_size == 1 and set(warm.inputs) == set(text_spec.DETECTOR_INPUT_NAMES)
    fp32 = repository.RepositoryOptions(detector_precision="fp32")
    (accel,) = repository.detector_config(
        GRAPHS[0], "gpu", fp32
    ).optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.parameters["precision_mode"] == "FP32"


def test_detector_cpu_config_and_options() -> None:
    opts = repository.RepositoryOptions(detector_shortest_edge=320, detector_longest_edge=480)
    cfg = repository.detector_config(GRAPHS[1], "cpu", opts)
    assert (cfg.backend, cfg.max_batch_size) == ("python", opts.cpu_detector_max_batch_size)
    assert [list(i.dims) for i in cfg.input][0] == [3, 480, 320]  # portrait canvas
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    with pytest.raises(ValueError, match="detector_precision"):
        repository.RepositoryOptions(detector_precision="int8")
    with pytest.raises(ValueError, match="detector_longest_edge"):
        repository.RepositoryOptions(detector_shortest_edge=800, detector_longest_edge=600)


@pytest.mark.parametrize("flavour", repository.FLAVOURS)
def test_sam2_text_config(flavour: str) -> None:
    cfg = repository.text_config(flavour, repository.RepositoryOptions(text_max_pending=3))
    assert (cfg.backend, cfg.max_batch_size) == ("python", 0)
    inputs = {i.name: i for i in cfg.input}
    assert set(inputs) == {t.name for t in text_spec.text_inputs()}
    assert [n for n, i in inputs.items() if i.optional] == [text_spec.TEXT_OPTIONS]
    assert all(i.data_type == mc.TYPE_STRING and list(i.dims) == [1] for i in inputs.values())
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["SEGMENT_MAX_PENDING"] == "3"
    assert params["DETECTOR_LANDSCAPE_MODEL"] == GRAPHS[0]
    assert params["DETECTOR_PORTRAIT_MODEL"] == GRAPHS[1]
    assert params["ENCODER_MODEL"] == spec.ENCODER_MODEL
    (group,) = cfg.instance_group
    assert group.count == 1


def test_sam2_text_shim() -> None:
    files = repository.config_files(detector=True)
    assert "from sam2_triton_server.text import TritonPythonModel" in files["sam2_text/1/model.py"]
    for name in GRAPHS:
        assert files[f"{name}/1/model.py"] == repository.PYTHON_MODEL_SHIM


# --- the session's --detector export -------------------------------------------------------
def test_detector_export_installs_graphs_configs_tokenizer_manifest(
    text_repo: Path, detector_dir: Path
) -> None:
    manifest = json.loads((text_repo / repository.MANIFEST_FILENAME).read_text())
    text = manifest["text"]
    assert text["enabled"] and text["passed"] and text["graphs"] == list(GRAPHS)
    assert text["detector"]["shortest_edge"] == 320 and text["detector"]["longest_edge"] == 480
    for fname in text_spec.TOKENIZER_FILES:
        installed = text_repo / text_spec.TEXT_MODEL / "1" / fname
        assert installed.read_bytes() == (detector_dir / fname).read_bytes()
    report = json.loads((text_repo / text["report"]).read_text())
    assert report["passed"] and set(report["verify"]) == set(GRAPHS)
    for name in GRAPHS:
        assert name in manifest["models"] and repository.model_file(text_repo, name).is_file()
    cfg = repository.parse((text_repo / text_spec.TEXT_MODEL / "configs" / "cpu.pbtxt").read_text())
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert (params["DETECTOR_SHORTEST_EDGE"], params["DETECTOR_LONGEST_EDGE"]) == ("320", "480")


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("flavour", repository.FLAVOURS)
def test_detector_config_matches_onnx(text_repo: Path, name: str, flavour: str) -> None:
    model = onnx.load(str(repository.model_file(text_repo, name)), load_external_data=False)
    rel = f"{name}/config.pbtxt" if flavour == "gpu" else f"{name}/configs/cpu.pbtxt"
    cfg = repository.parse((text_repo / rel).read_text())
    assert cfg.max_batch_size > 0

    def signature(values) -> dict[str, tuple[int, list[int]]]:
        return {
            v.name: (
                ONNX_TYPES[v.type.tensor_type.elem_type],
                [d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim][1:],
            )
            for v in values
        }

    assert signature(model.graph.input) == {i.name: (i.data_type, list(i.dims)) for i in cfg.input}
    assert signature(model.graph.output) == {
        o.name: (o.data_type, list(o.dims)) for o in cfg.output
    }


def test_engine_cache_key_covers_the_detector_graphs(text_repo: Path) -> None:
    manifest = json.loads((text_repo / repository.MANIFEST_FILENAME).read_text())
    opts = repository.RepositoryOptions(image_dtype="float32", feature_dtype="float32")
    files = [repository.model_file(text_repo, m) for m in (spec.ENCODER_MODEL, spec.DECODER_MODEL)]
    graphs = [repository.model_file(text_repo, m) for m in GRAPHS]
    assert repository.engine_cache_key([*files, *graphs], opts) == manifest["engine_cache_key"]
    assert repository.engine_cache_key(files, opts) != manifest["engine_cache_key"]
