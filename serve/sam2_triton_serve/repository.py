"""Triton model configurations for the SAM 2.1 encoder and decoder, built as Triton's own protobuf.

Two flavours of one repository (``model_repository/``):

- ``gpu`` (``<model>/config.pbtxt``, used by docker compose): ONNX Runtime backend on the GPU
  with the TensorRT execution accelerator in FP16, engine cache on a writable volume.
- ``cpu`` (``<model>/configs/cpu.pbtxt``, chosen with ``--model-config-name=cpu``): the same
  ``model.onnx`` run by onnxruntime inside a python-backend model, for machines without a GPU and
  for the tritonserver that ships in the ``nvidia-pytriton`` wheel, which has no ONNX Runtime
  backend.

Python-backend models (both flavours) call the others through BLS: ``sam2_session`` (features
held on the server, clicks carry an image id), ``sam2_segment`` (one-shot segmentation over
plain REST) and ``sam2_everything`` (SAM 2's automatic mask generator in one request; its
per-mask work runs in the ``sam2_amg_masks`` ONNX graph, FP32 on either flavour).

Every python-backend model's ``1/model.py`` is a shim (``model_shim``) that imports its
``TritonPythonModel`` from the ``sam2-triton-server`` package (``sam2_triton_server``), which
does SAM 2's pre- and post-processing with the SDK's own ``sam2_triton.transforms`` and
``sam2_triton.prompts``; that package must be installed in the python backend's environment.

Video tracking (``sam2-triton export --video``, docs/video.md) adds five per-frame ONNX graphs
(``video_spec.VIDEO_GRAPHS``, contract: ``video_graph_inputs``/``video_graph_outputs``) and the
``sam2_video`` python-backend session model; ``config_files(opts, video=True)`` writes them. The
committed repository is the image-only default (no video configs).

The configs are generated from ``RepositoryOptions`` so that they always match the exported ONNX
files (dtypes depend on export options); the committed files are the output for the defaults.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sam2_triton import spec, text_spec, video_spec

FLAVOURS = ("gpu", "cpu")
CPU_CONFIG_NAME = "cpu"
MODEL_FILENAME = "model.onnx"
MANIFEST_FILENAME = "sam2_manifest.json"

# Keys the ONNX Runtime backend accepts for the "tensorrt" gpu_execution_accelerator; any other
# key makes Triton refuse to load the model (onnxruntime_backend src/onnxruntime.cc).
ORT_TRT_ACCELERATOR_KEYS = frozenset(
    {
        "precision_mode",
        "max_workspace_size_bytes",
        "trt_max_partition_iterations",
        "trt_min_subgraph_size",
        "int8_calibration_table_name",
        "int8_use_native_calibration_table",
        "trt_dla_enable",
        "trt_dla_core",
        "trt_engine_cache_enable",
        "trt_engine_cache_path",
        "trt_engine_cache_prefix",
        "trt_dump_subgraphs",
        "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable",
        "trt_layer_norm_fp32_fallback",
        "trt_timing_cache_enable",
        "trt_timing_cache_path",
        "trt_force_timing_cache",
        "trt_detailed_build_log",
        "trt_build_heuristics_enable",
        "trt_sparsity_enable",
        "trt_builder_optimization_level",
        "trt_auxiliary_streams",
        "trt_tactic_sources",
        "trt_extra_plugin_lib_paths",
        "trt_profile_min_shapes",
        "trt_profile_max_shapes",
        "trt_profile_opt_shapes",
        "trt_cuda_graph_enable",
    }
)

_DTYPES = {
    "bool": mc.TYPE_BOOL,
    "float32": mc.TYPE_FP32,
    "float16": mc.TYPE_FP16,
    "uint8": mc.TYPE_UINT8,
    "int32": mc.TYPE_INT32,
    "int64": mc.TYPE_INT64,
    "object": mc.TYPE_STRING,
}


@dataclass(frozen=True)
class RepositoryOptions:
    """What the configs depend on.

    image_dtype: encoder input dtype (float32 exact; float16/uint8 compact, see docs/export.md).
    feature_dtype: dtype of the features between encoder and decoder (float32 or float16).
    max_batch_size: largest encoder batch the dynamic batcher forms (GPU flavour).
    cpu_max_batch_size: the same for the CPU flavour (2 cores: larger batches only add latency).
    queue_delay_us: how long the encoder's batcher waits for a fuller batch. An encoder pass takes
        ~10-40 ms on a GPU (seconds on CPU), so 2 ms costs <=20 % extra latency on an idle server
        and lets concurrent images share one pass under load.
    max_queue_size: encoder requests allowed to wait; more are rejected at once (HTTP 503/
        gRPC UNAVAILABLE "Exceeds maximum queue size") instead of piling up.
    queue_timeout_us: a queued encoder request older than this is rejected.
    max_prompts: largest N (prompts per decoder call) in the TensorRT profile; the client splits
        bigger calls. max_points: largest P (points per prompt, a box counts as 2). Both default
        to the one contract (``spec.MAX_PROMPTS_PER_REQUEST``, ``spec.MAX_PROMPT_POINTS``) that
        the SDK and the server-side models enforce: a smaller profile would fail on the GPU only.
    engine_cache_key: identifies the exported ONNX files (``engine_cache_key()``); the TensorRT
        engine files are named by it (``trt_engine_cache_prefix``), so a re-export with other
        weights or options never loads the engines built for the previous export (ONNX
        Runtime's own cache id hashes names and library versions, not weights). Empty: no key
        (the committed configs; ``sam2-triton export`` always writes one).
    engine_cache_dir: where TensorRT engines are cached (a writable volume in docker compose).
    workspace_bytes: TensorRT builder workspace.
    session_cache_bytes: byte budget of ``sam2_session``'s feature store (16.8 MB per image in
        FP32, 8.4 MB in FP16: 1 GiB holds 63 / 127 images). On the GPU flavour it is GPU memory
        (with ``session_features_on_gpu``), on the CPU flavour the python backend's shared
        memory (``/dev/shm``).
    session_features_on_gpu: GPU flavour: keep the held features in GPU memory (BLS outputs
        with ``preferred_memory`` GPU) instead of host shared memory.
    session_threads: parallel encoder calls of one multi-image upload to ``sam2_session``.
    session_max_pending: requests ``sam2_session``/``sam2_segment`` run at once, one thread each
        (so a long encode does not hold up other users' clicks); more are refused with
        UNAVAILABLE "too many requests".
    everything_max_pending: the same for ``sam2_everything`` (each request holds a batch of
        full-size masks in memory while it runs).
    video_frame_budget_bytes: ``sam2_video``: bytes of uploaded frames plus their features held
        across all videos (4 GiB; a frame is 3 MiB of uint8 pixels, its features ~21 MB FP32).
    max_videos: ``sam2_video``: videos open at once.
    video_idle_ttl_s: ``sam2_video``: a video untouched for this long is closed.
    video_request_batching: ``sam2_video``: Triton's dynamic batcher hands it every request
        that queued while it was busy, and it tracks concurrent videos' frames together (off:
        one request per execute). video_max_requests: the most requests of one execute.
        video_queue_delay_us: how long the batcher waits for more requests (clients that send
        their next step as soon as they get an answer arrive a few ms after the batch left;
        without a delay two such clients alternate and never share an execute).
    video_attention_batch_bytes: ``sam2_video``: bytes of attention matrices (4096 queries x
        keys, float32; ~470 MB per object at 7 memories) one memory attention call may hold.
        The CPU is compute-bound there (a batch only adds memory): ``cpu_video_attention_...``.
    detector_shortest_edge / detector_longest_edge: the Grounding DINO processor's resize
        (``sam2-triton export --detector`` reads them from the model directory); the two
        detector graphs' static canvases follow (``text_spec.canvases``).
    detector_num_queries: the detector's queries (its outputs' second dimension).
    detector_max_batch_size: largest detector batch the dynamic batcher forms on the GPU
        (only requests of equal text length share a batch: padding text would change results);
        ``cpu_detector_max_batch_size`` on the CPU.
    detector_precision: ``fp16`` (TensorRT FP16, LayerNorm in FP32) or ``fp32`` (TensorRT FP32)
        on the GPU flavour; see docs/text.md for what was measured.
    text_max_pending: requests ``sam2_text`` runs at once (each holds an image's features).
    """

    image_dtype: str = "float32"
    feature_dtype: str = "float32"
    max_batch_size: int = 8
    cpu_max_batch_size: int = 4
    queue_delay_us: int = 2000
    max_queue_size: int = 32
    queue_timeout_us: int = 60_000_000
    max_prompts: int = spec.MAX_PROMPTS_PER_REQUEST
    max_points: int = spec.MAX_PROMPT_POINTS
    engine_cache_dir: str = "/engine_cache"
    engine_cache_key: str = ""
    workspace_bytes: int = 4 << 30
    session_cache_bytes: int = 1 << 30
    session_features_on_gpu: bool = True
    session_threads: int = 8
    session_max_pending: int = 64
    everything_max_pending: int = 4
    video_frame_budget_bytes: int = 4 << 30
    max_videos: int = 8
    video_idle_ttl_s: int = 3600
    video_request_batching: bool = True
    video_max_requests: int = 8
    video_queue_delay_us: int = 5000
    video_attention_batch_bytes: int = 8 << 30
    cpu_video_attention_batch_bytes: int = 1 << 30
    detector_shortest_edge: int = text_spec.SHORTEST_EDGE
    detector_longest_edge: int = text_spec.LONGEST_EDGE
    detector_num_queries: int = text_spec.NUM_QUERIES
    detector_max_batch_size: int = 4
    cpu_detector_max_batch_size: int = 1
    detector_precision: str = "fp16"
    text_max_pending: int = 8

    def __post_init__(self) -> None:
        if self.image_dtype not in ("float32", "float16", "uint8"):
            raise ValueError(
                f"image_dtype must be float32, float16 or uint8, got {self.image_dtype!r}"
            )
        if self.feature_dtype not in ("float32", "float16"):
            raise ValueError(
                f"feature_dtype must be float32 or float16, got {self.feature_dtype!r}"
            )
        if (
            self.max_prompts > spec.MAX_PROMPTS_PER_REQUEST
            or self.max_points > spec.MAX_PROMPT_POINTS
        ):
            raise ValueError(
                f"max_prompts/max_points exceed what the SDK sends ({spec.MAX_PROMPTS_PER_REQUEST}"
                f"/{spec.MAX_PROMPT_POINTS}); raise the limits in sam2_triton.spec instead"
            )
        if (
            self.max_prompts < spec.MAX_PROMPTS_PER_REQUEST
            or self.max_points < spec.MAX_PROMPT_POINTS
        ):
            raise ValueError(
                f"max_prompts/max_points below spec.MAX_PROMPTS_PER_REQUEST/MAX_PROMPT_POINTS "
                f"({spec.MAX_PROMPTS_PER_REQUEST}/{spec.MAX_PROMPT_POINTS}): the SDK and the "
                "server models accept prompts that the TensorRT profile would then refuse"
            )
        if self.engine_cache_key and not re.fullmatch(r"[0-9a-f]{8,64}", self.engine_cache_key):
            raise ValueError(
                f"engine_cache_key must be 8 to 64 lowercase hex characters, got "
                f"{self.engine_cache_key!r}"
            )
        for name in (
            "session_cache_bytes",
            "session_threads",
            "session_max_pending",
            "everything_max_pending",
            "video_frame_budget_bytes",
            "max_videos",
            "video_idle_ttl_s",
            "video_max_requests",
            "video_attention_batch_bytes",
            "cpu_video_attention_batch_bytes",
            "detector_shortest_edge",
            "detector_num_queries",
            "detector_max_batch_size",
            "cpu_detector_max_batch_size",
            "text_max_pending",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.detector_longest_edge < self.detector_shortest_edge:
            raise ValueError(
                f"detector_longest_edge ({self.detector_longest_edge}) must be >= "
                f"detector_shortest_edge ({self.detector_shortest_edge})"
            )
        if self.detector_precision not in ("fp16", "fp32"):
            raise ValueError(
                f"detector_precision must be fp16 or fp32, got {self.detector_precision!r}"
            )
        if int(self.video_queue_delay_us) < 0:
            raise ValueError(
                f"video_queue_delay_us must be >= 0, got {self.video_queue_delay_us!r}"
            )


def _tensor(t: spec.TensorSpec, batched: bool, io: type) -> object:
    dims = t.shape[1:] if batched else t.shape
    return io(name=t.name, data_type=_DTYPES[t.dtype], dims=list(dims))


def _io(
    model_config: mc.ModelConfig,
    inputs: Iterable[spec.TensorSpec],
    outputs: Iterable[spec.TensorSpec],
    batched: bool,
) -> None:
    model_config.input.extend(_tensor(t, batched, mc.ModelInput) for t in inputs)
    model_config.output.extend(_tensor(t, batched, mc.ModelOutput) for t in outputs)


def _optional_inputs(
    cfg: mc.ModelConfig,
    inputs: Iterable[spec.TensorSpec],
    required: Iterable[str] = (),
    ragged: bool = False,
) -> None:
    """Full-shape inputs of a python-backend model, each optional unless named in ``required``
    (the request's ``op`` or JSON says which it uses); ``ragged``: ``allow_ragged_batch``."""
    required = set(required)
    for t in inputs:
        cfg.input.append(
            mc.ModelInput(
                name=t.name,
                data_type=_DTYPES[t.dtype],
                dims=list(t.shape),
                optional=t.name not in required,
                allow_ragged_batch=ragged,
            )
        )


def _trt(
    model_config: mc.ModelConfig,
    model: str,
    opts: RepositoryOptions,
    profile: dict[str, str] | None = None,
    precision: str = "FP16",
) -> None:
    params = {
        "precision_mode": precision,
        "max_workspace_size_bytes": str(opts.workspace_bytes),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": f"{opts.engine_cache_dir}/{model}",
        **(
            {"trt_engine_cache_prefix": f"{model}_{opts.engine_cache_key}"}
            if opts.engine_cache_key
            else {}
        ),
        "trt_timing_cache_enable": "true",
        "trt_timing_cache_path": f"{opts.engine_cache_dir}/{model}",
        # LayerNorm in FP32: SAM 2's transformer LayerNorms overflow in FP16.
        "trt_layer_norm_fp32_fallback": "true",
        **(profile or {}),
    }
    accel = model_config.optimization.execution_accelerators.gpu_execution_accelerator.add()
    accel.name = "tensorrt"
    for key, value in params.items():
        accel.parameters[key] = value


def _shape_str(shapes: dict[str, tuple[int, ...]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def _onnx_model(
    name: str,
    flavour: str,
    max_batch_size: int,
    inputs: Iterable[spec.TensorSpec],
    outputs: Iterable[spec.TensorSpec],
) -> mc.ModelConfig:
    """What every exported ONNX model's config shares: ONNX Runtime on the GPU flavour, the
    python-backend onnxruntime runner (``onnx_model``) on the CPU flavour, one instance."""
    _check_flavour(flavour)
    gpu = flavour == "gpu"
    cfg = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    cfg.backend = "onnxruntime" if gpu else "python"
    if gpu:
        cfg.default_model_filename = MODEL_FILENAME
    else:
        _python_params(cfg)
    _io(cfg, inputs, outputs, max_batch_size > 0)
    cfg.instance_group.add(
        kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU, count=1
    )
    return cfg


def encoder_config(flavour: str, opts: RepositoryOptions = RepositoryOptions()) -> mc.ModelConfig:
    """The ``sam2_encoder`` config: batched (max_batch_size > 0), dynamic batching, cache."""
    gpu = flavour == "gpu"
    cfg = _onnx_model(
        spec.ENCODER_MODEL,
        flavour,
        opts.max_batch_size if gpu else opts.cpu_max_batch_size,
        spec.encoder_inputs(opts.image_dtype),
        spec.encoder_outputs(opts.feature_dtype),
    )
    db = cfg.dynamic_batching
    db.max_queue_delay_microseconds = opts.queue_delay_us
    db.default_queue_policy.max_queue_size = opts.max_queue_size
    db.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT
    db.default_queue_policy.default_timeout_microseconds = opts.queue_timeout_us
    db.default_queue_policy.allow_timeout_override = True
    cfg.response_cache.enable = True
    if gpu:
        image = {spec.ENCODER_IMAGE: (3, spec.IMAGE_SIZE, spec.IMAGE_SIZE)}
        # One TensorRT profile for every batch size the batcher can form: no engine rebuilds.
        _trt(
            cfg,
            spec.ENCODER_MODEL,
            opts,
            {
                "trt_profile_min_shapes": _shape_str({k: (1, *v) for k, v in image.items()}),
                "trt_profile_opt_shapes": _shape_str({k: (1, *v) for k, v in image.items()}),
                "trt_profile_max_shapes": _shape_str(
                    {k: (opts.max_batch_size, *v) for k, v in image.items()}
                ),
            },
        )
        warm = cfg.model_warmup.add(name="image_batch_1", batch_size=1)
        warm.inputs[spec.ENCODER_IMAGE].data_type = _DTYPES[opts.image_dtype]
        warm.inputs[spec.ENCODER_IMAGE].dims.extend([3, spec.IMAGE_SIZE, spec.IMAGE_SIZE])
        warm.inputs[spec.ENCODER_IMAGE].random_data = True
    return cfg


def decoder_config(flavour: str, opts: RepositoryOptions = RepositoryOptions()) -> mc.ModelConfig:
    """The ``sam2_decoder`` config: max_batch_size 0, one image and N prompts per request.

    Why not Triton's dynamic batcher: a decoder request carries one image's features (16.8 MB in
    FP32) and N prompts for that image. Batching requests of *different* images would stack their
    features (N_images x 16.8 MB per execution) and need a per-prompt image index; batching
    prompts of the *same* image is what N already does, without copying the features again.
    The client therefore sends all prompts of one image (same point count) in one request.
    """
    gpu = flavour == "gpu"
    cfg = _onnx_model(
        spec.DECODER_MODEL,
        flavour,
        0,
        spec.decoder_inputs(opts.feature_dtype),
        spec.decoder_outputs(),
    )
    if gpu:
        feats = {n: (1, *spec.FEATURE_SHAPES[n]) for n in spec.FEATURE_NAMES}
        low = spec.LOW_RES_SIZE

        def shapes(n: int, p: int) -> dict[str, tuple[int, ...]]:
            return {
                **feats,
                spec.POINT_COORDS: (n, p, 2),
                spec.POINT_LABELS: (n, p),
                spec.MASK_INPUT: (n, 1, low, low),
                spec.HAS_MASK_INPUT: (n,),
            }

        _trt(
            cfg,
            spec.DECODER_MODEL,
            opts,
            {
                "trt_profile_min_shapes": _shape_str(shapes(1, 1)),
                "trt_profile_opt_shapes": _shape_str(shapes(1, 2)),
                "trt_profile_max_shapes": _shape_str(shapes(opts.max_prompts, opts.max_points)),
            },
        )
        warm = cfg.model_warmup.add(name="one_click", batch_size=1)
        for t in spec.decoder_inputs(opts.feature_dtype):
            dims = [1 if d == -1 else d for d in t.shape]
            if t.name == spec.POINT_COORDS:
                dims = [1, 1, 2]
            warm.inputs[t.name].data_type = _DTYPES[t.dtype]
            warm.inputs[t.name].dims.extend(dims)
            if t.name in spec.FEATURE_NAMES or t.name == spec.POINT_COORDS:
                warm.inputs[t.name].random_data = True
            else:
                warm.inputs[t.name].zero_data = True
    return cfg


def _bls_model(
    cfg: mc.ModelConfig, flavour: str, opts: RepositoryOptions, params: dict[str, str]
) -> None:
    """What the two BLS models share: python backend, exactly one instance, parameters."""
    _check_flavour(flavour)
    cfg.backend = "python"
    # Exactly one instance per server, however many GPUs it has: an instance_group count is
    # per GPU, so KIND_GPU without `gpus` would start one instance, with its own session store,
    # on every GPU. GPU flavour: one instance on GPU 0 (where held features live); the encoder
    # and decoder it calls run on every GPU, Triton copying the features across when needed.
    if flavour == "gpu":
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1, gpus=[0])
    else:
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    for key, value in {
        "ENCODER_MODEL": spec.ENCODER_MODEL,
        "DECODER_MODEL": spec.DECODER_MODEL,
        **params,
    }.items():
        cfg.parameters[key].string_value = value


def session_config(flavour: str, opts: RepositoryOptions = RepositoryOptions()) -> mc.ModelConfig:
    """The ``sam2_session`` config: python backend, BLS to encoder and decoder, one instance.

    Every input is optional (``op`` says which are used, see ``spec``); max_batch_size 0 (one
    request carries its own batch). One instance only: the feature store lives in its process.
    """
    _check_flavour(flavour)
    cfg = mc.ModelConfig(name=spec.SESSION_MODEL, max_batch_size=0)
    _optional_inputs(cfg, spec.session_inputs(opts.image_dtype))
    cfg.output.extend(
        _tensor(t, False, mc.ModelOutput) for t in spec.session_outputs(opts.feature_dtype)
    )
    on_gpu = flavour == "gpu" and opts.session_features_on_gpu
    _bls_model(
        cfg,
        flavour,
        opts,
        {
            "SESSION_CACHE_BYTES": str(opts.session_cache_bytes),
            "SESSION_FEATURES_ON_GPU": "true" if on_gpu else "false",
            "SESSION_THREADS": str(opts.session_threads),
            "SESSION_MAX_PENDING": str(opts.session_max_pending),
            "SESSION_MAX_IMAGES_PER_REQUEST": str(
                max(opts.max_batch_size, opts.cpu_max_batch_size)
            ),
        },
    )
    return cfg


def segment_config(flavour: str, opts: RepositoryOptions = RepositoryOptions()) -> mc.ModelConfig:
    """The ``sam2_segment`` config: python backend, encoded image + JSON prompts in, JSON out.

    Its python environment needs ``sam2-triton-server`` (with the SDK, Pillow and pycocotools),
    which the NGC Triton container does not ship: see SETUP.md.
    """
    _check_flavour(flavour)
    cfg = mc.ModelConfig(name=spec.SEGMENT_MODEL, max_batch_size=0)
    _io(cfg, spec.segment_inputs(), spec.segment_outputs(), False)
    _bls_model(
        cfg,
        flavour,
        opts,
        {
            "ENCODER_IMAGE_DTYPE": opts.image_dtype,
            "SEGMENT_MAX_PENDING": str(opts.session_max_pending),
        },
    )
    return cfg


def amg_masks_config(flavour: str, opts: RepositoryOptions = RepositoryOptions()) -> mc.ModelConfig:
    """The ``sam2_amg_masks`` config: segment-everything's per-mask work (an ONNX graph).

    GPU flavour: ONNX Runtime on the GPU in FP32 (CUDA execution provider, no TensorRT: its
    thresholds must see SAM 2's exact FP32 logits). max_batch_size 0: one batch of one crop per
    request, its shapes vary with the crop.
    """
    return _onnx_model(
        spec.AMG_MASKS_MODEL, flavour, 0, spec.amg_masks_inputs(), spec.amg_masks_outputs()
    )


def everything_config(
    flavour: str, opts: RepositoryOptions = RepositoryOptions()
) -> mc.ModelConfig:
    """The ``sam2_everything`` config: python backend, BLS to the encoder, the decoder,
    ``sam2_amg_masks`` and (for ``image_id``) ``sam2_session``; both inputs optional."""
    _check_flavour(flavour)
    cfg = mc.ModelConfig(name=spec.EVERYTHING_MODEL, max_batch_size=0)
    _optional_inputs(cfg, spec.everything_inputs())
    cfg.output.extend(_tensor(t, False, mc.ModelOutput) for t in spec.everything_outputs())
    _bls_model(
        cfg,
        flavour,
        opts,
        {
            "AMG_MASKS_MODEL": spec.AMG_MASKS_MODEL,
            "SESSION_MODEL": spec.SESSION_MODEL,
            "ENCODER_IMAGE_DTYPE": opts.image_dtype,
            # each request holds a batch's logits and masks in memory: few at once
            "SEGMENT_MAX_PENDING": str(opts.everything_max_pending),
        },
    )
    return cfg


# --- video tracking (sam2-triton export --video) ------------------------------------------------
# The one contract of the five exported graphs: names from video_spec, full shapes (-1 =
# dynamic), max_batch_size 0 (B = objects of one call). video_export exports with these names,
# the configs below declare them, tests/test_repository_video.py checks both against the ONNX.
_FEATS = {n: spec.FEATURE_SHAPES[n] for n in spec.FEATURE_NAMES}
_IMAGE_EMBED_SHAPE = _FEATS[spec.IMAGE_EMBED]  # (256, 64, 64)
_LOW = (1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE)
_MEM = (video_spec.MEM_DIM, video_spec.FEAT_SIZE, video_spec.FEAT_SIZE)
VIDEO_IMAGE_DTYPE = "uint8"  # frames travel as uint8 RGB (video_spec.IMAGE); /255 in the graph


def _f32(name: str, *dims: int) -> spec.TensorSpec:
    return spec.TensorSpec(name, "float32", tuple(dims))


_VIDEO_GRAPH_IO: dict[str, tuple[tuple[spec.TensorSpec, ...], tuple[spec.TensorSpec, ...]]] = {
    video_spec.VIDEO_IMAGE_ENCODER_MODEL: (
        (
            spec.TensorSpec(
                video_spec.IMAGE, VIDEO_IMAGE_DTYPE, (-1, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE)
            ),
        ),
        (
            _f32(video_spec.IMAGE_EMBED, -1, *_IMAGE_EMBED_SHAPE),
            _f32(video_spec.HIGH_RES_FEATS_0, -1, *_FEATS[video_spec.HIGH_RES_FEATS_0]),
            _f32(video_spec.HIGH_RES_FEATS_1, -1, *_FEATS[video_spec.HIGH_RES_FEATS_1]),
            _f32(video_spec.VISION_FEAT, -1, *_IMAGE_EMBED_SHAPE),
            spec.TensorSpec(spec.FINGERPRINT, "int32", (-1, spec.FINGERPRINT_LEN)),
        ),
    ),
    video_spec.MEMORY_ATTENTION_MODEL: (
        (
            _f32(video_spec.VISION_FEAT, -1, *_IMAGE_EMBED_SHAPE),
            _f32(video_spec.MASKMEM_FEATURES, -1, -1, *_MEM),
            spec.TensorSpec(video_spec.MASKMEM_TPOS, "int64", (-1,)),
            _f32(video_spec.OBJ_PTRS, -1, -1, video_spec.HIDDEN_DIM),
            _f32(video_spec.OBJ_PTR_TPOS, -1),
        ),
        (_f32(video_spec.PIX_FEAT_WITH_MEM, -1, *_IMAGE_EMBED_SHAPE),),
    ),
    video_spec.VIDEO_MASK_DECODER_MODEL: (
        (
            _f32(video_spec.PIX_FEAT, -1, *_IMAGE_EMBED_SHAPE),
            _f32(video_spec.HIGH_RES_FEATS_0, -1, *_FEATS[video_spec.HIGH_RES_FEATS_0]),
            _f32(video_spec.HIGH_RES_FEATS_1, -1, *_FEATS[video_spec.HIGH_RES_FEATS_1]),
            _f32(video_spec.POINT_COORDS, -1, -1, 2),
            spec.TensorSpec(video_spec.POINT_LABELS, "int32", (-1, -1)),
            _f32(video_spec.MASK_INPUT, -1, *_LOW),
            _f32(video_spec.HAS_MASK_INPUT, -1),
            _f32(video_spec.MULTIMASK_OUTPUT, -1),
        ),
        (
            _f32(video_spec.LOW_RES_MASKS, -1, *_LOW),
            _f32(video_spec.OBJ_PTR, -1, video_spec.HIDDEN_DIM),
            _f32(video_spec.OBJECT_SCORE_LOGITS, -1, 1),
        ),
    ),
    video_spec.MEMORY_ENCODER_MODEL: (
        (
            _f32(video_spec.VISION_FEAT, -1, *_IMAGE_EMBED_SHAPE),
            _f32(video_spec.PRED_MASKS, -1, *_LOW),
            _f32(video_spec.OBJECT_SCORE_LOGITS, -1, 1),
            _f32(video_spec.BINARIZE_MASK, -1),
        ),
        (_f32(video_spec.MASKMEM_FEATURES, -1, *_MEM),),
    ),
    video_spec.MASK_PROMPT_MODEL: (
        (_f32(video_spec.MASK_1024, -1, 1, spec.IMAGE_SIZE, spec.IMAGE_SIZE),),
        (
            _f32(video_spec.MASK_DOWNSAMPLED, -1, *_LOW),
            _f32(video_spec.NO_OBJ_PTR, video_spec.HIDDEN_DIM),
        ),
    ),
}
assert tuple(_VIDEO_GRAPH_IO) == video_spec.VIDEO_GRAPHS


def video_graph_inputs(model: str) -> tuple[spec.TensorSpec, ...]:
    """Inputs of one exported video graph (``video_spec.VIDEO_GRAPHS``), in ONNX order."""
    return _VIDEO_GRAPH_IO[model][0]


def video_graph_outputs(model: str) -> tuple[spec.TensorSpec, ...]:
    """Outputs of one exported video graph, in ONNX order."""
    return _VIDEO_GRAPH_IO[model][1]


# Graphs run by TensorRT FP16 on the GPU flavour. The other two run in FP32 on ONNX Runtime's
# CUDA execution provider:
# - sam2_memory_attention: P = 0 object pointers (a frame whose conditioning frames all lie
#   ahead of it: only_obj_ptrs_in_the_past_for_eval) is a zero-length dim. TensorRT 7 refused a
#   profile min of 0 (NVIDIA/TensorRT#337); newer TensorRT supports empty tensors, but ONNX
#   Runtime's TensorRT EP with a P = 0 profile is untested (no GPU here), so no engine is
#   relied on for it; the CUDA EP handles empty tensors, and FP32 keeps the long attention
#   (4096 queries x up to 4096*M + 4P keys) as exact as the verified graph. docs/video.md.
# - sam2_video_mask_prompt: one 4x4 stride-4 conv per add_new_mask call plus the constant
#   no_obj_ptr (which must stay bit-exact): nothing for TensorRT to gain.
VIDEO_TRT_GRAPHS = (
    video_spec.VIDEO_IMAGE_ENCODER_MODEL,
    video_spec.VIDEO_MASK_DECODER_MODEL,
    video_spec.MEMORY_ENCODER_MODEL,
)
# Largest point count N of one video decoder call, the limit the sam2_video server enforces:
# one prompt of spec.MAX_PROMPT_POINTS (box corners + clicks) plus one.
VIDEO_MAX_POINTS = spec.MAX_PROMPT_POINTS + 1
# what --video adds
VIDEO_MODELS = (*video_spec.VIDEO_GRAPHS, video_spec.VIDEO_MODEL, video_spec.VIDEO_STREAM_MODEL)


def video_shape_ranges(model: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every dynamic input of a video graph -> (smallest, largest) shape the server can send:
    B 1..MAX_OBJECTS_PER_CALL, M 1..MAX_MEMORIES, P 0..MAX_OBJ_PTRS, N 1..VIDEO_MAX_POINTS."""
    b = video_spec.MAX_OBJECTS_PER_CALL
    dyn = {
        video_spec.MASKMEM_FEATURES: ((1, 1), (b, video_spec.MAX_MEMORIES)),
        video_spec.MASKMEM_TPOS: ((1,), (video_spec.MAX_MEMORIES,)),
        video_spec.OBJ_PTRS: ((1, 0), (b, video_spec.MAX_OBJ_PTRS)),
        video_spec.OBJ_PTR_TPOS: ((0,), (video_spec.MAX_OBJ_PTRS,)),
        video_spec.POINT_COORDS: ((1, 1), (b, VIDEO_MAX_POINTS)),
        video_spec.POINT_LABELS: ((1, 1), (b, VIDEO_MAX_POINTS)),
    }
    out = {}
    for t in video_graph_inputs(model):
        if -1 not in t.shape:
            continue
        low, high = dyn.get(t.name, ((1,), (b,)))  # otherwise only B is dynamic
        n = len(low)
        out[t.name] = ((*low, *t.shape[n:]), (*high, *t.shape[n:]))
    return out


def video_graph_config(
    model: str, flavour: str, opts: RepositoryOptions = RepositoryOptions()
) -> mc.ModelConfig:
    """Config of one exported video graph: max_batch_size 0 (B = objects of one call).

    CPU flavour: the python-backend onnxruntime runner, like every ONNX model. GPU flavour:
    TensorRT FP16 (``VIDEO_TRT_GRAPHS``) with one profile covering ``video_shape_ranges`` and a
    warmup at the smallest shapes (the engine is built at load, not on the first frame), or
    ONNX Runtime CUDA FP32 (memory attention, mask prompt: see ``VIDEO_TRT_GRAPHS``).
    """
    cfg = _onnx_model(model, flavour, 0, video_graph_inputs(model), video_graph_outputs(model))
    if flavour == "gpu" and model in VIDEO_TRT_GRAPHS:
        ranges = video_shape_ranges(model)
        _trt(
            cfg,
            model,
            opts,
            {
                "trt_profile_min_shapes": _shape_str({k: lo for k, (lo, _) in ranges.items()}),
                "trt_profile_opt_shapes": _shape_str({k: lo for k, (lo, _) in ranges.items()}),
                "trt_profile_max_shapes": _shape_str({k: hi for k, (_, hi) in ranges.items()}),
            },
        )
        warm = cfg.model_warmup.add(name="one_object", batch_size=1)
        for t in video_graph_inputs(model):
            w = warm.inputs[t.name]
            w.data_type = _DTYPES[t.dtype]
            w.dims.extend(ranges[t.name][0] if t.name in ranges else t.shape)
            if t.dtype == "int32":  # point labels: 0 (a negative click) is valid
                w.zero_data = True
            else:
                w.random_data = True
    return cfg


def video_config(flavour: str, opts: RepositoryOptions = RepositoryOptions()) -> mc.ModelConfig:
    """The ``sam2_video`` config: python backend, BLS to the video graphs, every input optional.

    One instance on the CPU (KIND_CPU) on both flavours: the videos (frames, features, memories)
    live in its process, so a second instance would not know the first one's video ids; the
    graphs it calls run on the GPU. Not decoupled: one response per request (``propagate``
    returns ``steps`` frames, then ``propagate_next`` continues). Triton's batch dimension with
    every input ragged: the dynamic batcher (``video_request_batching``) hands the instance the
    requests that queued meanwhile (or arrive within ``video_queue_delay_us``), whatever their
    shapes, and concurrent videos are tracked together.
    """
    _check_flavour(flavour)
    cfg = mc.ModelConfig(
        name=video_spec.VIDEO_MODEL, max_batch_size=opts.video_max_requests, backend="python"
    )
    _optional_inputs(cfg, video_spec.video_inputs(), ragged=True)
    cfg.output.extend(_tensor(t, False, mc.ModelOutput) for t in video_spec.video_outputs())
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    if opts.video_request_batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = opts.video_queue_delay_us
    attention = (
        opts.video_attention_batch_bytes
        if flavour == "gpu"
        else opts.cpu_video_attention_batch_bytes
    )
    for key, value in {
        "video_frame_budget_bytes": str(opts.video_frame_budget_bytes),
        "max_videos": str(opts.max_videos),
        "video_idle_ttl_s": str(opts.video_idle_ttl_s),
        "attention_batch_bytes": str(attention),
    }.items():
        cfg.parameters[key].string_value = value
    return cfg


def video_stream_config(
    flavour: str, opts: RepositoryOptions = RepositoryOptions()
) -> mc.ModelConfig:
    """The ``sam2_video_stream`` config: decoupled python backend (gRPC streaming), one response
    per propagated frame; it holds no state (BLS to ``sam2_video``), so it may run several
    instances: one stream per instance at a time."""
    _check_flavour(flavour)
    cfg = mc.ModelConfig(name=video_spec.VIDEO_STREAM_MODEL, max_batch_size=0, backend="python")
    _optional_inputs(
        cfg, video_spec.video_stream_inputs(), required=(video_spec.VIDEO_OP, video_spec.VIDEO_ID)
    )
    cfg.output.extend(_tensor(t, False, mc.ModelOutput) for t in video_spec.video_stream_outputs())
    cfg.model_transaction_policy.decoupled = True
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=2)
    return cfg


# --- text prompts (sam2-triton export --detector) ------------------------------------------------
DETECTOR_GRAPHS = tuple(text_spec.DETECTOR_MODELS.values())
# what --detector adds
TEXT_MODELS = (*DETECTOR_GRAPHS, text_spec.TEXT_MODEL)


def detector_canvas(model: str, opts: RepositoryOptions = RepositoryOptions()) -> tuple[int, int]:
    """The static (H, W) of a detector graph."""
    orientation = {v: k for k, v in text_spec.DETECTOR_MODELS.items()}[model]
    return text_spec.canvases(opts.detector_shortest_edge, opts.detector_longest_edge)[orientation]


def detector_config(
    model: str, flavour: str, opts: RepositoryOptions = RepositoryOptions()
) -> mc.ModelConfig:
    """Config of one Grounding DINO graph (one per canvas): batched, dynamic batching.

    GPU flavour: TensorRT (``detector_precision``) with one profile over batch 1..max and text
    length 1..256, and a warmup at batch 1 (the engine is built at load). Requests of different
    text lengths never share a batch (their shapes differ), so no prompt is padded.
    """
    gpu = flavour == "gpu"
    canvas = detector_canvas(model, opts)
    batch = opts.detector_max_batch_size if gpu else opts.cpu_detector_max_batch_size
    cfg = _onnx_model(
        model,
        flavour,
        batch,
        text_spec.detector_inputs(canvas),
        text_spec.detector_outputs(opts.detector_num_queries),
    )
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.queue_delay_us
    if gpu:
        h, w = canvas
        lo = {
            text_spec.PIXEL_VALUES: (1, 3, h, w),
            text_spec.PIXEL_MASK: (1, h, w),
            **{n: (1, 1) for n in text_spec.TEXT_INPUT_NAMES},
        }
        hi = {
            text_spec.PIXEL_VALUES: (batch, 3, h, w),
            text_spec.PIXEL_MASK: (batch, h, w),
            **{n: (batch, text_spec.MAX_TEXT_LEN) for n in text_spec.TEXT_INPUT_NAMES},
        }
        opt = {**lo, **{n: (1, 16) for n in text_spec.TEXT_INPUT_NAMES}}
        _trt(
            cfg,
            model,
            opts,
            {
                "trt_profile_min_shapes": _shape_str(lo),
                "trt_profile_opt_shapes": _shape_str(opt),
                "trt_profile_max_shapes": _shape_str(hi),
            },
            precision=opts.detector_precision.upper(),
        )
        warm = cfg.model_warmup.add(name="one_image", batch_size=1)
        for t in text_spec.detector_inputs(canvas):
            w_in = warm.inputs[t.name]
            w_in.data_type = _DTYPES[t.dtype]
            w_in.dims.extend(opt[t.name][1:])
            if t.dtype == "float32":
                w_in.random_data = True
            else:
                w_in.zero_data = True
    return cfg


def text_config(flavour: str, opts: RepositoryOptions = RepositoryOptions()) -> mc.ModelConfig:
    """The ``sam2_text`` config: python backend; BLS to a detector graph, the encoder and the
    decoder; encoded image + text (+ JSON options) in, JSON out. Its environment needs
    ``sam2-triton-server`` with ``tokenizers`` (the derived image has both)."""
    _check_flavour(flavour)
    cfg = mc.ModelConfig(name=text_spec.TEXT_MODEL, max_batch_size=0)
    _optional_inputs(
        cfg, text_spec.text_inputs(), required=(text_spec.TEXT_IMAGE, text_spec.TEXT_PROMPT)
    )
    cfg.output.extend(_tensor(t, False, mc.ModelOutput) for t in text_spec.text_outputs())
    _bls_model(
        cfg,
        flavour,
        opts,
        {
            "ENCODER_IMAGE_DTYPE": opts.image_dtype,
            "SEGMENT_MAX_PENDING": str(opts.text_max_pending),
            "DETECTOR_LANDSCAPE_MODEL": text_spec.DETECTOR_MODELS["landscape"],
            "DETECTOR_PORTRAIT_MODEL": text_spec.DETECTOR_MODELS["portrait"],
            "DETECTOR_SHORTEST_EDGE": str(opts.detector_shortest_edge),
            "DETECTOR_LONGEST_EDGE": str(opts.detector_longest_edge),
        },
    )
    return cfg


def _python_params(cfg: mc.ModelConfig) -> None:
    # The python-backend stub runs in isolated mode; sam2-triton serve points it at the
    # environment that has onnxruntime (see sam2_triton_serve.launcher).
    cfg.parameters["ORT_INTRA_OP_THREADS"].string_value = "0"


def _check_flavour(flavour: str) -> None:
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")


def render(config: mc.ModelConfig) -> str:
    """Text protobuf (``config.pbtxt``) of a model config, with a header comment."""
    header = "# Generated by sam2_triton_serve.repository; regenerate with `sam2-triton export`.\n"
    return header + text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` with Triton's own schema (raises on unknown fields)."""
    return text_format.Parse(text, mc.ModelConfig())


# Each python-backend model's 1/model.py: (its docstring, the sam2_triton_server module).
_ONNX_SHIM = ("CPU flavour: run this version's model.onnx with onnxruntime.", "onnx_model")
MODEL_SHIMS = {
    spec.ENCODER_MODEL: _ONNX_SHIM,
    spec.DECODER_MODEL: _ONNX_SHIM,
    spec.SESSION_MODEL: ("sam2_session: image features held on the server (BLS).", "session"),
    spec.SEGMENT_MODEL: ("sam2_segment: one-shot segmentation over plain REST (BLS).", "segment"),
    spec.AMG_MASKS_MODEL: _ONNX_SHIM,
    spec.EVERYTHING_MODEL: (
        "sam2_everything: segment everything in one request (BLS).",
        "everything",
    ),
    **{name: _ONNX_SHIM for name in video_spec.VIDEO_GRAPHS},
    video_spec.VIDEO_MODEL: ("sam2_video: video tracking held on the server (BLS).", "video"),
    video_spec.VIDEO_STREAM_MODEL: (
        "sam2_video_stream: propagation streamed frame by frame (decoupled, BLS).",
        "video_stream",
    ),
    **{name: _ONNX_SHIM for name in text_spec.DETECTOR_MODELS.values()},
    text_spec.TEXT_MODEL: (
        "sam2_text: text prompts -> masks (Grounding DINO + SAM 2, BLS).",
        "text",
    ),
}


def model_shim(model: str) -> str:
    """The text of ``<model>/1/model.py``: imports the model from ``sam2_triton_server``."""
    doc, module = MODEL_SHIMS[model]
    return (
        f'"""{doc}"""\n\nfrom sam2_triton_server.{module} import TritonPythonModel  # noqa: F401\n'
    )


# the onnxruntime runner's shim, for any ONNX model served by the CPU flavour
PYTHON_MODEL_SHIM = model_shim(spec.ENCODER_MODEL)


def config_files(
    opts: RepositoryOptions = RepositoryOptions(), video: bool = False, detector: bool = False
) -> dict[str, str]:
    """Every file of the repository except the ONNX models: relative path -> text. ``video``:
    also the five video graphs and ``sam2_video`` (``sam2-triton export --video``);
    ``detector``: the two detector graphs and ``sam2_text`` (``--detector``)."""
    files = {}
    builders = [
        (spec.ENCODER_MODEL, encoder_config),
        (spec.DECODER_MODEL, decoder_config),
        (spec.SESSION_MODEL, session_config),
        (spec.SEGMENT_MODEL, segment_config),
        (spec.AMG_MASKS_MODEL, amg_masks_config),
        (spec.EVERYTHING_MODEL, everything_config),
    ]
    if video:
        builders += [
            (name, lambda f, o, name=name: video_graph_config(name, f, o))
            for name in video_spec.VIDEO_GRAPHS
        ]
        builders.append((video_spec.VIDEO_MODEL, video_config))
        builders.append((video_spec.VIDEO_STREAM_MODEL, video_stream_config))
    if detector:
        builders += [
            (name, lambda f, o, name=name: detector_config(name, f, o)) for name in DETECTOR_GRAPHS
        ]
        builders.append((text_spec.TEXT_MODEL, text_config))
    for name, build in builders:
        files[f"{name}/config.pbtxt"] = render(build("gpu", opts))
        files[f"{name}/configs/{CPU_CONFIG_NAME}.pbtxt"] = render(build("cpu", opts))
        files[f"{name}/1/model.py"] = model_shim(name)
    return files


def engine_cache_key(onnx_files: Iterable[str | os.PathLike[str]], opts: RepositoryOptions) -> str:
    """16 hex characters over the bytes of the exported ONNX files and the config options that
    shape the engines: equal for the same export, different when weights or options change."""
    digest = hashlib.sha256(b"sam2-triton-engine-v1\x00")
    for path in onnx_files:
        with open(path, "rb") as fp:
            for block in iter(lambda: fp.read(1 << 20), b""):
                digest.update(block)
    digest.update(f"{opts.image_dtype},{opts.feature_dtype},{opts.max_batch_size}".encode())
    return digest.hexdigest()[:16]


def model_file(repository: str | os.PathLike[str], model: str, version: int = 1) -> Path:
    """Path of a model's ONNX file inside a repository."""
    return Path(repository) / model / str(version) / MODEL_FILENAME
