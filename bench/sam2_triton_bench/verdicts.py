"""The issue's targets, evaluated on one run's results: measured ratio, met or not, and why."""

from __future__ import annotations

from typing import Any


def _median(section: dict, name: str) -> float | None:
    v = (section.get("variants") or {}).get(name)
    return v.get("median") if v and v.get("n") else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _paired(section: dict, key: str, name: str) -> float | None:
    p = (section.get(key) or {}).get(name) if key else None
    return p.get("median") if p else None


def _ok(section: dict | None) -> bool:
    return bool(section) and section.get("status") == "ok"


def evaluate(results: dict) -> list[dict[str, Any]]:
    """One dict per target: id, what, target, measured (ratio), met (True/False/None), detail."""
    s = results.get("sections", {})
    out: list[dict[str, Any]] = []

    enc = s.get("encoder") or {}
    proto = enc.get("protocol", "grpc")
    served, ort = _median(enc, f"Triton {proto}"), _median(enc, "onnxruntime in-process")
    r = _ratio(served, ort) if _ok(enc) else None
    out.append(
        {
            "id": "encoder_overhead",
            "what": f"encoder through Triton ({proto}) / in-process "
            "onnxruntime (same ONNX, same preprocessing), median latency",
            "target": "<= 1.10",
            "limit": 1.10,
            "measured": r,
            "paired": _paired(enc, "paired_vs_onnxruntime", f"Triton {proto}"),
            "detail": (f"{served:.2f} s vs {ort:.2f} s" if r is not None else None),
        }
    )

    hit = _median(enc, f"Triton {proto}, response-cache hit")
    r = _ratio(hit, served) if _ok(enc) else None
    out.append(
        {
            "id": "cache_hit",
            "what": "encoder response-cache hit / miss (same client call, the "
            "same image sent again), median latency",
            "target": "<= 0.05",
            "limit": 0.05,
            "measured": r,
            "paired": (enc.get("paired_hit_vs_miss") or {}).get("median"),
            "detail": (f"{hit * 1e3:.0f} ms vs {served:.2f} s" if r is not None else None),
        }
    )

    click = s.get("click") or {}
    base = _median(click, "onnxruntime in-process (decoder + masks)")
    for shm, limit, tid in ((False, 1.5, "click"), (True, 1.15, "click_shm")):
        name = "Triton grpc" + (" + system shm" if shm else "")
        if _median(click, name) is None:
            name = "Triton http" + (" + system shm" if shm else "")
        v = _median(click, name)
        r = _ratio(v, base) if _ok(click) else None
        out.append(
            {
                "id": tid,
                "what": f"click latency, {name.removeprefix('Triton ')} / in-process "
                "onnxruntime decoder + the same mask postprocessing, median",
                "target": f"<= {limit}",
                "limit": limit,
                "measured": r,
                "paired": _paired(click, "paired_vs_inprocess", name),
                "detail": (f"{v * 1e3:.0f} ms vs {base * 1e3:.0f} ms" if r is not None else None),
            }
        )

    session = next((k for k in (click.get("variants") or {}) if "session" in k), None)
    if session:  # not one of the targets: how session mode fares against the click goals
        v = _median(click, session)
        r = _ratio(v, base) if _ok(click) else None
        out.append(
            {
                "id": "click_session",
                "what": f"click latency, {session.removeprefix('Triton ')} "
                "/ in-process onnxruntime decoder + masks, median (session mode; judged against the "
                "shared-memory goal)",
                "target": "<= 1.2",
                "limit": 1.2,
                "measured": r,
                "paired": _paired(click, "paired_vs_inprocess", session),
                "detail": (f"{v * 1e3:.0f} ms vs {base * 1e3:.0f} ms" if r is not None else None),
            }
        )

    head = click.get("headline") or {}
    lean = head.get("masks_only_bytes_total_pct_of_features")
    full = head.get("session_bytes_total_pct_of_features")
    if lean is not None:
        out.append(
            {
                "id": "click_session_bytes",
                "what": "bytes of a session click (request + response) / the same click sending "
                "the features, when the caller needs only the masks "
                "(`DecodeOptions(low_res_logits=False)`)",
                "target": "<= 0.01",
                "limit": 0.01,
                "measured": lean / 100.0,
                "paired": None,
                "detail": (
                    f"{lean:.2f} %; with SAM 2's low-res logits too: {full:.2f} %"
                    if full is not None
                    else f"{lean:.2f} %"
                ),
            }
        )

    by = (s.get("bytes") or {}).get("calls") or {}
    f32 = (by.get("decode, 1 click (features FP32)") or {}).get(proto) or {}
    f16 = (by.get("decode, 1 click (features FP16)") or {}).get(proto) or {}
    r = None
    if f32.get("sent") and f16.get("sent"):
        r = f16["sent"] / f32["sent"]
    out.append(
        {
            "id": "fp16_bytes",
            "what": f"bytes sent per decode ({proto}), FP16 / FP32 features",
            "target": "<= 0.52 (features exactly halve; the 256 KB mask_input and framing do not)",
            "limit": 0.52,
            "measured": r,
            "detail": (
                f"{f16['sent'] / 1e6:.2f} MB vs {f32['sent'] / 1e6:.2f} MB"
                if r is not None
                else None
            ),
        }
    )
    fp = s.get("fp16") or {}
    v = fp.get("min_iou") if _ok(fp) else None
    out.append(
        {
            "id": "fp16_iou",
            "what": "mask IoU, FP16 vs FP32 features (min over all masks)",
            "target": ">= 0.99",
            "limit": 0.99,
            "higher_is_better": True,
            "measured": v,
            "detail": (
                f"{fp['masks']} masks of {fp['prompts']} prompts, mean {fp['mean_iou']:.5f}"
                if v is not None
                else None
            ),
        }
    )

    dec = s.get("decoder") or {}
    n = str(max(dec.get("ns") or [0]))
    one = ((dec.get("one_call") or {}).get(n) or {}).get("median")
    many = ((dec.get("separate_calls") or {}).get(n) or {}).get("median")
    r = _ratio(one, many) if _ok(dec) and n == "64" else None
    out.append(
        {
            "id": "decoder_batch",
            "what": "64 prompts: one call / 64 single-prompt calls, median",
            "target": "< 1",
            "limit": 1.0,
            "strict": True,
            "measured": r,
            "paired": ((dec.get("paired_one_vs_separate") or {}).get(n) or {}).get("median"),
            "detail": (f"{one:.2f} s vs {many:.2f} s" if r is not None else None),
        }
    )

    for t in out:
        m, lim = t["measured"], t["limit"]
        if m is None:
            t["met"] = None
        elif t.get("higher_is_better"):
            t["met"] = m >= lim
        elif t.get("strict"):
            t["met"] = m < lim
        else:
            t["met"] = m <= lim
    return out
