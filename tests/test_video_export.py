"""Video modules: export the four graphs of the tiny model (seed 0) and verify them one by one.

One export (session fixture) is checked against PyTorch and SAM 2; cheaper tests prove that the
checks catch wrong modules (a RoPE sign error, a wrong temporal index, a wrong pointer token).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_triton_export import video_export as ve
from sam2_triton_export import video_modules as vm
from sam2_triton_export import video_verify as vv

SEED = 0
# Fewer onnxruntime cases than the CLI default keep the test near 2 minutes on 2 cores:
# memory lengths 1 (with no pointers, batch 2), 7 (16 pointers) and, compared with SAM 2's own
# _prepare_memory_conditioned_features, 4 (two conditioning frames, reverse tracking).
MEMORY_CASES = ((1, 0), (7, 16))
SAM_SCENARIOS = ve.SAM_SCENARIOS[1:]


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
def model():
    from sam2_triton_export import checkpoints

    m = checkpoints.build_model("tiny", seed=SEED)
    _split_object_scores(m)
    return m


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("video") / "model_repository"
    report = ve.export_video_modules(
        model, out, memory_cases=MEMORY_CASES, sam_scenarios=SAM_SCENARIOS
    )
    return out, report


def test_export_passes_module_by_module(exported):
    out, report = exported
    assert report["passed"], report["failures"]
    assert set(report["onnx_vs_torch"]) == {
        ve.IMAGE_ENCODER,
        ve.MEMORY_ATTENTION,
        ve.MASK_DECODER,
        ve.MEMORY_ENCODER,
    }
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
    # both branches of the no-object handling were exercised
    present = sum(report["objects_present"].values())
    assert 0 < present < 2 * len(vv.DECODER_CASES), report["objects_present"]


def test_installed_layout_and_contract(exported):
    import onnx

    out, report = exported
    assert (out / ve.REPORT_FILE).is_file()
    assert not list(out.parent.glob(f".{out.name}.staging-*"))
    dims = {}
    for name in (ve.IMAGE_ENCODER, ve.MEMORY_ATTENTION, ve.MASK_DECODER, ve.MEMORY_ENCODER):
        path = out / name / "1" / ve.MODEL_FILE
        assert path.is_file()
        graph = onnx.load(str(path), load_external_data=False).graph
        assert [i.name for i in graph.input] == ve.INPUTS[name]
        assert [o.name for o in graph.output] == ve.OUTPUTS[name]
        for v in graph.input:
            dims[(name, v.name)] = [
                d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim
            ]
    assert dims[(ve.MEMORY_ATTENTION, "maskmem_features")] == ["batch", "num_memories", 64, 64, 64]
    assert dims[(ve.MEMORY_ATTENTION, "obj_ptrs")] == ["batch", "num_obj_ptrs", 256]
    assert dims[(ve.MEMORY_ATTENTION, "maskmem_tpos")] == ["num_memories"]
    assert dims[(ve.MASK_DECODER, "point_coords")] == ["batch", "num_points", 2]
    assert dims[(ve.MEMORY_ENCODER, "pred_masks")] == ["batch", 1, 256, 256]


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
    assert np.array_equal(vv.round_to_bfloat16(x.numpy()), ref)
