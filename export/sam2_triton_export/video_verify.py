"""Verify the video graphs (``video_export``) against PyTorch and SAM 2, and the reference
helper the server ports (``memory_inputs``: ``video_engine.memory_selection``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .video_export import (
    IMAGE_ENCODER,
    INPUTS,
    MASK_DECODER,
    MASK_PROMPT,
    MEMORY_ATTENTION,
    MEMORY_ENCODER,
    OUTPUTS,
    SAM_SCENARIOS,
    _gen,
    mask_decoder_example,
    mask_prompt_example,
    memory_attention_example,
    memory_encoder_example,
)
from .video_modules import apply_rotary_real, rope_tables

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# SAM 2's memory bookkeeping (reference for the server: which memories, which positions)


def memory_inputs(
    model: torch.nn.Module,
    frame_idx: int,
    output_dict: dict,
    num_frames: int,
    track_in_reverse: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``MemoryAttention`` inputs (after ``vision_feat``) for a non-initial frame.

    Mirrors the selection in ``SAM2Base._prepare_memory_conditioned_features`` (eval mode):
    ``output_dict`` holds ``cond_frame_outputs``/``non_cond_frame_outputs`` dicts of frame ->
    ``{"maskmem_features": [B,64,64,64], "obj_ptr": [B,256]}``.
    """
    from sam2.modeling.sam2_utils import select_closest_cond_frames

    cond = output_dict["cond_frame_outputs"]
    non_cond = output_dict["non_cond_frame_outputs"]
    selected, unselected = select_closest_cond_frames(
        frame_idx, cond, model.max_cond_frames_in_attn
    )
    mems = [(0, out) for out in selected.values()]
    stride = model.memory_temporal_stride_for_eval
    for t_pos in range(1, model.num_maskmem):
        t_rel = model.num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx + t_rel if track_in_reverse else frame_idx - t_rel
        elif not track_in_reverse:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        out = non_cond.get(prev, unselected.get(prev))
        if out is not None:
            mems.append((t_pos, out))
    ptrs = []
    max_ptrs = min(num_frames, model.max_obj_ptrs_in_encoder)
    sign = -1 if track_in_reverse else 1
    for t, out in selected.items():
        if not model.only_obj_ptrs_in_the_past_for_eval or (
            t >= frame_idx if track_in_reverse else t <= frame_idx
        ):
            dist = (frame_idx - t) * sign
            ptrs.append((dist if model.use_signed_tpos_enc_to_obj_ptrs else abs(dist), out))
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
        if t < 0 or t >= num_frames:
            break
        out = non_cond.get(t, unselected.get(t))
        if out is not None:
            ptrs.append((t_diff, out))
    b = mems[0][1]["maskmem_features"].shape[0]
    return (
        torch.stack([out["maskmem_features"].float() for _, out in mems], dim=1),
        torch.tensor([t for t, _ in mems], dtype=torch.int64),
        torch.stack([out["obj_ptr"] for _, out in ptrs], dim=1)
        if ptrs
        else torch.zeros(b, 0, model.hidden_dim),
        torch.tensor([pos for pos, _ in ptrs], dtype=torch.int64) / max(max_ptrs - 1, 1),
    )


# ----------------------------------------------------------------------------------------------
# Checks


def _maxdiff(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def rope_check(
    model: torch.nn.Module,
    rope_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = apply_rotary_real,
    num_memories: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Max abs diff of ``rope_fn`` (real arithmetic) vs SAM 2's ``apply_rotary_enc`` (complex)
    for queries and for keys of ``num_memories`` frames (``repeat_freqs_k``)."""
    from sam2.modeling.position_encoding import apply_rotary_enc

    attn = model.memory_attention.layers[0].cross_attn_image
    freqs = attn.freqs_cis.cpu()
    cos, sin = rope_tables(freqs)
    n, half = freqs.shape
    g = _gen(seed)
    q = torch.randn(2, attn.num_heads, n, 2 * half, generator=g)
    k = torch.randn(2, attn.num_heads, num_memories * n, 2 * half, generator=g)
    q_ref, k_ref = apply_rotary_enc(q, k, freqs_cis=freqs, repeat_freqs_k=True)
    q_out = rope_fn(q, cos, sin)
    k_out = rope_fn(k.reshape(2, attn.num_heads, num_memories, n, 2 * half), cos, sin)
    return {
        "queries": _maxdiff(q_out, q_ref),
        "keys": _maxdiff(k_out.reshape(k_ref.shape), k_ref),
    }


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(sess, name: str, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    return sess.run(None, {n: a.numpy() for n, a in zip(INPUTS[name], args)})


def _torch(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*args)
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


def _compare(names: list[str], got: list[np.ndarray], ref: list) -> dict[str, float]:
    return {n: _maxdiff(g, r) for n, g, r in zip(names, got, ref)}


def _verify_encoder(model, encoder, sess, mem_attn) -> tuple[dict, dict]:
    """ONNX (batch of 2) vs the wrapper on one image; the wrapper vs SAM 2's own
    ``_prepare_backbone_features`` of the same forward (captured by a hook)."""
    from .verify import model_input, synthetic_image

    x = torch.from_numpy(model_input(synthetic_image(), "float32"))
    if encoder.image_dtype == "uint8":
        x = (x * 255).round().to(torch.uint8)
    ort_out = _run(sess, IMAGE_ENCODER, (torch.cat([x, x]),))
    captured = []
    hook = model.image_encoder.register_forward_hook(  # copy: forward_image edits the lists
        lambda _m, _i, out: captured.append(
            {k: list(v) if isinstance(v, list) else v for k, v in out.items()}
        )
    )
    try:
        ref = _torch(encoder, (x,))
    finally:
        hook.remove()
    backbone = captured[0]
    backbone["backbone_fpn"] = [  # forward_image applies conv_s0/conv_s1 after the encoder
        model.sam_mask_decoder.conv_s0(backbone["backbone_fpn"][0]),
        model.sam_mask_decoder.conv_s1(backbone["backbone_fpn"][1]),
        *backbone["backbone_fpn"][2:],
    ]
    _, feats, pos, _ = model._prepare_backbone_features(backbone)
    top = feats[-1].permute(1, 2, 0).reshape(1, -1, *ref[3].shape[-2:])
    onnx_vs_torch = {
        **_compare(OUTPUTS[IMAGE_ENCODER][:4], [o[:1] for o in ort_out[:4]], ref[:4]),
        "batch_consistency": max(_maxdiff(o[0], o[1]) for o in ort_out[:4]),
        "model_fingerprint": _maxdiff(ort_out[4][:1], ref[4]),
    }
    vs_sam2 = {
        "vision_feat": _maxdiff(ref[3], top),
        "image_embed": _maxdiff(ref[0], top + model.no_mem_embed.reshape(1, -1, 1, 1)),
        "high_res_feats_1": _maxdiff(ref[2], feats[1].permute(1, 2, 0).reshape(ref[2].shape)),
        "vision_pos_enc_vs_baked": _maxdiff(
            pos[-1].permute(1, 0, 2), mem_attn.curr_pos.expand(pos[-1].shape[1], -1, -1)
        ),
    }
    return onnx_vs_torch, vs_sam2


def _sam_memory_attention(model, vision_feat, output_dict, frame_idx, num_frames, reverse):
    b, c, h, w = vision_feat.shape
    pos = model.image_encoder.neck.position_encoding(vision_feat)
    with torch.no_grad():
        return model._prepare_memory_conditioned_features(
            frame_idx=frame_idx,
            is_init_cond_frame=False,
            current_vision_feats=[vision_feat.flatten(2).permute(2, 0, 1)],
            current_vision_pos_embeds=[pos.flatten(2).permute(2, 0, 1)],
            feat_sizes=[(h, w)],
            output_dict=output_dict,
            num_frames=num_frames,
            track_in_reverse=reverse,
        )


def memory_scenario(model, frames: dict[int, bool], b: int = 1, seed: int = 0) -> dict:
    """A SAM 2 ``output_dict`` with random memories: frames maps frame -> is conditioning."""
    g = _gen(seed)
    s = model.image_size // model.backbone_stride
    mem_pos = model.memory_encoder.position_encoding(torch.zeros(b, model.mem_dim, s, s))
    out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    for t, is_cond in sorted(frames.items()):
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        out[key][t] = {
            "maskmem_features": torch.randn(b, model.mem_dim, s, s, generator=g),
            "maskmem_pos_enc": [mem_pos],
            "obj_ptr": torch.randn(b, model.hidden_dim, generator=g),
        }
    return out


def memory_attention_vs_sam2(model, module, scenarios=SAM_SCENARIOS, sess=None) -> tuple:
    # returns (onnx_vs_torch, vs_sam2) like mask_decoder_vs_sam2
    """The wrapper fed by ``memory_inputs`` vs SAM 2's ``_prepare_memory_conditioned_features``
    on random memory banks; with ``sess`` also ONNX vs the wrapper on the same inputs."""
    vs_sam2, onnx_vs_torch = {}, {}
    for i, (frames, frame_idx, num_frames, reverse) in enumerate(scenarios):
        output_dict = memory_scenario(model, frames, seed=20 + i)
        vision = torch.randn(1, model.hidden_dim, 64, 64, generator=_gen(30 + i))
        args = (vision, *memory_inputs(model, frame_idx, output_dict, num_frames, reverse))
        ours = _torch(module, args)[0]
        ref = _sam_memory_attention(model, vision, output_dict, frame_idx, num_frames, reverse)
        key = f"pix_feat_with_mem.scenario{i}_m{args[1].shape[1]}_p{args[3].shape[1]}"
        vs_sam2[key] = _maxdiff(ours, ref)
        if sess is not None:
            onnx_vs_torch[key] = _maxdiff(_run(sess, MEMORY_ATTENTION, args)[0], ours)
    return onnx_vs_torch, vs_sam2


def _verify_memory_attention(model, module, sess, cases, scenarios) -> tuple[dict, dict]:
    onnx_vs_torch = {}
    for i, (m, p) in enumerate(cases):
        b = 2 if i == 0 else 1  # the first case also checks a batch of two objects
        args = memory_attention_example(model, b=b, m=m, p=p, seed=10 + i)
        diff = _maxdiff(_run(sess, MEMORY_ATTENTION, args)[0], _torch(module, args)[0])
        onnx_vs_torch[f"pix_feat_with_mem.b{b}_m{m}_p{p}"] = diff
    more, vs_sam2 = memory_attention_vs_sam2(model, module, scenarios, sess)
    return {**onnx_vs_torch, **more}, vs_sam2


def _sam_heads(model, args, multimask: bool):
    feat, h0, h1, coords, labels, mask, has_mask, _ = args
    outs = []
    for i in range(feat.shape[0]):  # SAM 2 takes the mask input for the whole batch or none
        with torch.no_grad():
            o = model._forward_sam_heads(
                backbone_features=feat[i : i + 1],
                point_inputs={"point_coords": coords[i : i + 1], "point_labels": labels[i : i + 1]},
                mask_inputs=mask[i : i + 1] if has_mask[i] > 0.5 else None,
                high_res_features=[h0[i : i + 1], h1[i : i + 1]],
                multimask_output=multimask,
            )
        outs.append((o[3], o[5], o[6]))  # low_res_masks, obj_ptr, object_score_logits
    return [torch.cat(t).numpy() for t in zip(*outs)]


DECODER_CASES = (  # (points, multimask flags)
    (1, (1.0, 1.0)),  # one click: multimask
    (3, (0.0, 0.0)),  # several clicks: single mask (dynamic stability)
    (0, (1.0, 1.0)),  # a tracked frame: no clicks, multimask
    (2, (1.0, 0.0)),  # mixed batch (graph only)
)


def mask_decoder_vs_sam2(model, module, sess=None) -> tuple[dict, dict, dict]:
    """The wrapper vs SAM 2's ``_forward_sam_heads`` (one object at a time) on
    ``DECODER_CASES``; with ``sess`` also ONNX vs the wrapper. Also counts present objects."""
    onnx_vs_torch, vs_sam2, present = {}, {}, {}
    for i, (p, flags) in enumerate(DECODER_CASES):
        args = mask_decoder_example(b=2, p=p, multimask=flags, seed=40 + i)
        ours = _torch(module, args)
        tag = f"p{p}_mm{''.join(str(int(f)) for f in flags)}"
        if sess is not None:
            onnx = _run(sess, MASK_DECODER, args)
            for n, d in _compare(OUTPUTS[MASK_DECODER], onnx, ours).items():
                onnx_vs_torch[f"{n}.{tag}"] = d
        present[tag] = int((ours[2] > 0).sum())
        if len(set(flags)) == 1:
            ref = _sam_heads(model, args, bool(flags[0]))
            for n, d in _compare(OUTPUTS[MASK_DECODER], ours, ref).items():
                vs_sam2[f"{n}.{tag}"] = d
    return onnx_vs_torch, vs_sam2, present


def _verify_memory_encoder(model, module, sess, mem_attn) -> tuple[dict, dict]:
    args = memory_encoder_example(b=2, seed=50)
    ours = _torch(module, args)[0]
    onnx_vs_torch = {"maskmem_features": _maxdiff(_run(sess, MEMORY_ENCODER, args)[0], ours)}
    vision, masks, scores, binarize = args
    refs, pos = [], None
    saved = model.binarize_mask_from_pts_for_mem_enc
    try:
        for i in range(vision.shape[0]):
            model.binarize_mask_from_pts_for_mem_enc = bool(binarize[i] > 0.5)
            high = F.interpolate(
                masks[i : i + 1], size=(model.image_size,) * 2, mode="bilinear", align_corners=False
            )
            with torch.no_grad():
                feats, pos = model._encode_new_memory(
                    current_vision_feats=[vision[i : i + 1].flatten(2).permute(2, 0, 1)],
                    feat_sizes=[tuple(vision.shape[-2:])],
                    pred_masks_high_res=high,
                    object_score_logits=scores[i : i + 1],
                    is_mask_from_pts=True,
                )
            refs.append(feats)
    finally:
        model.binarize_mask_from_pts_for_mem_enc = saved
    vs_sam2 = {
        "maskmem_features": _maxdiff(ours, torch.cat(refs)),
        "maskmem_pos_enc_vs_baked": _maxdiff(
            pos[-1].flatten(2).transpose(1, 2), mem_attn.maskmem_pos
        ),
    }
    return onnx_vs_torch, vs_sam2


def _verify_mask_prompt(model, module, sess) -> tuple[dict, dict]:
    """ONNX vs the wrapper (a batch of two masks, the second empty), and the wrapper vs SAM 2's
    own ``mask_downsample`` and ``no_obj_ptr`` (what ``_use_mask_as_output`` uses)."""
    args = mask_prompt_example(b=2, seed=60)
    ours = _torch(module, args)
    onnx = _run(sess, MASK_PROMPT, args)
    with torch.no_grad():
        ref_down = model.mask_downsample(args[0].float())
    ref_ptr = getattr(model, "no_obj_ptr", None)
    ref_ptr = torch.zeros(model.hidden_dim) if ref_ptr is None else ref_ptr.detach().reshape(-1)
    vs_sam2 = _compare(OUTPUTS[MASK_PROMPT], ours, [ref_down, ref_ptr])
    return _compare(OUTPUTS[MASK_PROMPT], onnx, ours), vs_sam2


def verify_modules(
    model, modules: dict, paths: dict, memory_cases: tuple, sam_scenarios: tuple
) -> dict:
    """Every check of the exported graphs (``paths``, by name) and their wrappers (``modules``):
    the report's ``rope``, ``onnx_vs_torch``, ``vs_sam2``, ``objects_present`` and ``seconds``."""
    seconds: dict = {}
    sessions = {name: _session(p) for name, p in paths.items()}
    mem_attn = modules[MEMORY_ATTENTION]

    def timed(key, fn):
        start = time.perf_counter()
        result = fn()
        seconds[f"verify.{key}"] = round(time.perf_counter() - start, 1)
        logger.info("verified %s in %.1f s", key, time.perf_counter() - start)
        return result

    rope = timed("rope", lambda: rope_check(model))
    enc = timed(
        IMAGE_ENCODER,
        lambda: _verify_encoder(model, modules[IMAGE_ENCODER], sessions[IMAGE_ENCODER], mem_attn),
    )
    att = timed(
        MEMORY_ATTENTION,
        lambda: _verify_memory_attention(
            model, mem_attn, sessions[MEMORY_ATTENTION], memory_cases, sam_scenarios
        ),
    )
    dec = timed(
        MASK_DECODER,
        lambda: mask_decoder_vs_sam2(model, modules[MASK_DECODER], sessions[MASK_DECODER]),
    )
    menc = timed(
        MEMORY_ENCODER,
        lambda: _verify_memory_encoder(
            model, modules[MEMORY_ENCODER], sessions[MEMORY_ENCODER], mem_attn
        ),
    )
    mprompt = timed(
        MASK_PROMPT,
        lambda: _verify_mask_prompt(model, modules[MASK_PROMPT], sessions[MASK_PROMPT]),
    )
    sessions.clear()  # release the onnxruntime sessions (before the caller installs)
    results = {"rope": rope, "onnx_vs_torch": {}, "vs_sam2": {}, "objects_present": dec[2]}
    for name, (onnx_vs_torch, vs_sam2, *_) in (
        (IMAGE_ENCODER, enc),
        (MEMORY_ATTENTION, att),
        (MASK_DECODER, dec),
        (MEMORY_ENCODER, menc),
        (MASK_PROMPT, mprompt),
    ):
        results["onnx_vs_torch"][name] = onnx_vs_torch
        results["vs_sam2"][name] = vs_sam2
    return {**results, "seconds": seconds}


def failures(report: dict) -> list[str]:
    """Every gate the report fails: max abs diffs over ``tolerance``, RoPE over its own."""
    out = []
    tol = report["tolerance"]
    for kind in ("onnx_vs_torch", "vs_sam2"):
        for name, diffs in report[kind].items():
            for key, value in diffs.items():
                if not value <= tol:  # also catches nan
                    out.append(f"{kind} {name}.{key}: {value:.3g} > {tol:g}")
    for key, value in report["rope"].items():
        if not value <= report["rope_tolerance"]:
            out.append(f"rope {key}: real rewrite differs from SAM 2 by {value:.3g}")
    return out
