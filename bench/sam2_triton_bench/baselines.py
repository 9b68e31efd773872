"""The in-process baselines the served numbers are compared with, on the same weights.

- ``InProcessORT``: onnxruntime in this process on the *same ONNX files* the server runs, with
  the session options the CPU flavour's python backend uses, and the *same client code* around
  it (preprocessing, prompt validation, mask selection and upsampling): the difference to a
  served call is exactly what serving costs (transport, serialisation, Triton, python backend).
- ``Sam2Predictor``: ``sam2.sam2_image_predictor.SAM2ImagePredictor`` in PyTorch, what users
  run today (its own preprocessing and postprocessing).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import spec, transforms
from sam2_triton.prompts import plan_decode, validate_prompt
from sam2_triton.types import ImageEmbedding, Prediction, Prompt


def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class InProcessORT:
    """Encoder and decoder ONNX files of one export, run by onnxruntime in this process.

    ``providers``: onnxruntime execution providers (default: CUDA when available, else CPU);
    ``["CPUExecutionProvider"]`` gives the exact FP32 reference ``sam2-triton verify`` uses.
    """

    def __init__(self, repo: Path, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        from sam2_triton_serve import repository

        options = ort.SessionOptions()
        # the CPU flavour's python backend: ORT_INTRA_OP_THREADS "0" = os.cpu_count(), 1 inter
        options.intra_op_num_threads = os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.providers = list(providers) if providers is not None else _providers()
        self.encoder = ort.InferenceSession(
            str(repository.model_file(repo, spec.ENCODER_MODEL)), options, providers=self.providers
        )
        self.decoder = ort.InferenceSession(
            str(repository.model_file(repo, spec.DECODER_MODEL)), options, providers=self.providers
        )
        self._enc_outputs = [o.name for o in self.encoder.get_outputs()]
        self._dec_outputs = [o.name for o in self.decoder.get_outputs()]
        self.image_dtype = np.dtype(
            {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}[
                self.encoder.get_inputs()[0].type
            ]
        )

    def encode(self, image: Any) -> ImageEmbedding:
        """What ``SAM2Client.encode`` computes, without the server."""
        image01 = transforms.load_image(image)
        wire = transforms.to_wire_image(image01, self.image_dtype)
        outs = dict(
            zip(
                self._enc_outputs,
                self.encoder.run(self._enc_outputs, {spec.ENCODER_IMAGE: wire[None]}),
            )
        )
        return ImageEmbedding(
            **{n: outs[n] for n in spec.FEATURE_NAMES},
            orig_hw=image01.shape[:2],
            fingerprint=outs[spec.FINGERPRINT][0],
        )

    def decode(
        self,
        embedding: ImageEmbedding,
        prompt: Prompt,
        multimask_output: bool = True,
    ) -> tuple[Prediction, float]:
        """What ``SAM2Client.decode`` computes for one prompt, without the server; also returns
        the seconds of the decoder's ``session.run`` alone."""
        wire = [validate_prompt(prompt, "prompt", embedding.orig_hw)]
        (chunk,) = plan_decode(wire, 64)
        feeds = {n: np.ascontiguousarray(a) for n, a in embedding.features().items()}
        feeds.update(
            {
                spec.POINT_COORDS: chunk.point_coords,
                spec.POINT_LABELS: chunk.point_labels,
                spec.MASK_INPUT: chunk.mask_input,
                spec.HAS_MASK_INPUT: chunk.has_mask_input,
            }
        )
        start = time.perf_counter()
        outs = self.decoder.run(self._dec_outputs, feeds)
        run_s = time.perf_counter() - start
        return _prediction(dict(zip(self._dec_outputs, outs)), embedding, multimask_output), run_s


def _prediction(
    outs: dict[str, np.ndarray], embedding: ImageEmbedding, multimask_output: bool
) -> Prediction:
    """One prompt's decoder outputs -> a ``Prediction``, with the SDK's public mask steps
    (``transforms.select_masks`` + ``postprocess``), as ``SAM2Client.decode`` builds it."""
    if not np.array_equal(
        np.asarray(outs[spec.FINGERPRINT]).reshape(-1), embedding.fingerprint.reshape(-1)
    ):
        raise ValueError("the embedding was computed by other weights than this decoder's")
    low_res = outs[spec.LOW_RES_MASKS].astype(np.float32, copy=False)
    iou = outs[spec.IOU_PREDICTIONS].astype(np.float32)
    obj = outs[spec.OBJECT_SCORE_LOGITS].astype(np.float32).reshape(-1)
    sel_low, sel_iou = transforms.select_masks(low_res, iou, multimask_output)
    masks, low_clamped = transforms.postprocess(
        sel_low, embedding.orig_hw, False, mask_threshold=spec.MASK_THRESHOLD
    )
    return Prediction(
        masks=masks[0],
        scores=np.asarray(sel_iou[0], dtype=np.float32),
        low_res_logits=np.asarray(low_clamped[0], dtype=np.float32),
        object_score_logits=float(obj[0]),
    )


class Sam2Predictor:
    """``SAM2ImagePredictor`` on the weights an export was made from (its manifest)."""

    def __init__(self, manifest: dict) -> None:
        import torch

        with warnings.catch_warnings():  # torch.jit deprecation noise from sam2's imports
            warnings.simplefilter("ignore")
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            from sam2_triton_export import checkpoints

        weights = manifest.get("weights", {})
        state_dict = None
        if not weights.get("random", True):
            state_dict = checkpoints.load_state_dict(Path(weights["path"]))
        with warnings.catch_warnings():  # torch.jit deprecation noise from sam2's imports
            warnings.simplefilter("ignore")
            model = checkpoints.build_model(
                manifest["variant"], state_dict, seed=weights.get("seed", 0)
            )
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = model.to(self.device).eval()
        self.predictor = SAM2ImagePredictor(model)
        self.torch_version = torch.__version__
        self.threads = torch.get_num_threads()

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def predict(self, point: tuple[float, float], multimask_output: bool = True) -> np.ndarray:
        masks, _, _ = self.predictor.predict(
            point_coords=np.array([point], dtype=np.float32),
            point_labels=np.array([1]),
            multimask_output=multimask_output,
        )
        return masks
