"""``sam2_session``: keep image features on the server (Triton python backend, BLS).

Ops (tensors: ``sam2_triton.spec``, ``session_wire``): "encode" takes the encoder's input tensor
and the original H, W, runs ``sam2_encoder`` through BLS and returns the image's id
(``spec.session_image_id``, which the client computes alike: re-uploads are idempotent);
"decode" takes an id and the decoder's prompt tensors, runs ``sam2_decoder`` on the held features
and returns its outputs -- all four mask tokens, or with ``multimask_output`` the ones
``sam2_triton.transforms.select_masks`` picks (with ``mask_threshold`` also the masks at the
image's size, ``transforms.upsample_masks`` + ``encode_mask_bits``); "features" returns the held features.

- The features live in an LRU store (``store.FeatureStore``) bounded by ``SESSION_CACHE_BYTES``,
  kept as the encoder's BLS output tensors (shared memory on CPU; GPU memory with
  ``SESSION_FEATURES_ON_GPU``): never copied. Concurrent first requests for one image share one
  encoder run.
- An id not held gets NOT_FOUND "unknown image id" (never a wrong mask); the client re-sends
  the request with the image attached, which is encoded and used even if evicted at once.
- Requests are answered from a thread pool through the response sender, so a long encode does
  not hold up other users' clicks; more than ``SESSION_MAX_PENDING`` at once are refused
  (UNAVAILABLE). Metrics (``METRICS``) go to Triton's metrics port.
- Run exactly one instance: the store lives in its process.

Other parameters (``string_value``): ``SESSION_THREADS`` (parallel encoder calls of one upload,
default 8), ``SESSION_MAX_IMAGES_PER_REQUEST`` (default 16), ``ENCODER_MODEL``/``DECODER_MODEL``.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from sam2_triton import spec, transforms

from ._triton import (
    RequestError,
    error_response,
    int_parameter,
    parameter,
    pb_utils,
    require_triton,
    send_final,
)
from .session_wire import (
    DECODER_OUTPUTS,
    IMAGE,
    IMAGE_ID,
    OP_DECODE,
    OP_ENCODE,
    OP_FEATURES,
    OP_INPUTS,
    ORIG_HW,
    PARAM_MAX_IMAGES,
    check_inputs,
    check_op,
    outputs_of,
)
from .store import PARAM_CACHE_BYTES, Entry, FeatureStore

PARAM_ON_GPU = "SESSION_FEATURES_ON_GPU"
PARAM_THREADS = "SESSION_THREADS"
PARAM_MAX_PENDING = "SESSION_MAX_PENDING"
PARAM_ENCODER = "ENCODER_MODEL"
PARAM_DECODER = "DECODER_MODEL"
# Triton metric families: name, help text, kind (hits and misses carry the label "op")
METRICS = (
    ("sam2_session_images", "Images whose features the session store holds", "GAUGE"),
    ("sam2_session_bytes", "Bytes of image features the session store holds", "GAUGE"),
    (
        "sam2_session_budget_bytes",
        f"Byte budget of the session store ({PARAM_CACHE_BYTES})",
        "GAUGE",
    ),
    (
        "sam2_session_hits_total",
        "Session requests whose image was already held or being encoded, by op",
        "COUNTER",
    ),
    (
        "sam2_session_misses_total",
        "Session requests whose image was not held (op encode: an "
        "encoder run; op decode/features: an unknown-image error)",
        "COUNTER",
    ),
    (
        "sam2_session_evictions_total",
        "Images dropped from the session store to stay within its byte budget",
        "COUNTER",
    ),
)


# --- the Triton model -------------------------------------------------------------------------
class _Job:
    """One validated request, its inputs copied out of the request, and its response sender."""

    __slots__ = ("op", "inputs", "outputs", "sender")

    def __init__(
        self, op: str, inputs: dict[str, np.ndarray], outputs: list[str], sender: Any
    ) -> None:
        self.op, self.inputs, self.outputs, self.sender = op, inputs, outputs, sender


class TritonPythonModel:
    """The session model (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        require_triton()
        config = json.loads(args["model_config"])
        self._name = args.get("model_name", config.get("name", spec.SESSION_MODEL))
        budget = int_parameter(config, PARAM_CACHE_BYTES, 0)
        self._on_gpu = parameter(config, PARAM_ON_GPU, "false").lower() in ("1", "true", "yes")
        threads = int_parameter(config, PARAM_THREADS, 8)
        self._max_pending = int_parameter(config, PARAM_MAX_PENDING, 64)
        self._max_images = int_parameter(config, PARAM_MAX_IMAGES, 16)
        self._encoder = parameter(config, PARAM_ENCODER, spec.ENCODER_MODEL)
        self._decoder = parameter(config, PARAM_DECODER, spec.DECODER_MODEL)
        self._device = int(args.get("model_instance_device_id", 0) or 0)
        self._image_dtype = np.dtype(
            pb_utils.triton_string_to_numpy(
                pb_utils.get_input_config_by_name(config, IMAGE)["data_type"]
            )
        )
        # bytes per feature value, from this model's own declared feature outputs (GPU tensors
        # cannot be asked through numpy)
        self._feature_itemsize = np.dtype(
            pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, spec.FEATURE_NAMES[0])["data_type"]
            )
        ).itemsize
        self._fingerprint: np.ndarray | None = None  # the encoder's, learnt on the first encode
        self._pending = 0
        self._pending_lock = threading.Lock()

        labels = {"model": self._name, "version": str(args.get("model_version", "1"))}
        kinds = pb_utils.MetricFamily
        self._families = [kinds(name, text, getattr(kinds, kind)) for name, text, kind in METRICS]
        images, nbytes, budget_m, hits, misses, evictions = self._families
        self._m_images = images.Metric(labels=labels)
        self._m_bytes = nbytes.Metric(labels=labels)
        self._m_budget = budget_m.Metric(labels=labels)
        self._m_hits = {op: hits.Metric(labels={**labels, "op": op}) for op in OP_INPUTS}
        self._m_misses = {op: misses.Metric(labels={**labels, "op": op}) for op in OP_INPUTS}
        self._m_evictions = evictions.Metric(labels=labels)
        self._m_budget.set(float(budget))
        self._m_images.set(0.0)
        self._m_bytes.set(0.0)

        self._store = FeatureStore(budget, self._metric_event)
        # One thread per admitted request (at most SESSION_MAX_PENDING, created on demand):
        # requests waiting for another request's encode of the same image never hold up a click.
        self._pool = ThreadPoolExecutor(self._max_pending, thread_name_prefix="sam2-session")
        # encoder calls of multi-image uploads, in parallel so the encoder's batcher sees them
        self._bls_pool = ThreadPoolExecutor(threads, thread_name_prefix="sam2-session-bls")
        pb_utils.Logger.log_info(
            f"{self._name}: session store of {budget} bytes "
            f"({'GPU' if self._on_gpu else 'CPU'} features, device {self._device}), up to "
            f"{self._max_pending} requests at once, BLS to {self._encoder!r} and {self._decoder!r}"
        )

    # --- metrics ---------------------------------------------------------------------------
    def _metric_event(self, event: str, **values: Any) -> None:
        if event == "hit":
            self._m_hits[values["op"]].increment(1.0)
        elif event == "miss":
            self._m_misses[values["op"]].increment(1.0)
        elif event == "evict":
            self._m_evictions.increment(1.0)
        elif event == "size":
            self._m_images.set(float(values["images"]))
            self._m_bytes.set(float(values["nbytes"]))

    # --- request intake (Triton's thread) --------------------------------------------------
    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self._parse(request, sender)
            except RequestError as exc:
                self._send_error(sender, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - every request must get its one response
                self._send_error(
                    sender, RequestError(f"cannot read the request: {exc}", "INTERNAL")
                )
                continue
            with self._pending_lock:
                busy = self._pending >= self._max_pending
                if not busy:
                    self._pending += 1
            if busy:
                self._send_error(
                    sender,
                    RequestError(
                        f"{self._name}: too many requests in flight ({self._max_pending}, "
                        f"{PARAM_MAX_PENDING}); retry later",
                        "UNAVAILABLE",
                    ),
                )
                continue
            self._pool.submit(self._run, job)
        return None

    def _parse(self, request: Any, sender: Any) -> _Job:
        present = {t.name(): t for t in request.inputs()}
        raw_op = present.pop(spec.SESSION_OP, None)
        op = check_op(None if raw_op is None else raw_op.as_numpy(), present)
        # copies: the request's buffers are released when execute() returns
        inputs = {n: np.array(t.as_numpy(), copy=True) for n, t in present.items()}
        check_inputs(op, inputs, self._max_images)
        return _Job(op, inputs, outputs_of(op, request.requested_output_names(), inputs), sender)

    # --- work (pool threads) ---------------------------------------------------------------
    def _run(self, job: _Job) -> None:
        try:
            try:
                outputs = getattr(self, f"_{job.op}")(job.inputs)
                response = pb_utils.InferenceResponse(
                    output_tensors=[self._tensor(n, outputs[n]) for n in job.outputs]
                )
            except RequestError as exc:
                response = error_response(self._name, exc)
            except Exception as exc:  # noqa: BLE001 - every request must get its one response
                pb_utils.Logger.log_error(f"{self._name}: op {job.op!r} failed: {exc!r}")
                response = error_response(
                    self._name,
                    RequestError(f"{self._name}: op {job.op!r} failed: {exc}", "INTERNAL"),
                )
            send_final(job.sender, response)
        finally:
            with self._pending_lock:
                self._pending -= 1

    @staticmethod
    def _tensor(name: str, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return pb_utils.Tensor(name, value)
        return value  # a pb_utils.Tensor held by the store (CPU shared memory or GPU)

    def _encode(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        images, hws = inputs[IMAGE], inputs[ORIG_HW].astype(np.int64)
        ids = [spec.session_image_id(images[i], hws[i]) for i in range(images.shape[0])]
        entries = self._obtain(ids, images, hws)
        return {
            IMAGE_ID: np.array([k.encode() for k in ids], dtype=np.object_),
            ORIG_HW: np.array([entries[k].orig_hw for k in ids], dtype=np.int32).reshape(-1, 2),
            spec.FINGERPRINT: np.stack([entries[k].fingerprint for k in ids]).astype(np.int32),
        }

    def _obtain(self, ids: list[str], images: np.ndarray, hws: np.ndarray) -> dict[str, Entry]:
        """The entries of ``ids`` (image i has id ``ids[i]``): held, being encoded by another
        request (waited for), or encoded now. The caller holds references to them, so they stay
        usable even if the store evicts them right away."""
        claims: dict[str, tuple[str, Any]] = {}
        mine: list[tuple[str, int]] = []
        for i, key in enumerate(ids):
            if key not in claims:
                claims[key] = self._store.claim(key, OP_ENCODE)
                if claims[key][0] == "mine":
                    mine.append((key, i))
        if len(mine) == 1:
            self._encode_one(*mine[0], images, hws)
        elif mine:
            futures: list[Future] = [
                self._bls_pool.submit(self._encode_one, key, i, images, hws) for key, i in mine
            ]
            for future in futures:
                future.result()
        entries: dict[str, Entry] = {}
        for key, (state, value) in claims.items():
            if state == "held":
                entries[key] = value
                continue
            value.done.wait()
            if value.error is not None:
                raise value.error
            entries[key] = value.entry
        return entries

    def _encode_one(self, key: str, i: int, images: np.ndarray, hws: np.ndarray) -> None:
        """Run the encoder on image ``i`` and store it; always finishes the claim on ``key``."""
        entry: Entry | None = None
        error: RequestError | None = None
        try:
            entry = self._run_encoder(images[i : i + 1], (int(hws[i][0]), int(hws[i][1])))
        except RequestError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - waiters must be woken with the error
            error = RequestError(f"{self._name}: encoding failed: {exc}", "INTERNAL")
        finally:
            self._store.finish(key, entry, error)

    def _run_encoder(self, image: np.ndarray, orig_hw: tuple[int, int]) -> Entry:
        # On GPU the fingerprint output would land in GPU memory too, where numpy cannot read
        # it: the first encode runs with CPU outputs to learn it (that entry stays on the CPU).
        gpu = self._on_gpu and self._fingerprint is not None
        memory = pb_utils.PreferredMemory(
            pb_utils.TRITONSERVER_MEMORY_GPU if gpu else pb_utils.TRITONSERVER_MEMORY_CPU,
            self._device if gpu else 0,
        )
        request = pb_utils.InferenceRequest(
            model_name=self._encoder,
            requested_output_names=[*spec.FEATURE_NAMES, spec.FINGERPRINT],
            inputs=[pb_utils.Tensor(IMAGE, np.ascontiguousarray(image, dtype=self._image_dtype))],
            preferred_memory=memory,
        )
        response = request.exec()
        if response.has_error():
            raise RequestError(
                f"{self._name}: {self._encoder} failed: {response.error().message()}", "INTERNAL"
            )
        tensors = {n: pb_utils.get_output_tensor_by_name(response, n) for n in spec.FEATURE_NAMES}
        fp_tensor = pb_utils.get_output_tensor_by_name(response, spec.FINGERPRINT)
        if fp_tensor is not None and fp_tensor.is_cpu():
            fingerprint = fp_tensor.as_numpy().reshape(-1).astype(np.int32)
            self._fingerprint = fingerprint
        elif self._fingerprint is not None:
            fingerprint = self._fingerprint
        else:
            raise RequestError(
                f"{self._name}: {self._encoder} returned no {spec.FINGERPRINT}", "INTERNAL"
            )
        nbytes = 0
        for name, tensor in tensors.items():
            if tensor is None:
                raise RequestError(
                    f"{self._name}: {self._encoder} returned no {name!r}", "INTERNAL"
                )
            nbytes += int(np.prod(tuple(tensor.shape()))) * self._feature_itemsize
        return Entry(tensors, orig_hw, fingerprint, nbytes)

    def _held(self, key: str, op: str, inputs: dict[str, Any]) -> Entry:
        entry = self._store.get(key, op)
        if entry is None and IMAGE in inputs:  # the client attached the image: encode it
            images, hws = inputs[IMAGE], inputs[ORIG_HW].astype(np.int64)
            attached = spec.session_image_id(images[0], hws[0])
            if attached != key:
                raise RequestError(
                    f"{IMAGE_ID} {key!r} is not the id of the attached image ({attached!r})"
                )
            entry = self._obtain([key], images, hws)[key]
        if entry is None:
            raise RequestError(
                f"{self._name}: {spec.SESSION_UNKNOWN_IMAGE} {key!r}: it was never encoded here, "
                f"was evicted from the session store ({self._store.max_bytes} bytes), or the "
                "server restarted; send the image again (op 'encode', or attach it to this "
                "request)",
                "NOT_FOUND",
            )
        return entry

    def _decode(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        key = inputs[IMAGE_ID]
        entry = self._held(key, OP_DECODE, inputs)
        n = inputs[spec.POINT_COORDS].shape[0]
        low_res = (1, 1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE)
        prompts = {
            spec.POINT_COORDS: inputs[spec.POINT_COORDS],
            spec.POINT_LABELS: inputs[spec.POINT_LABELS],
            spec.MASK_INPUT: inputs.get(spec.MASK_INPUT, np.zeros(low_res, np.float32)),
            spec.HAS_MASK_INPUT: inputs.get(spec.HAS_MASK_INPUT, np.zeros((1,), np.float32)),
        }
        request = pb_utils.InferenceRequest(
            model_name=self._decoder,
            requested_output_names=[*DECODER_OUTPUTS, spec.FINGERPRINT],
            inputs=[
                *entry.tensors.values(),
                *(pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in prompts.items()),
            ],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise RequestError(
                f"{self._name}: {self._decoder} failed: {response.error().message()}", "INTERNAL"
            )
        out = {
            n_: pb_utils.get_output_tensor_by_name(response, n_)
            for n_ in (*DECODER_OUTPUTS, spec.FINGERPRINT)
        }
        missing = [k for k, v in out.items() if v is None]
        if missing:
            raise RequestError(f"{self._name}: {self._decoder} returned no {missing}", "INTERNAL")
        decoder_fp = out[spec.FINGERPRINT].as_numpy().reshape(-1).astype(np.int32)
        if not np.array_equal(decoder_fp, entry.fingerprint):
            raise RequestError(
                f"{self._name}: {self._decoder} has other weights (fingerprint "
                f"{decoder_fp.tolist()}) than the {self._encoder} that encoded image {key!r} "
                f"({entry.fingerprint.tolist()}); export both models together",
                "INTERNAL",
            )
        low = out[DECODER_OUTPUTS[0]].as_numpy()
        if low.shape[0] != n:
            raise RequestError(
                f"{self._name}: {self._decoder} answered {low.shape[0]} masks for {n} prompts",
                "INTERNAL",
            )
        masks: dict[str, Any] = {name: out[name] for name in DECODER_OUTPUTS}
        multimask = inputs.get(spec.SESSION_MULTIMASK)
        if multimask is not None:  # only the tokens SAM 2 would return (not clamped)
            masks[spec.LOW_RES_MASKS], masks[spec.IOU_PREDICTIONS] = transforms.select_masks(
                low, out[spec.IOU_PREDICTIONS].as_numpy(), multimask
            )
            threshold = inputs.get(spec.SESSION_MASK_THRESHOLD)
            if threshold is not None:  # the masks themselves, as the SDK computes them
                full = transforms.upsample_masks(
                    masks[spec.LOW_RES_MASKS], entry.orig_hw, threshold
                )
                masks[spec.SESSION_MASKS] = transforms.encode_mask_bits(full)
        return {
            **masks,
            spec.FINGERPRINT: decoder_fp.reshape(1, -1),
            IMAGE_ID: np.array([key.encode()], dtype=np.object_),
            ORIG_HW: np.array([entry.orig_hw], dtype=np.int32),
        }

    def _features(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        key = inputs[IMAGE_ID]
        entry = self._held(key, OP_FEATURES, inputs)
        feats = {
            n: (np.array(t.as_numpy(), copy=True) if t.is_cpu() else t)
            for n, t in entry.tensors.items()
        }
        return {
            **feats,
            spec.FINGERPRINT: entry.fingerprint.reshape(1, -1),
            IMAGE_ID: np.array([key.encode()], dtype=np.object_),
            ORIG_HW: np.array([entry.orig_hw], dtype=np.int32),
        }

    # --- errors ----------------------------------------------------------------------------
    def _send_error(self, sender: Any, exc: RequestError) -> None:
        send_final(sender, error_response(self._name, exc))

    def finalize(self) -> None:
        started = time.monotonic()
        self._pool.shutdown(wait=True)
        self._bls_pool.shutdown(wait=True)
        pb_utils.Logger.log_info(
            f"{self._name}: stopped ({len(self._store)} images held, "
            f"drained in {time.monotonic() - started:.1f} s)"
        )
        self._store = None
        self._m_hits = self._m_misses = {}
        self._m_images = self._m_bytes = self._m_budget = self._m_evictions = None
        self._families = []
