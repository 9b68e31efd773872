"""The click sections of ``sam2-triton bench``.

``click``: one new click on an encoded image, every way of answering it side by side in
interleaved rounds: in-process onnxruntime (decoder + the same mask steps), the PyTorch
predictor, Triton over gRPC/HTTP sending the features, the same with the features in system
shared memory, FP16 features, and a session click (features kept on the server). Then, in the
same run, the bytes one click of each served path puts on the wire (request + response, via a
counting relay, after the timed rounds), and the headline figures: the session click's bytes as
a % of the features click's, and the shared-memory click's time / the in-process time.

``bytes``: bytes on the wire per call for encode, decode (1 and 64 clicks), FP16, shm, session.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from sam2_triton import spec
from sam2_triton.types import DecodeOptions, Prompt

from . import targets
from .plan import grid_prompts, iou, prompt_at
from .stats import paired_ratio
from .wirebytes import CountingProxy

if TYPE_CHECKING:
    from .runner import Bench

INPROCESS = "onnxruntime in-process (decoder + masks)"


def click_variants(
    self: Bench,
    prompt: Prompt,
) -> tuple[dict[str, Callable[[], Any]], dict, dict[str, tuple[str, dict]]]:
    """Every way of answering one click; the masks each gives (for an agreement check); and,
    for the served ones, ``(protocol, client options)`` (to count their bytes)."""
    variants: dict[str, Callable[[], Any]] = {}
    makers: dict[str, Callable[[], np.ndarray]] = {}
    served: dict[str, tuple[str, dict]] = {}
    emb = self.emb32
    point = tuple(np.asarray(prompt.point_coords, dtype=np.float64)[0])
    if self.ort is not None:

        def ort_click() -> dict[str, float]:
            start = time.perf_counter()
            _, run_s = self.ort.decode(emb, prompt)
            return {
                INPROCESS: time.perf_counter() - start,
                "onnxruntime in-process, decoder run only": run_s,
            }

        variants[INPROCESS] = ort_click
        makers[INPROCESS] = lambda: self.ort.decode(emb, prompt)[0].masks
    sam2 = self.load_sam2()
    if sam2 is not None:
        sam2.set_image(self.images.base)
        variants["SAM2ImagePredictor.predict (PyTorch)"] = lambda: sam2.predict(point)
        makers["SAM2ImagePredictor.predict (PyTorch)"] = lambda: sam2.predict(point)
    for proto in ("grpc", "http"):
        if not self.ep.url(proto):
            continue
        shm_options = (False, True) if self.ep.same_host else (False,)
        for shm in shm_options:
            c = self.client(proto, shm=shm)
            name = f"Triton {proto}" + (" + system shm" if shm else "")
            variants[name] = lambda c=c: c.decode(emb, prompt)
            makers[name] = lambda c=c: c.decode(emb, prompt).masks
            served[name] = (proto, {"shm": shm})
    if self.models.encoder_fp16 and self.emb16 is None:
        self.emb16 = self.client(self.primary, fp16=True).encode(self.images.base)
    if self.emb16 is not None:
        c16 = self.client(self.primary, fp16=True)
        name = f"Triton {self.primary}, FP16 features"
        variants[name] = lambda: c16.decode(self.emb16, prompt)
        makers[name] = lambda: c16.decode(self.emb16, prompt).masks
        served[name] = (self.primary, {"fp16": True})
    for name, fn, options in session_variants(self, prompt):
        variants[name] = fn
        makers[name] = lambda fn=fn: fn().masks
        served[name] = (self.primary, options)
    return variants, makers, served


SESSION = "session (features kept on the server)"
MASKS_ONLY = "session, masks only (low_res_logits=False)"
_LEAN = DecodeOptions(low_res_logits=False)


def session_variants(self: Bench, prompt: Prompt) -> list[tuple[str, Callable, dict]]:
    """Clicks through ``sam2_session`` (features kept on the server): as SAM 2 answers them,
    and without the low-res logits (the server answers the masks); empty without a session
    model."""
    if not self.models.session:
        return []
    try:
        c = self.client(self.primary, session=True)
        if self.remote is None:
            self.remote = c.encode(self.images.base)
    except Exception as exc:  # noqa: BLE001 - optional variant
        self.info["session_error"] = f"{type(exc).__name__}: {exc}"
        self.log(f"click: the session model is not usable: {self.info['session_error']}")
        return []
    return [
        (f"Triton {self.primary}, {SESSION}", lambda: c.decode(self.remote, prompt),
         {"session": True}),
        (f"Triton {self.primary}, {MASKS_ONLY}",
         lambda: c.decode(self.remote, prompt, options=_LEAN),
         {"session": True, "masks_only": True}),
    ]  # fmt: skip


def _decode(self: Bench, client, options: dict, prompt: Prompt):
    """One click of a served variant (``options`` as in ``click_variants``' ``served``)."""
    emb = _embedding_for(self, options)
    if options.get("masks_only"):
        return client.decode(emb, prompt, options=_LEAN)
    return client.decode(emb, prompt)


def _embedding_for(self: Bench, options: dict):
    if options.get("session"):
        return self.remote
    return self.emb16 if options.get("fp16") else self.emb32


def count_bytes(
    self: Bench, proto: str, cases: list[tuple[str, dict, Callable]], repeats: int = 1
) -> dict[str, dict]:
    """``{case: {"sent", "received", "total"}}``: bytes on the wire of one call of each case,
    through a counting relay to the server (the median of ``repeats`` calls, after one
    uncounted call for the connection, model metadata and any session upload)."""
    url = self.ep.url(proto)
    out: dict[str, dict] = {}
    if not url:
        return out
    host, port = targets._split(url)
    with CountingProxy(host.strip("[]"), port) as proxy:
        for name, options, call in cases:
            try:
                kinds = {k: v for k, v in options.items() if k != "masks_only"}
                c = self.client(proto, url=proxy.address, **kinds)
                call(c)
                sent, received = [], []
                for _ in range(repeats):
                    time.sleep(0.05)
                    proxy.reset()
                    call(c)
                    time.sleep(0.2)  # let the relay finish counting
                    s, r = proxy.counts()
                    sent.append(s)
                    received.append(r)
                s, r = int(np.median(sent)), int(np.median(received))
                out[name] = {"sent": s, "received": r, "total": s + r}
            except Exception as exc:  # noqa: BLE001 - report and go on
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        for key in [k for k in self._clients if k[-1] == proxy.address]:
            self._clients.pop(key).close()
    return out


def _headline(
    self: Bench, samples: dict[str, list[float]], per_click: dict[str, dict], proto: str
) -> dict[str, Any]:
    """The click figures the sessions and shared-memory work is judged by, from this run."""
    names = {
        "in_process": INPROCESS,
        "features": f"Triton {proto}",
        "shm": f"Triton {proto} + system shm",
        "session": f"Triton {proto}, {SESSION}",
        "masks_only": f"Triton {proto}, {MASKS_ONLY}",
    }
    out: dict[str, Any] = {"protocol": proto, "variants": names}

    def med(name: str) -> float | None:
        return float(np.median(samples[name])) if samples.get(name) else None

    base = med(INPROCESS)
    for key in ("features", "shm", "session", "masks_only"):
        v = med(names[key])
        out[f"{key}_vs_in_process"] = v / base if v is not None and base else None
        p = (
            paired_ratio(samples[names[key]], samples[INPROCESS])
            if (v is not None and base)
            else None
        )
        out[f"{key}_vs_in_process_paired"] = p["median"] if p else None
    feat = per_click.get(names["features"]) or {}
    for key in ("session", "masks_only", "shm"):
        b = per_click.get(names[key]) or {}
        for part in ("total", "sent", "received"):
            ok = b.get(part) is not None and feat.get(part)
            out[f"{key}_bytes_{part}_pct_of_features"] = (
                100.0 * b[part] / feat[part] if ok else None
            )
    return out


def section_click(self: Bench) -> dict:
    """Click latency: features already encoded, one new click -> 3 masks at image size; then
    the bytes one click of each served variant puts on the wire, and the headline ratios."""
    prompt = prompt_at(self.images.hw, 0.35, 0.6)
    variants, makers, served = click_variants(self, prompt)
    agreement = {}
    reference = makers.get(INPROCESS)
    if reference is not None:
        ref = np.asarray(reference(), bool)
        for name, make in makers.items():
            try:
                masks = np.asarray(make(), bool)
                agreement[name] = min(iou(a, b) for a, b in zip(masks, ref))
            except Exception as exc:  # noqa: BLE001 - the variant is dropped in warm-up
                agreement[name] = f"{type(exc).__name__}: {exc}"
    rounds = self._rounds("click", self.plan.click_rounds, 10)
    samples = self.run_rounds("click", variants, rounds)
    out = {
        "variants": self._summaries(samples),
        "samples": samples,
        "rounds": rounds.done,
        "stopped_early": rounds.stopped_early,
        "failed": self._failed,
        "image_hw": list(self.images.hw),
        "multimask_output": True,
        "masks_vs_onnxruntime_min_iou": agreement,
    }
    if INPROCESS in samples:
        out["paired_vs_inprocess"] = {
            k: paired_ratio(v, samples[INPROCESS])
            for k, v in samples.items()
            if k.startswith("Triton")
        }
    # bytes per click of the same clicks (after the timed rounds: the relay times nothing)
    per_click: dict[str, dict] = {}
    for proto in ("grpc", "http"):
        cases = [
            (name, options, lambda c, o=options: _decode(self, c, o, prompt))
            for name, (p, options) in served.items()
            if p == proto and name in samples
        ]
        per_click.update(count_bytes(self, proto, cases, repeats=3))
    out["bytes_per_click"] = per_click
    out["headline"] = head = _headline(self, samples, per_click, self.primary)
    pct, shm = head["session_bytes_total_pct_of_features"], head["shm_vs_in_process"]
    lean = head["masks_only_bytes_total_pct_of_features"]
    self.log(
        "click: session bytes (request + response) = "
        + ("not measured" if pct is None else f"{pct:.2f} % of the features click's")
        + ("" if lean is None else f" ({lean:.2f} % with masks only)")
        + "; shm click / in-process decoder + masks = "
        + (
            "not measured"
            if shm is None
            else f"{shm:.2f}x (paired {head['shm_vs_in_process_paired']:.2f}x)"
        )
    )
    return out


def section_bytes(self: Bench) -> dict:
    """Bytes on the wire per call (TCP payload both ways, framing included), via a relay."""
    out: dict[str, Any] = {}
    prompt = prompt_at(self.images.hw, 0.35, 0.6)
    prompts64 = grid_prompts(self.images.hw, 64)
    for proto in ("grpc", "http"):
        cases: list[tuple[str, dict, Callable]] = [
            ("encode (one image)", {}, lambda c: c.encode(self.images.base)),
            ("decode, 1 click (features FP32)", {}, lambda c: c.decode(self.emb32, prompt)),
        ]
        if not self.plan.quick:
            cases.append(
                (
                    "decode, 64 clicks in one call (features FP32)",
                    {},
                    lambda c: c.decode(self.emb32, prompts64, multimask_output=False),
                )
            )
        if self.ep.same_host:
            cases.append(
                (
                    "decode, 1 click, features in system shm",
                    {"shm": True},
                    lambda c: c.decode(self.emb32, prompt),
                )
            )
        if self.emb16 is not None:
            cases.append(
                (
                    "decode, 1 click (features FP16)",
                    {"fp16": True},
                    lambda c: c.decode(self.emb16, prompt),
                )
            )
        if self.remote is not None:
            cases.append(
                (
                    "decode, 1 click, session (features kept on the server)",
                    {"session": True},
                    lambda c: c.decode(self.remote, prompt),
                )
            )
        for name, counts in count_bytes(self, proto, cases).items():
            if "total" in counts:
                counts = {"sent": counts["sent"], "received": counts["received"]}
            out.setdefault(name, {})[proto] = counts
    f32 = 4 * sum(math.prod(s) for s in spec.FEATURE_SHAPES.values())
    payload = {
        "encode": {"sent": 4 * 3 * spec.IMAGE_SIZE**2, "received": f32 + 8},
        "decode_fp32_1_click": {
            "sent": f32 + 4 * spec.LOW_RES_SIZE**2 + 4 * 2 * 2 + 2 * 4 + 4,
            "received": 4 * (4 * spec.LOW_RES_SIZE**2 + 4 + 1) + 8,
        },
    }
    return {"calls": out, "tensor_payload": payload}
