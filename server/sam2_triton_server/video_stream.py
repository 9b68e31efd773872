"""``sam2_video_stream``: a propagation streamed frame by frame (decoupled python backend).

A gRPC stream request carries "propagate" and its inputs (``video_spec.STREAM_INPUTS``); the
model asks ``sam2_video`` for one frame at a time through BLS ("propagate", then
"propagate_next") and sends each frame as its own response as soon as it is computed, then the
final flag. It keeps no state: ``sam2_video`` holds the video. A cancelled stream stops after
the frame in progress.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sam2_triton import video_spec as vs

from ._triton import RequestError, error_response, parameter, pb_utils, require_triton

PARAM_VIDEO_MODEL = "VIDEO_MODEL"
FRAME_OUTPUTS = [vs.FRAME_IDXS, vs.OBJ_IDS, vs.MASKS, vs.DONE]
_CODES = {vs.VIDEO_UNKNOWN: "NOT_FOUND", vs.VIDEO_OVER_BUDGET: "UNAVAILABLE"}


class TritonPythonModel:
    """The stream model (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        require_triton()
        config = json.loads(args["model_config"])
        self._name = args.get("model_name", config.get("name", vs.VIDEO_STREAM_MODEL))
        self._video = parameter(config, PARAM_VIDEO_MODEL, vs.VIDEO_MODEL)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._stream(request, sender)
            except RequestError as exc:
                sender.send(
                    error_response(self._name, exc),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            except Exception as exc:  # noqa: BLE001 - every stream must end with its final flag
                pb_utils.Logger.log_error(f"{self._name}: {exc!r}")
                sender.send(
                    error_response(self._name, RequestError(f"internal error: {exc}", "INTERNAL")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _stream(self, request: Any, sender: Any) -> None:
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        op = inputs[vs.VIDEO_OP].reshape(-1)[0]
        op = op.decode() if isinstance(op, bytes) else str(op)
        if op != "propagate":
            raise RequestError(f"input 'op' must be 'propagate' for {self._name}, got {op!r}")
        first = {name: value for name, value in inputs.items() if name != vs.VIDEO_OP}
        step = {vs.VIDEO_OP: np.array([b"propagate"], np.object_), **first}
        step[vs.STEPS] = np.array([1], np.int32)
        video_id = inputs[vs.VIDEO_ID]
        while True:
            outputs = self._call(step)
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(n, outputs[n]) for n in FRAME_OUTPUTS]
                )
            )
            if bool(outputs[vs.DONE].reshape(-1)[0]) or request.is_cancelled():
                return
            step = {
                vs.VIDEO_OP: np.array([b"propagate_next"], np.object_),
                vs.VIDEO_ID: video_id,
                vs.STEPS: np.array([1], np.int32),
            }

    def _call(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bls = pb_utils.InferenceRequest(
            model_name=self._video,
            requested_output_names=FRAME_OUTPUTS,
            # sam2_video has Triton's batch dimension: one request is [1, ...]
            inputs=[pb_utils.Tensor(n, np.ascontiguousarray(v[None])) for n, v in inputs.items()],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = bls.exec()
        if response.has_error():
            message = response.error().message()
            code = next((c for k, c in _CODES.items() if k in message), "INVALID_ARG")
            # sam2_video's message already names the model and the problem
            raise RequestError(message, code)
        return {
            n: pb_utils.get_output_tensor_by_name(response, n).as_numpy()[0] for n in FRAME_OUTPUTS
        }
