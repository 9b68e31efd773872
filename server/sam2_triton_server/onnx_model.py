"""Triton python-backend model that runs ``<version dir>/model.onnx`` with onnxruntime on CPU.

This is the CPU flavour of the model repository: ``sam2_encoder/1/model.py`` and
``sam2_decoder/1/model.py`` are shims (``from sam2_triton_server.onnx_model import
TritonPythonModel``), so both models share this implementation. Input/output names, dtypes and
``max_batch_size`` come from the model config Triton hands over (``args["model_config"]``) and
are checked against the ONNX graph at load time.

- ``max_batch_size > 0``: all requests of one ``execute()`` call (the dynamic batcher's batch)
  whose non-batch shapes agree are concatenated along axis 0, run as ONE ``session.run`` and
  split back per request. If that run fails, each request is re-run alone so that the error
  reaches only the request that caused it.
- ``max_batch_size == 0``: every request is run on its own.
- A bad request gets a ``pb_utils.TritonError`` response naming the tensor and the shapes;
  other requests in the same batch are unaffected.
- A missing or unreadable ``model.onnx`` makes ``initialize()`` raise with the file's path, which
  Triton reports as the model's load failure.

Model config parameters (all optional, ``string_value``):

- ``ORT_INTRA_OP_THREADS``: onnxruntime intra-op threads; absent, empty or ``"0"`` mean
  ``os.cpu_count()``.
- ``ORT_INTER_OP_THREADS``: onnxruntime inter-op threads; absent, empty or ``"0"`` mean 1
  (sequential execution).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._triton import RequestError, error_response, int_parameter, pb_utils, require_triton

ONNX_FILENAME = "model.onnx"
PARAM_INTRA_OP_THREADS = "ORT_INTRA_OP_THREADS"
PARAM_INTER_OP_THREADS = "ORT_INTER_OP_THREADS"

# onnxruntime's type strings -> numpy dtypes (the ones a Triton config can express).
_ORT_TO_NUMPY: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class _TensorInfo:
    """One config input/output paired with what the ONNX graph declares for it."""

    def __init__(self, name: str, dtype: np.dtype, onnx_shape: tuple[int | None, ...]) -> None:
        self.name = name
        self.dtype = dtype
        self.onnx_shape = onnx_shape  # None = dynamic

    def expected(self) -> str:
        return "[" + ", ".join("-1" if d is None else str(d) for d in self.onnx_shape) + "]"


def _log(level: str, msg: str) -> None:
    getattr(pb_utils.Logger, f"log_{level}")(msg)


def _thread_parameter(config: dict[str, Any], key: str, default: int) -> int:
    """A thread-count parameter: absent, empty or "0" mean ``default``."""
    return int_parameter(config, key, 0, minimum=0) or default


def _static_dims(shape: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


class TritonPythonModel:
    """Generic onnxruntime runner for Triton's python backend (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        require_triton()
        config = json.loads(args["model_config"])
        self._name = args.get("model_name", config.get("name", "?"))
        self._max_batch_size = int(config.get("max_batch_size", 0))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        path = version_dir / ONNX_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"ONNX model file not found: {path} (run `sam2-triton export` to create it)"
            )

        intra = _thread_parameter(config, PARAM_INTRA_OP_THREADS, os.cpu_count() or 1)
        inter = _thread_parameter(config, PARAM_INTER_OP_THREADS, 1)

        import onnxruntime as ort  # lazily: the auto-complete stub never needs it

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra
        options.inter_op_num_threads = inter
        options.execution_mode = (
            ort.ExecutionMode.ORT_SEQUENTIAL if inter == 1 else ort.ExecutionMode.ORT_PARALLEL
        )
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        started = time.perf_counter()
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            size = path.stat().st_size
            raise RuntimeError(
                f"cannot load ONNX model file {path} ({size} bytes; corrupt or incomplete? "
                f"re-run `sam2-triton export`): {exc}"
            ) from exc

        self._inputs = self._match(config, "input", self._session.get_inputs(), path)
        self._outputs = self._match(config, "output", self._session.get_outputs(), path)
        self._output_names = [t.name for t in self._outputs]
        _log(
            "info",
            f"{self._name} v{args['model_version']}: loaded {path} "
            f"({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - started:.2f} s; "
            f"onnxruntime {ort.__version__} CPU, {intra} intra-op threads, "
            f"max_batch_size {self._max_batch_size}; python {sys.prefix}, numpy {np.__version__}",
        )

    def _match(
        self, config: dict[str, Any], kind: str, onnx_args: list[Any], path: Path
    ) -> list[_TensorInfo]:
        """Pair the config's inputs/outputs with the ONNX graph's; raise on any disagreement."""
        onnx_by_name = {a.name: a for a in onnx_args}
        entries = config.get(kind, [])
        if not entries:
            raise ValueError(f"model config of {self._name} declares no {kind}s")
        infos: list[_TensorInfo] = []
        for entry in entries:
            name = entry["name"]
            if name not in onnx_by_name:
                raise ValueError(
                    f"config {kind} {name!r} is not an {kind} of {path} "
                    f"(the ONNX {kind}s are {sorted(onnx_by_name)})"
                )
            onnx_arg = onnx_by_name[name]
            want = np.dtype(pb_utils.triton_string_to_numpy(entry["data_type"]))
            have = _ORT_TO_NUMPY.get(onnx_arg.type)
            if have is None or np.dtype(have) != want:
                raise ValueError(
                    f"{kind} {name!r}: config data_type {entry['data_type']} but {path} "
                    f"has {onnx_arg.type}"
                )
            infos.append(_TensorInfo(name, want, _static_dims(list(onnx_arg.shape))))
        if kind == "input":
            missing = sorted(set(onnx_by_name) - {i.name for i in infos})
            if missing:
                raise ValueError(f"inputs {missing} of {path} are missing from the model config")
        return infos

    # --- execution ---------------------------------------------------------------------------
    def _read_inputs(self, request: Any) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        batch: int | None = None
        for info in self._inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, info.name)
            if tensor is None:
                raise RequestError(f"input {info.name!r} is missing")
            array = tensor.as_numpy()
            if array.dtype != info.dtype:
                raise RequestError(
                    f"input {info.name!r} has dtype {array.dtype}, the model expects {info.dtype}"
                )
            shape = array.shape
            if len(shape) != len(info.onnx_shape) or any(
                want is not None and want != got for want, got in zip(info.onnx_shape, shape)
            ):
                raise RequestError(
                    f"input {info.name!r} has shape {list(shape)}, the model expects "
                    f"{info.expected()} (-1 = any size)"
                )
            if self._max_batch_size > 0:
                if batch is None:
                    batch = shape[0]
                elif shape[0] != batch:
                    raise RequestError(
                        f"input {info.name!r} has batch size {shape[0]}, other inputs {batch}"
                    )
            feeds[info.name] = array
        return feeds

    def _requested(self, request: Any) -> list[str]:
        names = [n for n in request.requested_output_names() if n in self._output_names]
        return names or list(self._output_names)

    def _respond(self, outputs: dict[str, np.ndarray], names: list[str]) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(outputs[n])) for n in names]
        )

    def _run(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, self._session.run(names, feeds)))

    def _run_one(self, index: int, feeds: dict[str, np.ndarray], names: list[str]) -> Any:
        try:
            return self._respond(self._run(feeds, names), names)
        except Exception as exc:  # noqa: BLE001 - reported to the client, not raised
            _log("error", f"{self._name}: request {index} failed: {exc}")
            return error_response(
                self._name, RequestError(f"onnxruntime failed: {exc}", "INTERNAL")
            )

    def _run_group(
        self, members: list[tuple[int, dict[str, np.ndarray], list[str]]]
    ) -> dict[int, Any]:
        """Run requests with equal non-batch shapes as one batch; return {index: response}."""
        if len(members) == 1:
            index, feeds, names = members[0]
            return {index: self._run_one(index, feeds, names)}
        names = [n for n in self._output_names if any(n in m[2] for m in members)]
        sizes = [next(iter(m[1].values())).shape[0] for m in members]
        total = sum(sizes)
        try:
            feeds = {
                info.name: np.concatenate([m[1][info.name] for m in members], axis=0)
                for info in self._inputs
            }
            outputs = self._run(feeds, names)
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != total:
                    raise RuntimeError(
                        f"output {name!r} has shape {list(value.shape)}, expected batch {total}"
                    )
        except Exception as exc:  # noqa: BLE001 - fall back to one run per request
            _log("warn", f"{self._name}: batch of {len(members)} failed ({exc}); running each")
            return {m[0]: self._run_one(*m) for m in members}
        responses = {}
        start = 0
        for (index, _, wanted), size in zip(members, sizes):
            part = {n: outputs[n][start : start + size] for n in wanted}
            responses[index] = self._respond(part, wanted)
            start += size
        return responses

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray], list[str]]]] = {}
        for index, request in enumerate(requests):
            try:
                feeds = self._read_inputs(request)
            except RequestError as exc:
                responses[index] = error_response(self._name, exc)
                continue
            names = self._requested(request)
            if self._max_batch_size > 0:
                key = tuple((k, v.shape[1:]) for k, v in feeds.items())
                groups.setdefault(key, []).append((index, feeds, names))
            else:
                responses[index] = self._run_one(index, feeds, names)
        for members in groups.values():
            for index, response in self._run_group(members).items():
                responses[index] = response
        return responses

    def finalize(self) -> None:
        self._session = None
