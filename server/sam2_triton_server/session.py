"""``sam2_session``: keep image features on the server (Triton python backend, BLS).

SELF-CONTAINED: this file is installed as ``sam2_session/1/model.py`` and runs inside any
Triton python backend, including the NGC container where no sam2_triton package exists. It
imports only the standard library, numpy and ``triton_python_backend_utils``. The wire contract
below repeats ``sam2_triton.spec`` (tests check that the two agree).

What it does
------------
A client uploads an image once (``op`` "encode": the encoder's input tensor, as
``sam2_encoder`` takes it, plus the original H, W) and gets an image id: sha256 over a salt,
the tensor's bytes and H, W, so uploading the same image again is idempotent. Later requests
carry only the id and the prompt tensors (``op`` "decode", exactly the decoder's inputs) and get
the decoder's outputs back; ``op`` "features" returns the held features. Both models are called
through BLS (``pb_utils.InferenceRequest``); ``sam2_encoder`` and ``sam2_decoder`` are unchanged.

- The features (16.8 MB per image in FP32) live in a least-recently-used store bounded by the
  model config parameter ``SESSION_CACHE_BYTES``. The encoder's BLS output tensors are kept as
  they are: in the python backend's shared memory on CPU, in GPU memory when
  ``SESSION_FEATURES_ON_GPU`` is "true" (the BLS request then asks for
  ``preferred_memory=GPU``) -- no copy is made when they are stored or passed to the decoder.
- Concurrent first requests for the same image run the encoder once: the first claims the id,
  the others wait for its result.
- An id the store does not hold gets a NOT_FOUND error naming the id ("unknown image id"):
  never a wrong mask. The client then re-sends the request with the image attached (``image``
  and ``orig_hw`` are optional inputs of "decode" and "features" too, used only when the id is
  not held): the image is encoded and used for that request even if the store evicts it at
  once, so a re-sent click always succeeds.
- Requests are answered from a thread pool through the response sender (default, i.e.
  non-decoupled, transaction policy; Triton >= 24.06), so a long encode does not hold up the
  clicks of other users: ``execute`` only validates and copies the inputs, then returns.
  At most ``SESSION_MAX_PENDING`` requests are queued or running; more are refused at once
  ("too many requests", UNAVAILABLE).
- Metrics on Triton's metrics port (``pb_utils.MetricFamily``): ``sam2_session_images``,
  ``sam2_session_bytes``, ``sam2_session_budget_bytes`` (gauges), ``sam2_session_hits_total``,
  ``sam2_session_misses_total`` (counters, label ``op``), ``sam2_session_evictions_total``.

Run exactly one instance (``instance_group count: 1``): the store lives in that instance's
process; a second instance would hold a second, independent store.

Model config parameters (``string_value``):
``SESSION_CACHE_BYTES`` byte budget of the store (required, > 0); ``SESSION_FEATURES_ON_GPU``
"true"/"false" (default false); ``SESSION_MAX_PENDING`` requests queued or running at once, one
thread each (default 64); ``SESSION_THREADS`` parallel encoder calls of one multi-image upload
(default 8); ``ENCODER_MODEL``/``DECODER_MODEL`` the BLS targets (default sam2_encoder /
sam2_decoder); ``SESSION_MAX_IMAGES_PER_REQUEST`` (default 16).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

try:  # only importable inside the python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton (tests, docs)
    pb_utils = None

# --- wire contract (mirrors sam2_triton.spec) ---------------------------------------------------
ENCODER_MODEL = "sam2_encoder"
DECODER_MODEL = "sam2_decoder"
OP = "op"
OP_ENCODE, OP_DECODE, OP_FEATURES = "encode", "decode", "features"
IMAGE_ID = "image_id"
ORIG_HW = "orig_hw"
IMAGE = "image"
POINT_COORDS, POINT_LABELS = "point_coords", "point_labels"
MASK_INPUT, HAS_MASK_INPUT = "mask_input", "has_mask_input"
FEATURE_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")
FINGERPRINT = "model_fingerprint"
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions", "object_score_logits")
LOW_RES_SIZE = 256
ID_LEN = 64
ID_SALT = b"sam2-session-v1\x00"
UNKNOWN_IMAGE = "unknown image id"
MAX_PIXELS = 64_000_000

# which inputs each op uses (op itself excluded), and the outputs it can return
# (decode and features take the image too, optionally: used only when the id is not held)
OP_INPUTS = {
    OP_ENCODE: ((IMAGE, ORIG_HW), ()),
    OP_DECODE: (
        (IMAGE_ID, POINT_COORDS, POINT_LABELS),
        (MASK_INPUT, HAS_MASK_INPUT, IMAGE, ORIG_HW),
    ),
    OP_FEATURES: ((IMAGE_ID,), (IMAGE, ORIG_HW)),
}
OP_OUTPUTS = {
    OP_ENCODE: (IMAGE_ID, ORIG_HW, FINGERPRINT),
    OP_DECODE: (*DECODER_OUTPUTS, FINGERPRINT, IMAGE_ID, ORIG_HW),
    OP_FEATURES: (*FEATURE_NAMES, FINGERPRINT, IMAGE_ID, ORIG_HW),
}
# outputs an op returns when the request names none of its outputs
OP_DEFAULT_OUTPUTS = {
    OP_ENCODE: (IMAGE_ID, ORIG_HW, FINGERPRINT),
    OP_DECODE: (*DECODER_OUTPUTS, FINGERPRINT),
    OP_FEATURES: (*FEATURE_NAMES, FINGERPRINT, ORIG_HW),
}

PARAM_CACHE_BYTES = "SESSION_CACHE_BYTES"
PARAM_ON_GPU = "SESSION_FEATURES_ON_GPU"
PARAM_THREADS = "SESSION_THREADS"
PARAM_MAX_PENDING = "SESSION_MAX_PENDING"
PARAM_MAX_IMAGES = "SESSION_MAX_IMAGES_PER_REQUEST"
PARAM_ENCODER = "ENCODER_MODEL"
PARAM_DECODER = "DECODER_MODEL"


class RequestError(Exception):
    """A request that cannot be served as sent; ``code`` names the pb_utils.TritonError code."""

    def __init__(self, message: str, code: str = "INVALID_ARG") -> None:
        super().__init__(message)
        self.code = code


# --- pure helpers (no Triton) -----------------------------------------------------------------
def image_id(image: np.ndarray, orig_hw: Sequence[int]) -> str:
    """The id of one image: sha256 over ID_SALT, ``image``'s C-order bytes and orig_hw (int32 LE)."""
    digest = hashlib.sha256(ID_SALT)
    digest.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    digest.update(np.asarray(orig_hw, dtype="<i4").tobytes())
    return digest.hexdigest()


def check_image_id(raw: object) -> str:
    """Decode and validate one id element (bytes or str): 64 lowercase hex characters."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    if len(text) != ID_LEN or any(c not in "0123456789abcdef" for c in text):
        preview = text if len(text) <= 80 else text[:77] + "..."
        raise RequestError(
            f"image_id must be {ID_LEN} lowercase hex characters (the id that op 'encode' "
            f"returned), got {preview!r} ({len(text)} characters)"
        )
    return text


class _Pending:
    """An encode in flight: waiters block on ``done`` and then read ``entry`` or ``error``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None
        self.error: RequestError | None = None


class Entry:
    """The held features of one image (pb_utils.Tensor objects, or numpy arrays in tests)."""

    __slots__ = ("tensors", "orig_hw", "fingerprint", "nbytes")

    def __init__(
        self,
        tensors: dict[str, Any],
        orig_hw: tuple[int, int],
        fingerprint: np.ndarray,
        nbytes: int,
    ) -> None:
        self.tensors = tensors
        self.orig_hw = orig_hw
        self.fingerprint = fingerprint
        self.nbytes = nbytes


class FeatureStore:
    """Thread-safe LRU ``image id -> Entry`` holding at most ``max_bytes`` of features.

    ``claim(id)`` returns ``("held", entry)``, ``("wait", pending)`` while another thread
    encodes that id, or ``("mine", pending)``: the caller must encode it and call ``finish``.
    ``on_change(event, **values)`` is called (under the lock) for metrics: "hit", "miss" (with
    ``op``), "evict", and "size" (with ``images``, ``nbytes``).
    """

    def __init__(self, max_bytes: int, on_change: Callable[..., None] | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the store's byte budget must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._nbytes = 0
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda event, **values: None)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, op: str) -> Entry | None:
        """The held entry (marked most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self._on_change("miss", op=op)
                return None
            self._items.move_to_end(key)
            self._on_change("hit", op=op)
            return entry

    def claim(self, key: str, op: str = OP_ENCODE) -> tuple[str, Any]:
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
                self._on_change("hit", op=op)
                return "held", entry
            pending = self._pending.get(key)
            if pending is not None:
                self._on_change("hit", op=op)  # coalesced: no encoder run of its own
                return "wait", pending
            pending = self._pending[key] = _Pending()
            self._on_change("miss", op=op)
            return "mine", pending

    def finish(self, key: str, entry: Entry | None, error: RequestError | None = None) -> None:
        """Store ``entry`` (evicting LRU entries to stay within budget) and wake the waiters."""
        with self._lock:
            pending = self._pending.pop(key)
            if entry is not None:
                if entry.nbytes > self.max_bytes:
                    error = RequestError(
                        f"one image's features take {entry.nbytes} bytes, more than the whole "
                        f"session store ({PARAM_CACHE_BYTES} = {self.max_bytes}); raise "
                        f"{PARAM_CACHE_BYTES} in sam2_session's config",
                        "INTERNAL",
                    )
                    entry = None
                else:
                    old = self._items.pop(key, None)
                    if old is not None:
                        self._nbytes -= old.nbytes
                    while self._items and self._nbytes + entry.nbytes > self.max_bytes:
                        _, evicted = self._items.popitem(last=False)
                        self._nbytes -= evicted.nbytes
                        self._on_change("evict")
                    self._items[key] = entry
                    self._nbytes += entry.nbytes
                    self._on_change("size", images=len(self._items), nbytes=self._nbytes)
            pending.entry, pending.error = entry, error
            pending.done.set()


# --- the Triton model -------------------------------------------------------------------------
def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value.strip() if isinstance(value, str) and value.strip() else default


def _int_parameter(config: dict[str, Any], key: str, default: int, minimum: int = 1) -> int:
    raw = _parameter(config, key, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(
            f"model config parameter {key} must be an integer >= {minimum}, got {raw!r}"
        )
    return value


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
        if pb_utils is None:
            raise RuntimeError("triton_python_backend_utils is missing: run inside Triton")
        config = json.loads(args["model_config"])
        self._name = args.get("model_name", config.get("name", "sam2_session"))
        budget = _int_parameter(config, PARAM_CACHE_BYTES, 0)
        self._on_gpu = _parameter(config, PARAM_ON_GPU, "false").lower() in ("1", "true", "yes")
        threads = _int_parameter(config, PARAM_THREADS, 8)
        self._max_pending = _int_parameter(config, PARAM_MAX_PENDING, 64)
        self._max_images = _int_parameter(config, PARAM_MAX_IMAGES, 16)
        self._encoder = _parameter(config, PARAM_ENCODER, ENCODER_MODEL)
        self._decoder = _parameter(config, PARAM_DECODER, DECODER_MODEL)
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
                pb_utils.get_output_config_by_name(config, FEATURE_NAMES[0])["data_type"]
            )
        ).itemsize
        self._fingerprint: np.ndarray | None = None  # the encoder's, learnt on the first encode
        self._pending = 0
        self._pending_lock = threading.Lock()

        labels = {"model": self._name, "version": str(args.get("model_version", "1"))}
        kinds = pb_utils.MetricFamily
        self._families = [
            kinds(
                "sam2_session_images", "Images whose features the session store holds", kinds.GAUGE
            ),
            kinds(
                "sam2_session_bytes", "Bytes of image features the session store holds", kinds.GAUGE
            ),
            kinds(
                "sam2_session_budget_bytes",
                "Byte budget of the session store (SESSION_CACHE_BYTES)",
                kinds.GAUGE,
            ),
            kinds(
                "sam2_session_hits_total",
                "Session requests whose image was already held or being encoded, by op",
                kinds.COUNTER,
            ),
            kinds(
                "sam2_session_misses_total",
                "Session requests whose image was not held "
                "(op encode: an encoder run; op decode/features: an unknown-image error)",
                kinds.COUNTER,
            ),
            kinds(
                "sam2_session_evictions_total",
                "Images dropped from the session store to stay within its byte budget",
                kinds.COUNTER,
            ),
        ]
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
        raw_op = present.pop(OP, None)
        if raw_op is None:
            raise RequestError(f"input {OP!r} is missing: give one of {list(OP_INPUTS)}")
        ops = raw_op.as_numpy().reshape(-1)
        op = ops[0].decode("utf-8", "replace") if isinstance(ops[0], bytes) else str(ops[0])
        if ops.size != 1 or op not in OP_INPUTS:
            raise RequestError(f"input {OP!r} must be one of {list(OP_INPUTS)}, got {op!r}")
        required, optional = OP_INPUTS[op]
        missing = [n for n in required if n not in present]
        if missing:
            raise RequestError(
                f"op {op!r} needs input(s) {missing} (it uses {list(required)}"
                f"{' and optionally ' + str(list(optional)) if optional else ''})"
            )
        extra = sorted(set(present) - set(required) - set(optional))
        if extra:
            raise RequestError(
                f"op {op!r} does not use input(s) {extra}; it uses {list(required + optional)}"
            )
        # copies: the request's buffers are released when execute() returns
        inputs = {n: np.array(t.as_numpy(), copy=True) for n, t in present.items()}
        getattr(self, f"_check_{op}")(inputs)
        produced = OP_OUTPUTS[op]
        wanted = [n for n in request.requested_output_names() if n in produced]
        return _Job(op, inputs, wanted or list(OP_DEFAULT_OUTPUTS[op]), sender)

    def _check_encode(self, inputs: dict[str, np.ndarray], limit: int | None = None) -> None:
        image, hw = inputs[IMAGE], inputs[ORIG_HW]
        b = image.shape[0]
        limit = self._max_images if limit is None else limit
        if b < 1 or b > limit:
            raise RequestError(
                f"input {IMAGE!r} holds {b} images; send 1 to {limit} "
                f"per request" + ("" if limit == 1 else f" ({PARAM_MAX_IMAGES})")
            )
        if hw.shape != (b, 2):
            raise RequestError(
                f"input {ORIG_HW!r} has shape {list(hw.shape)}, expected [{b}, 2] "
                f"(H, W of each of the {b} images)"
            )
        for i, (h, w) in enumerate(hw.tolist()):
            if h < 1 or w < 1 or h * w > MAX_PIXELS:
                raise RequestError(
                    f"{ORIG_HW}[{i}] = ({h}, {w}) is not an image size: expected "
                    f"H, W >= 1 and H * W <= {MAX_PIXELS}"
                )
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise RequestError(f"input {IMAGE!r} contains NaN or inf")

    def _check_attached(self, inputs: dict[str, np.ndarray]) -> None:
        """decode/features may carry the image itself, for when the id is not held."""
        attached = (IMAGE in inputs, ORIG_HW in inputs)
        if attached == (False, False):
            return
        if not all(attached):
            raise RequestError(f"give both {IMAGE!r} and {ORIG_HW!r} or neither")
        self._check_encode(inputs, limit=1)

    def _check_decode(self, inputs: dict[str, np.ndarray]) -> None:
        inputs[IMAGE_ID] = self._one_id(inputs[IMAGE_ID])
        self._check_attached(inputs)
        coords, labels = inputs[POINT_COORDS], inputs[POINT_LABELS]
        n, p = coords.shape[:2]
        if n < 1 or p < 1:
            raise RequestError(
                f"input {POINT_COORDS!r} has shape {list(coords.shape)}; expected "
                "[N, P, 2] with N >= 1 prompts of P >= 1 points"
            )
        if labels.shape != (n, p):
            raise RequestError(
                f"input {POINT_LABELS!r} has shape {list(labels.shape)}, expected "
                f"[{n}, {p}] to match {POINT_COORDS} {list(coords.shape)}"
            )
        if not np.isfinite(coords).all():
            raise RequestError(f"input {POINT_COORDS!r} contains NaN or inf")
        if not np.isin(labels, (-1, 0, 1, 2, 3)).all():
            raise RequestError(f"input {POINT_LABELS!r} holds labels outside {{-1, 0, 1, 2, 3}}")
        has_mask = (MASK_INPUT in inputs, HAS_MASK_INPUT in inputs)
        if has_mask == (False, False):
            return
        if not all(has_mask):
            raise RequestError(f"give both {MASK_INPUT!r} and {HAS_MASK_INPUT!r} or neither")
        m = inputs[MASK_INPUT].shape[0]
        if m not in (1, n) or inputs[HAS_MASK_INPUT].shape != (m,):
            raise RequestError(
                f"{MASK_INPUT} {list(inputs[MASK_INPUT].shape)} / {HAS_MASK_INPUT} "
                f"{list(inputs[HAS_MASK_INPUT].shape)}: expected M = 1 or N = {n} masks and M flags"
            )
        if not np.isfinite(inputs[MASK_INPUT]).all():
            raise RequestError(f"input {MASK_INPUT!r} contains NaN or inf")

    def _check_features(self, inputs: dict[str, np.ndarray]) -> None:
        inputs[IMAGE_ID] = self._one_id(inputs[IMAGE_ID])
        self._check_attached(inputs)

    @staticmethod
    def _one_id(ids: np.ndarray) -> Any:
        if ids.size != 1:
            raise RequestError(f"input {IMAGE_ID!r} must hold exactly one id, got {ids.size}")
        return check_image_id(ids.reshape(-1)[0])

    # --- work (pool threads) ---------------------------------------------------------------
    def _run(self, job: _Job) -> None:
        try:
            try:
                outputs = getattr(self, f"_{job.op}")(job.inputs)
                response = pb_utils.InferenceResponse(
                    output_tensors=[self._tensor(n, outputs[n]) for n in job.outputs]
                )
            except RequestError as exc:
                response = self._error_response(exc)
            except Exception as exc:  # noqa: BLE001 - every request must get its one response
                pb_utils.Logger.log_error(f"{self._name}: op {job.op!r} failed: {exc!r}")
                response = self._error_response(
                    RequestError(f"{self._name}: op {job.op!r} failed: {exc}", "INTERNAL")
                )
            job.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
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
        ids = [image_id(images[i], hws[i]) for i in range(images.shape[0])]
        entries = self._obtain(ids, images, hws)
        return {
            IMAGE_ID: np.array([k.encode() for k in ids], dtype=np.object_),
            ORIG_HW: np.array([entries[k].orig_hw for k in ids], dtype=np.int32).reshape(-1, 2),
            FINGERPRINT: np.stack([entries[k].fingerprint for k in ids]).astype(np.int32),
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
            requested_output_names=[*FEATURE_NAMES, FINGERPRINT],
            inputs=[pb_utils.Tensor(IMAGE, np.ascontiguousarray(image, dtype=self._image_dtype))],
            preferred_memory=memory,
        )
        response = request.exec()
        if response.has_error():
            raise RequestError(
                f"{self._name}: {self._encoder} failed: {response.error().message()}", "INTERNAL"
            )
        tensors = {n: pb_utils.get_output_tensor_by_name(response, n) for n in FEATURE_NAMES}
        fp_tensor = pb_utils.get_output_tensor_by_name(response, FINGERPRINT)
        if fp_tensor is not None and fp_tensor.is_cpu():
            fingerprint = fp_tensor.as_numpy().reshape(-1).astype(np.int32)
            self._fingerprint = fingerprint
        elif self._fingerprint is not None:
            fingerprint = self._fingerprint
        else:
            raise RequestError(
                f"{self._name}: {self._encoder} returned no {FINGERPRINT}", "INTERNAL"
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
            attached = image_id(images[0], hws[0])
            if attached != key:
                raise RequestError(
                    f"{IMAGE_ID} {key!r} is not the id of the attached image ({attached!r})"
                )
            entry = self._obtain([key], images, hws)[key]
        if entry is None:
            raise RequestError(
                f"{self._name}: {UNKNOWN_IMAGE} {key!r}: it was never encoded here, was evicted "
                f"from the session store ({self._store.max_bytes} bytes), or the server "
                "restarted; send the image again (op 'encode', or attach it to this request)",
                "NOT_FOUND",
            )
        return entry

    def _decode(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        key = inputs[IMAGE_ID]
        entry = self._held(key, OP_DECODE, inputs)
        n = inputs[POINT_COORDS].shape[0]
        mask = inputs.get(MASK_INPUT, np.zeros((1, 1, LOW_RES_SIZE, LOW_RES_SIZE), np.float32))
        has_mask = inputs.get(HAS_MASK_INPUT, np.zeros((1,), np.float32))
        prompts = {
            POINT_COORDS: inputs[POINT_COORDS],
            POINT_LABELS: inputs[POINT_LABELS],
            MASK_INPUT: mask,
            HAS_MASK_INPUT: has_mask,
        }
        request = pb_utils.InferenceRequest(
            model_name=self._decoder,
            requested_output_names=[*DECODER_OUTPUTS, FINGERPRINT],
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
            for n_ in (*DECODER_OUTPUTS, FINGERPRINT)
        }
        missing = [k for k, v in out.items() if v is None]
        if missing:
            raise RequestError(f"{self._name}: {self._decoder} returned no {missing}", "INTERNAL")
        decoder_fp = out[FINGERPRINT].as_numpy().reshape(-1).astype(np.int32)
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
        return {
            **{name: out[name] for name in DECODER_OUTPUTS},
            FINGERPRINT: decoder_fp.reshape(1, -1),
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
            FINGERPRINT: entry.fingerprint.reshape(1, -1),
            IMAGE_ID: np.array([key.encode()], dtype=np.object_),
            ORIG_HW: np.array([entry.orig_hw], dtype=np.int32),
        }

    # --- errors ----------------------------------------------------------------------------
    def _error_response(self, exc: RequestError) -> Any:
        code = getattr(pb_utils.TritonError, exc.code, pb_utils.TritonError.INTERNAL)
        message = str(exc)
        if not message.startswith(self._name):
            message = f"{self._name}: {message}"
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

    def _send_error(self, sender: Any, exc: RequestError) -> None:
        sender.send(self._error_response(exc), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

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
