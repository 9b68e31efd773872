"""Video modules: the five graphs of the tiny model (seed 0) exported and verified one by one.

The graphs come from the session's one ``sam2-triton export --video`` (``video_repo`` in
conftest.py, the smaller ``--video-quick-verify`` case set); its report is checked here. Cheaper
tests prove that the checks catch wrong modules (a RoPE sign error, a wrong temporal index, a
wrong pointer token), that both no-object branches of the decoder match (a decoder-only export of
weights whose object scores straddle 0), and that the mask-prompt graph gives SAM 2's
``_use_mask_as_output`` pointer.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_triton import video_spec
from sam2_triton.video_transforms import round_to_bfloat16
from sam2_triton_export import video_export as ve
from sam2_triton_export import video_modules as vm
from sam2_triton_export import video_verify as vv

SEED = 0
# The case set of the session's export (--video-quick-verify): memory lengths 1 (no pointers,
# batch 2), 7 (16 pointers) and, compared with SAM 2's own _prepare_memory_conditioned_features,
# 4 (two conditioning frames, reverse tracking).
MEMORY_CASES = ve.QUICK_MEMORY_CASES
SAM_SCENARIOS = ve.QUICK_SAM_SCENARIOS


def _split_object_scores(model) -> None:
    """Shift the object-score bias so that the decoder cases see both present and absent
    objects (random weights give all of them the same sign), with the widest margin."""
    module = vm.VideoMaskDecoder(model).eval()
    scores = []
    with torch.no_grad():
        for i, (p, flags) in enumerate(vv.DECODER_CASES):
            args = ve.mask_decoder_example(b=2, p=p, multimask=flags, seed=40 + i)
            scores += module(*args)[2].ravel().tolist()
    s = np.sort(scores)
    gaps = np.diff(s)
    k = int(np.argmax(gaps))
    assert gaps[k] > 1e-3, f"object scores too close to split: {s}"
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias -= (s[k] + s[k + 1]) / 2


@pytest.fixture(scope="module")
def plain_model():
    """The weights the session's export used (tiny, seed 0)."""
    from sam2_triton_export import checkpoints

    return checkpoints.build_model("tiny", seed=SEED)


@pytest.fixture(scope="module")
def model():
    """Seed-0 weights with the object-score bias split (both no-object branches exercised)."""
    from sam2_triton_export import checkpoints

    m = checkpoints.build_model("tiny", seed=SEED)
    _split_object_scores(m)
    return m


@pytest.fixture(scope="module")
def exported(video_repo: Path) -> tuple[Path, dict]:
    return video_repo, json.loads((video_repo / ve.REPORT_FILE).read_text())


def test_export_passes_module_by_module(exported):
    out, report = exported
    assert report["passed"], report["failures"]
    assert set(report["onnx_vs_torch"]) == set(video_spec.VIDEO_GRAPHS)
    assert report["memory_cases"] == [list(c) for c in MEMORY_CASES]
    for kind in ("onnx_vs_torch", "vs_sam2"):
        for name, diffs in report[kind].items():
            assert diffs, (kind, name)
            for key, value in diffs.items():
                assert 0 <= value <= ve.TOLERANCE, (kind, name, key, value)
    keys = report["onnx_vs_torch"][ve.MEMORY_ATTENTION]
    lengths = {re.search(r"_m(\d+)_p", k).group(1) for k in keys}
    assert lengths == {"1", "4", "7"}
    assert report["rope"] == {"queries": 0.0, "keys": 0.0} or max(report["rope"].values()) <= 1e-6
    # the constant positional encodings baked into memory attention are SAM 2's exactly
    assert report["vs_sam2"][ve.IMAGE_ENCODER]["vision_pos_enc_vs_baked"] == 0.0
    assert report["vs_sam2"][ve.MEMORY_ENCODER]["maskmem_pos_enc_vs_baked"] == 0.0
    # the mask prompt graph: SAM 2's own conv and constant
    assert report["vs_sam2"][ve.MASK_PROMPT] == {"mask_downsampled": 0.0, "no_obj_ptr": 0.0}
    assert report["onnx_vs_torch"][ve.MASK_PROMPT]["no_obj_ptr"] == 0.0


def test_decoder_no_object_branches_match(model, tmp_path):
    """Both branches of the no-object handling (masks -1024, pointer no_obj_ptr), ONNX vs the
    wrapper vs SAM 2: a decoder-only export of weights whose object scores straddle 0."""
    module = vm.VideoMaskDecoder(model).eval()
    path = tmp_path / ve.MODEL_FILE
    with torch.no_grad():
        ve._export(module, ve.export_example(model, ve.MASK_DECODER), path, ve.MASK_DECODER)
    onnx_vs_torch, vs_sam2, present = vv.mask_decoder_vs_sam2(model, module, vv._session(path))
    assert 0 < sum(present.values()) < 2 * len(vv.DECODER_CASES), present
    for diffs in (onnx_vs_torch, vs_sam2):
        assert diffs and max(diffs.values()) <= ve.TOLERANCE, diffs


def test_installed_layout_and_contract(exported):
    import onnx

    from sam2_triton_serve import repository

    out, report = exported
    assert (out / ve.REPORT_FILE).is_file()
    assert not list(out.parent.glob(f".{out.name}.staging-*"))
    dims, dtypes = {}, {}
    for name in video_spec.VIDEO_GRAPHS:
        path = out / name / "1" / ve.MODEL_FILE
        assert path.is_file()
        graph = onnx.load(str(path), load_external_data=False).graph
        assert [i.name for i in graph.input] == ve.INPUTS[name]
        assert [o.name for o in graph.output] == ve.OUTPUTS[name]
        assert ve.INPUTS[name] == [t.name for t in repository.video_graph_inputs(name)]
        for v in (*graph.input, *graph.output):
            t = v.type.tensor_type
            dims[(name, v.name)] = [d.dim_param or d.dim_value for d in t.shape.dim]
            dtypes[(name, v.name)] = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
    assert dims[(ve.MEMORY_ATTENTION, "maskmem_features")] == ["batch", "num_memories", 64, 64, 64]
    assert dims[(ve.MEMORY_ATTENTION, "obj_ptrs")] == ["batch", "num_obj_ptrs", 256]
    assert dims[(ve.MEMORY_ATTENTION, "maskmem_tpos")] == ["num_memories"]
    assert dims[(ve.MASK_DECODER, "point_coords")] == ["batch", "num_points", 2]
    assert dims[(ve.MEMORY_ENCODER, "pred_masks")] == ["batch", 1, 256, 256]
    assert dims[(ve.MASK_PROMPT, video_spec.MASK_1024)] == ["batch", 1, 1024, 1024]
    assert dims[(ve.MASK_PROMPT, video_spec.MASK_DOWNSAMPLED)] == ["batch", 1, 256, 256]
    assert dims[(ve.MASK_PROMPT, video_spec.NO_OBJ_PTR)] == [256]
    # frames travel as uint8 RGB (video_spec.IMAGE)
    assert dtypes[(ve.IMAGE_ENCODER, video_spec.IMAGE)] == "uint8"
    assert report["image_dtype"] == "uint8"


def test_mask_prompt_gives_sam2_mask_pointer(video_repo: Path, plain_model):
    """add_new_mask through the exported graphs: mask prompt -> mask decoder (vision_feat, no
    clicks, mask_input = mask_downsampled, single mask), then the server's mix with no_obj_ptr
    for an empty mask == SAM 2's ``_use_mask_as_output`` pointer (the second mask is empty)."""
    model = plain_model
    (mask,) = ve.mask_prompt_example(b=2, seed=7)
    g = torch.Generator().manual_seed(8)
    vision = torch.randn(2, 256, 64, 64, generator=g)
    h0, h1 = torch.randn(2, 32, 256, 256, generator=g), torch.randn(2, 64, 128, 128, generator=g)
    with torch.no_grad():
        ref = model._use_mask_as_output(vision, [h0, h1], mask)[5].numpy()
    prompt = vv._session(video_repo / ve.MASK_PROMPT / "1" / ve.MODEL_FILE)
    down, no_obj_ptr = prompt.run(None, {video_spec.MASK_1024: mask.numpy()})
    decoder = vv._session(video_repo / ve.MASK_DECODER / "1" / ve.MODEL_FILE)
    feeds = dict(
        zip(
            ve.INPUTS[ve.MASK_DECODER],
            [
                vision.numpy(),
                h0.numpy(),
                h1.numpy(),
                np.zeros((2, 1, 2), np.float32),  # no clicks: SAM 2's (0, 0) labelled -1
                -np.ones((2, 1), np.int32),
                down,
                np.ones(2, np.float32),
                np.zeros(2, np.float32),
            ],
        )
    )
    _, obj_ptr, _ = decoder.run(None, feeds)
    present = mask.flatten(1).amax(1).numpy()[:, None] > 0
    ptr = np.where(present, obj_ptr, no_obj_ptr[None])  # fixed_no_obj_ptr: lam * ptr + (1-lam) * no
    assert present.ravel().tolist() == [True, False]
    assert np.max(np.abs(ptr - ref)) <= ve.TOLERANCE


def test_rope_rewrite_is_exact_and_check_catches_sign_error(model):
    assert max(vv.rope_check(model).values()) <= ve.ROPE_TOLERANCE

    def wrong_sign(x, cos, sin):  # conjugate rotation: (a+ib)(c-id)
        return vm.apply_rotary_real(x, cos, -sin)

    def swapped_pairs(x, cos, sin):  # (im, re) order of the interleaved pairs
        return vm.apply_rotary_real(x.flip(-1), cos, sin).flip(-1)

    for bad in (wrong_sign, swapped_pairs):
        diffs = vv.rope_check(model, rope_fn=bad)
        assert min(diffs.values()) > 0.1, (bad.__name__, diffs)
        report = {"tolerance": 1, "rope_tolerance": ve.ROPE_TOLERANCE, "rope": diffs}
        assert vv.failures({**report, "onnx_vs_torch": {}, "vs_sam2": {}})


def test_memory_attention_check_catches_wrong_temporal_index(model):
    # the correct module passes the same comparison in the export test (scenario with M=4)
    module = vm.MemoryAttention(model).eval()
    scenario = (({0: True, 1: False}, 2, 10, False),)  # M=2 memories, t_pos 0 and 6
    # index the temporal encoding by t_pos instead of num_maskmem - 1 - t_pos
    enc = module.maskmem_tpos_enc
    module.maskmem_tpos_enc = torch.nn.Parameter(enc.flip(0), requires_grad=False)
    bad = vv.memory_attention_vs_sam2(model, module, scenario)[1]
    assert max(bad.values()) > ve.TOLERANCE, bad  # random tpos_enc (std 0.02): ~1e-3


def test_mask_decoder_check_catches_wrong_pointer_token(model):
    # the correct module passes the same comparison in the export test
    module = vm.VideoMaskDecoder(model).eval()
    # take the pointer from token 0 even with multimask output (SAM 2.1 uses the best token);
    # on a copy, so that SAM 2's reference keeps the right setting
    wrong = copy.copy(model.sam_mask_decoder)
    wrong.use_multimask_token_for_obj_ptr = False
    module.mask_decoder = wrong
    bad = vv.mask_decoder_vs_sam2(model, module)[1]
    assert max(v for k, v in bad.items() if k.startswith("obj_ptr.p1_mm11")) > ve.TOLERANCE, bad


def test_memory_inputs_positions(model):
    """The bookkeeping reference: which memories and pointers a frame attends to."""
    frames = {0: True, 3: False, 4: False, 5: False}
    output_dict = vv.memory_scenario(model, frames)
    _, tpos, ptrs, ptr_pos = vv.memory_inputs(model, 6, output_dict, num_frames=8)
    assert tpos.tolist() == [0, 4, 5, 6]  # cond frame, then frames 3, 4, 5 (t_rel 3, 2, 1)
    assert ptrs.shape == (1, 4, 256)
    assert torch.equal(ptr_pos, torch.tensor([6, 1, 2, 3]) / 7)  # min(8, 16) - 1


def test_round_to_bfloat16_matches_torch():
    x = torch.randn(10000) * 10
    x[:4] = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 0.0])  # ties
    ref = x.to(torch.bfloat16).float().numpy()
    assert np.array_equal(round_to_bfloat16(x.numpy()), ref)
