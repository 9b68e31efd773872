"""Grounding DINO export (``sam2-triton export --detector``) and sam2_text's numpy steps.

The detector is the seeded ``test`` architecture of ``detector_random`` (``detector_dir``,
processor resize 320/480, so an export takes seconds). Compared with transformers 5.24: the
ONNX-friendly phrase masks, both exported canvases (onnxruntime vs the model), the image
preprocessing, the tokenizer, the post-processing; a broken graph must fail the verification
and a model directory sam2_text cannot reproduce must be refused.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_triton import text_spec
from sam2_triton.errors import InvalidInputError
from sam2_triton_export import detector_export as de
from sam2_triton_export import detector_verify as dv
from sam2_triton_export.detector_random import FIRST_WORD_ID, VOCAB_SIZE, WORDS, write_vocab
from sam2_triton_export.errors import ExportError
from sam2_triton_server import grounding

MODEL_IDS = [i for t, i in text_spec.SPECIAL_TOKENS.items() if t != "[PAD]"]  # 101 102 1012 1029
PROMPTS = [
    "cat. remote control.",
    "Cat",
    "A Red CAR. the Dog.",
    "remote controls",
    "chair ,couch?",
    "cats. dogs. balls.",
    "a zebra on the road",  # zebra: [UNK]
]
# original sizes: landscape, 4:3, 16:9 large, portrait, odd and nearly square
IMAGE_SIZES = [(480, 640), (375, 500), (1080, 1920), (640, 427), (801, 799)]


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(detector_dir: Path) -> tuple:
    """(model, processor, info) of ``detector_dir``, loaded once for the module."""
    return de.load_detector(detector_dir)


@pytest.fixture(scope="module")
def staged(detector_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """``stage_detector`` run once: (staging dir, report, the model it loaded)."""
    out = tmp_path_factory.mktemp("detector_staged")
    seen, original = [], de.load_detector

    def load(model_dir: Path) -> tuple:
        seen.append(original(model_dir))
        return seen[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(de, "load_detector", load)
        report = de.stage_detector(detector_dir, out)
    return out, report, seen[0][0]


@pytest.fixture(scope="module")
def forward(loaded: tuple) -> dict:
    """transformers' processor and model on two images and two prompts of different lengths
    (padded image and text)."""
    model, processor, _ = loaded
    sizes = [(240, 320), (300, 480)]
    images = [dv.synthetic_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    texts = ["cat. remote control.", "a red car. dog."]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**{n: inputs[n] for n in text_spec.DETECTOR_INPUT_NAMES})
    return {"inputs": inputs, "out": out, "sizes": sizes}


def _copy_dir(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copyfile(f, dst / f.name)
    return dst


def _dims(value_info: object) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --- 1. the phrase masks the graph computes --------------------------------------------------------
def test_gen_masks_onnx_equals_transformers_on_random_ids() -> None:
    import transformers.models.grounding_dino.modeling_grounding_dino as gd

    # the ids the contract relies on are still the ones this transformers hard-codes
    assert list(gd.SPECIAL_TOKENS) == MODEL_IDS
    special = torch.tensor(gd.SPECIAL_TOKENS)
    pool = np.array([*MODEL_IDS, *range(FIRST_WORD_ID, FIRST_WORD_ID + len(WORDS)), 100, 7])
    rng = np.random.default_rng(0)
    for case in range(300):
        b, t = int(rng.integers(1, 4)), int(rng.integers(1, 40))
        ids = rng.choice(pool, (b, t))
        if case % 2:  # padded rows, as the tokenizer pads a batch
            for row, n in enumerate(rng.integers(1, t + 1, b)):
                ids[row, n:] = 0
        ids = torch.from_numpy(ids.astype(np.int64))
        ref_mask, ref_pos = gd.generate_masks_with_special_tokens_and_transfer_map(ids, special)
        mask, pos = de.gen_masks_onnx(ids, special)
        assert mask.dtype == ref_mask.dtype and pos.dtype == ref_pos.dtype
        assert torch.equal(mask, ref_mask), ids
        assert torch.equal(pos, ref_pos), ids


def test_onnx_patches_swap_the_mask_function_only_inside() -> None:
    import transformers.models.grounding_dino.modeling_grounding_dino as gd

    original = gd.generate_masks_with_special_tokens_and_transfer_map
    with de.onnx_patches():
        assert gd.generate_masks_with_special_tokens_and_transfer_map is de.gen_masks_onnx
    assert gd.generate_masks_with_special_tokens_and_transfer_map is original
    with pytest.raises(RuntimeError), de.onnx_patches():
        raise RuntimeError("export failed")
    assert gd.generate_masks_with_special_tokens_and_transfer_map is original


# --- 2. staging: both canvases exported and verified, tokenizer files -----------------------------
def test_stage_detector_exports_verifies_and_stages(staged, loaded, detector_dir) -> None:
    import onnx

    out, report, model = staged
    _, _, info = loaded
    assert not any(m.training for m in model.modules())  # no dropout left on by the exporter
    assert report["passed"], report["failures"]
    assert report["detector"] == dict(info)
    canvases = text_spec.canvases(320, 480)
    assert set(report["verify"]) == set(text_spec.DETECTOR_MODELS.values())
    for orientation, name in text_spec.DETECTOR_MODELS.items():
        path = out / name / "1" / de.MODEL_FILE
        graph = onnx.load(str(path), load_external_data=False).graph
        assert [i.name for i in graph.input] == list(text_spec.DETECTOR_INPUT_NAMES)
        assert [o.name for o in graph.output] == list(text_spec.DETECTOR_OUTPUT_NAMES)
        shapes = {v.name: _dims(v) for v in [*graph.input, *graph.output]}
        h, w = canvases[orientation]
        assert shapes[text_spec.PIXEL_VALUES][1:] == [3, h, w]
        assert shapes[text_spec.PIXEL_MASK][1:] == [h, w]
        for n in text_spec.TEXT_INPUT_NAMES:  # B and T dynamic
            assert all(isinstance(d, str) for d in shapes[n]), (n, shapes[n])
        assert isinstance(shapes[text_spec.PIXEL_VALUES][0], str)
        assert [len(shapes[n]) for n in text_spec.DETECTOR_OUTPUT_NAMES] == [3, 3]
        verify = report["verify"][name]
        assert verify["canvas"] == [h, w] and verify["passed"], verify["failures"]
        assert verify["tie_margin"] == dv.TIE_MARGIN
        assert set(verify["tolerances"]) == {"logits", "pred_boxes", "box_px", "score"}
        assert len(verify["cases"]) == 2  # B = 1 filling the canvas; B = 2, padded
        for key, case in verify["cases"].items():
            batch = len(case["kept"])
            # the tied slots are recorded, and leave most slots to the gates
            assert isinstance(case["tied_slots"], int), (key, case)
            assert 0 <= case["tied_slots"] <= batch * model.config.num_queries // 10, (key, case)
            assert {"topk_margin", "topk_boundary_margin"} <= set(case), (key, case)
            assert set(case["slots"]) == {
                "kept_differ",
                "labels_differ",
                "excused_near_threshold",
                "box_px",
                "score",
            }
            assert min(min(n) for n in case["kept"]) > 0, (key, case["kept"])  # not vacuous
    for fname in text_spec.TOKENIZER_FILES:
        staged_file = out / text_spec.TEXT_MODEL / "1" / fname
        assert staged_file.read_bytes() == (detector_dir / fname).read_bytes()
    for rel in report["files"]:
        assert (out / rel).is_file(), rel
    on_disk = json.loads((out / de.REPORT_FILE).read_text())
    assert on_disk["passed"] and on_disk["failures"] == []


# --- 3. a broken graph fails -----------------------------------------------------------------------
def test_broken_export_fails_and_the_model_stays_in_eval_mode(loaded, tmp_path) -> None:
    """Not vacuous: one perturbed bias of the box head fails the checks, in every case."""
    model, processor, info = loaded
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.bbox_embed[-1].layers[-1].bias += 0.05
    canvas = text_spec.canvases(info["shortest_edge"], info["longest_edge"])["landscape"]
    path = tmp_path / "broken.onnx"
    de.export_detector(broken, path, canvas)
    # the exporter restores its wrapper's mode recursively: dropout must not be left on
    assert not any(m.training for m in broken.modules())
    report = dv.verify_detector(model, processor, path, dv.cases_for("landscape", canvas))
    assert not report["passed"]
    for key, case in report["cases"].items():
        assert any(f.startswith(key) for f in report["failures"]), (key, case)
    assert any("pred_boxes" in f for f in report["failures"]), report["failures"]
    assert any("box_px" in f for f in report["failures"]), report["failures"]


def _gate_report(**case: object) -> dict:
    """A verification report of one case: a clean one with ``case``'s entries changed (``slots``
    may be a partial dict of the slot-wise entries to change)."""
    slots = {
        "kept_differ": 0,
        "labels_differ": 0,
        "excused_near_threshold": 0,
        "box_px": 1e-4,
        "score": 2e-6,
    }
    clean = {
        "pixel_values": [1, 3, 320, 480],
        "text_len": 7,
        "topk_margin": 1.0,
        "topk_boundary_margin": 1.0,
        "tied_slots": 0,
        "inf_pattern_equal": True,
        "logits": 2e-5,
        "pred_boxes": 1.2e-7,
        "kept": [[90, 90]],
    }
    tolerances = {
        "logits": dv.LOGITS_TOLERANCE,
        "pred_boxes": dv.BOXES_TOLERANCE,
        "box_px": dv.BOX_PX_TOLERANCE,
        "score": dv.SCORE_TOLERANCE,
    }
    changed = {**clean, "slots": {**slots, **case.pop("slots", {})}, **case}
    return {"tolerances": tolerances, "tie_margin": dv.TIE_MARGIN, "cases": {"case0_b1": changed}}


def test_failures_gate_every_metric() -> None:
    assert dv.failures(_gate_report()) == []
    for metric in ("logits", "pred_boxes"):
        for bad in (1.0, float("nan"), float("inf")):
            fails = dv.failures(_gate_report(**{metric: bad}))
            assert len(fails) == 1 and fails[0].startswith(f"case0_b1 {metric}:"), (metric, bad)
    for metric in ("box_px", "score"):
        for bad in (1.0, float("nan"), float("inf")):
            fails = dv.failures(_gate_report(slots={metric: bad}))
            assert len(fails) == 1 and fails[0].startswith(f"case0_b1 {metric}:"), (metric, bad)
    # just within the tolerances passes
    at_tol = {"logits": dv.LOGITS_TOLERANCE, "pred_boxes": dv.BOXES_TOLERANCE}
    at_tol["slots"] = {"box_px": dv.BOX_PX_TOLERANCE, "score": dv.SCORE_TOLERANCE}
    assert dv.failures(_gate_report(**at_tol)) == []
    fails = dv.failures(_gate_report(slots={"kept_differ": 1}))
    assert fails == ["case0_b1: 1 queries kept on one side only"]
    fails = dv.failures(_gate_report(slots={"labels_differ": 2}))
    assert fails == ["case0_b1: 2 kept queries differ in label"]
    assert any("-inf" in f for f in dv.failures(_gate_report(inf_pattern_equal=False)))
    assert dv.failures(_gate_report(error="no output")) == ["case0_b1: no output"]
    # every failing gate is named, not only the first
    fails = dv.failures(_gate_report(logits=1.0, slots={"score": 1.0, "kept_differ": 3}))
    assert len(fails) == 3, fails


def test_failures_do_not_gate_what_is_only_reported() -> None:
    """Tied slots (left out of the metrics), queries excused near a threshold and the top-k
    margins are reported, not gated."""
    reported = {"tied_slots": 4, "topk_margin": 0.0, "topk_boundary_margin": 0.0}
    reported["slots"] = {"excused_near_threshold": 3}
    assert dv.failures(_gate_report(**reported)) == []


# --- 4. preprocessing ------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", IMAGE_SIZES, ids=[f"{h}x{w}" for h, w in IMAGE_SIZES])
def test_preprocess_equals_the_image_processor(hw) -> None:
    """numpy == ``GroundingDinoImageProcessor()`` (800/1333) bit for bit, unpadded and padded to
    the canvas of the image's orientation."""
    from transformers import GroundingDinoImageProcessor

    proc = GroundingDinoImageProcessor()
    image = dv.synthetic_image(*hw, seed=sum(hw))
    edges = (text_spec.SHORTEST_EDGE, text_spec.LONGEST_EDGE)
    resized = grounding.resized_size(hw)
    canvas = text_spec.canvases(*edges)[text_spec.canvas_for(resized, *edges)]
    for pad in (None, canvas):
        kw = {} if pad is None else {"pad_size": {"height": pad[0], "width": pad[1]}}
        ref = proc(images=[image], return_tensors="np", **kw)
        pv, pm, sizes = grounding.preprocess_images([image], pad_hw=pad)
        assert sizes == [hw]
        assert pv.dtype == np.float32 and pm.dtype == np.int64
        assert pv.shape == ref["pixel_values"].shape == (1, 3, *(pad or resized))
        assert np.array_equal(pm, ref["pixel_mask"])
        assert np.array_equal(pv, ref["pixel_values"]), float(
            np.abs(pv - ref["pixel_values"]).max()
        )


def test_preprocess_equals_the_test_models_processor(loaded) -> None:
    """The same with the detector's own resize (320/480) and a batch of two sizes."""
    _, processor, info = loaded
    edges = (info["shortest_edge"], info["longest_edge"])
    images = [dv.synthetic_image(240, 320, 0), dv.synthetic_image(300, 481, 1)]
    ref = processor.image_processor(images=images, return_tensors="np")
    pv, pm, _ = grounding.preprocess_images(images, None, *edges)
    assert np.array_equal(pm, ref["pixel_mask"]) and np.array_equal(pv, ref["pixel_values"])


# --- 5. tokenizer ----------------------------------------------------------------------------------
def test_tokenizer_equals_transformers(loaded, detector_dir) -> None:
    _, processor, _ = loaded
    tok = grounding.GroundingTokenizer(detector_dir)
    texts = [grounding.lang_sam_prompt(t) for t in PROMPTS]
    assert texts[1] == "Cat." and texts[0] == PROMPTS[0]
    ref = processor(text=texts, padding=True, return_tensors="np")
    got = tok(texts)
    for name in text_spec.TEXT_INPUT_NAMES:
        assert got[name].dtype == np.int64
        assert np.array_equal(got[name], ref[name]), name
    # candidate labels (a list per image) are merged by transformers into one prompt
    labels = ["A cat", " remote control "]
    merged = grounding.merge_candidate_labels(labels)
    ref = processor(text=[labels], return_tensors="np")
    assert np.array_equal(tok([merged])[text_spec.INPUT_IDS], ref[text_spec.INPUT_IDS])
    # a prompt longer than the logits: cut like GroundingDinoModel.forward ([:, :256], no [SEP])
    long_text = "cat. " * 200
    full = processor.tokenizer([long_text], return_tensors="np")[text_spec.INPUT_IDS]
    assert full.shape[1] > text_spec.MAX_TEXT_LEN
    ids = tok([long_text, "cat."])[text_spec.INPUT_IDS]
    assert ids.shape == (2, text_spec.MAX_TEXT_LEN)
    assert np.array_equal(ids[:1], full[:, : text_spec.MAX_TEXT_LEN])


def test_decode_equals_transformers_on_random_ids(loaded, detector_dir) -> None:
    _, processor, _ = loaded
    tok = grounding.GroundingTokenizer(detector_dir)
    words = np.arange(FIRST_WORD_ID, FIRST_WORD_ID + len(WORDS))
    pool = np.concatenate([words, words, [0, 100, 103, *MODEL_IDS], np.arange(VOCAB_SIZE)])
    rng = np.random.default_rng(0)
    for _ in range(300):
        seq = rng.choice(pool, int(rng.integers(0, 9))).tolist()
        assert tok.decode(seq) == processor.tokenizer.decode(seq), seq
    seqs = [rng.choice(pool, 4).tolist() for _ in range(3)]
    assert tok.batch_decode(seqs) == processor.tokenizer.batch_decode(seqs)


# --- 6. post-processing ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "thresholds", [(text_spec.BOX_THRESHOLD, text_spec.TEXT_THRESHOLD), (0.9, 0.6)]
)
def test_postprocess_equals_transformers(loaded, forward, detector_dir, thresholds) -> None:
    _, processor, _ = loaded
    out, ids, sizes = forward["out"], forward["inputs"][text_spec.INPUT_IDS], forward["sizes"]
    ref = processor.post_process_grounded_object_detection(
        out, ids, threshold=thresholds[0], text_threshold=thresholds[1], target_sizes=sizes
    )
    got = grounding.post_process_grounded_object_detection(
        out.logits.numpy(),
        out.pred_boxes.numpy(),
        ids.numpy(),
        grounding.GroundingTokenizer(detector_dir),
        *thresholds,
        target_sizes=sizes,
    )
    assert len(got) == len(ref) == 2
    for r, g in zip(ref, got):
        assert len(g["scores"]) == len(r["scores"])
        assert g["boxes"].dtype == g["scores"].dtype == np.float32
        assert np.array_equal(g["boxes"], r["boxes"].numpy())
        assert np.abs(g["scores"] - r["scores"].numpy()).max(initial=0) <= 2.5e-7
        assert g["labels"] == list(r["text_labels"])
    assert sum(len(g["scores"]) for g in got) > 0  # not vacuous


# --- 7. model directories sam2_text cannot reproduce ----------------------------------------------
def test_load_detector_refuses_a_dir_without_weights(detector_dir, tmp_path) -> None:
    bad = _copy_dir(detector_dir, tmp_path / "no_weights", skip=("model.safetensors",))
    with pytest.raises(ExportError, match="model.safetensors"):
        de.load_detector(bad)
    with pytest.raises(ExportError, match="not a directory"):
        de.load_detector(tmp_path / "nothing")


def test_load_detector_refuses_special_tokens_elsewhere(loaded, detector_dir, tmp_path) -> None:
    from transformers import BertTokenizerFast, GroundingDinoProcessor

    _, processor, _ = loaded
    bad = _copy_dir(detector_dir, tmp_path / "moved_ids")
    write_vocab(bad / "vocab.txt")
    lines = (bad / "vocab.txt").read_text().splitlines()
    for n, i in enumerate(MODEL_IDS):  # [CLS] [SEP] . ? to 1..4, their old places unused
        lines[1 + n], lines[i] = lines[i], f"[moved{n}]"
    (bad / "vocab.txt").write_text("\n".join(lines) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bad / f).unlink()
    tokenizer = BertTokenizerFast.from_pretrained(str(bad), do_lower_case=True)
    GroundingDinoProcessor(processor.image_processor, tokenizer).save_pretrained(bad)
    assert tokenizer.convert_tokens_to_ids(["[CLS]", "?"]) == [1, 4]
    with pytest.raises(ExportError) as err:
        de.load_detector(bad)
    assert str(list(text_spec.SPECIAL_TOKENS.values())) in str(err.value)  # the ids wanted
    assert "[0, 1, 2, 3, 4]" in str(err.value)  # and the ids found
    with pytest.raises(InvalidInputError, match="1029"):  # the server's tokenizer refuses too
        grounding.GroundingTokenizer(bad)


def test_load_detector_refuses_another_normalisation(detector_dir, tmp_path) -> None:
    bad = _copy_dir(detector_dir, tmp_path / "mean")
    config = json.loads((bad / "processor_config.json").read_text())
    config["image_processor"]["image_mean"] = [0.5, 0.5, 0.5]
    (bad / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="image_mean"):
        de.load_detector(bad)


# --- 8. top-k ties ---------------------------------------------------------------------------------
def _enc_logits(*rows: list[float], seed: int = 0) -> np.ndarray:
    """[B, S, 256] logits whose per-proposal maximum is ``rows[b][s]`` (proposals shuffled, the
    other tokens lower or -inf, as beyond the prompt)."""
    rng = np.random.default_rng(seed)
    out = np.full((len(rows), len(rows[0]), text_spec.MAX_TEXT_LEN), -np.inf, np.float32)
    for b, row in enumerate(rows):
        order = rng.permutation(len(row))
        best = np.asarray(row, np.float32)[order]
        out[b, :, :5] = best[:, None] - rng.uniform(1, 2, (len(row), 5))
        out[b, np.arange(len(row)), rng.integers(0, 5, len(row))] = best
    return out


def test_topk_margins_measures_the_gaps_within_and_at_the_kth_place() -> None:
    clean = [9.0, 7.0, 5.0, 3.0, 1.0, -1.0]
    assert dv.topk_margins(_enc_logits(clean), 3) == {
        "topk_margin": 2.0,
        "topk_boundary_margin": 2.0,
    }
    # a tie inside the top 3 (7, 7)
    r = dv.topk_margins(_enc_logits([9.0, 7.0, 7.0, 3.0, 1.0, -1.0]), 3)
    assert r == {"topk_margin": 0.0, "topk_boundary_margin": 4.0}
    # a tie at the 3rd place (5, 5)
    r = dv.topk_margins(_enc_logits([9.0, 7.0, 5.0, 5.0, 1.0, -1.0]), 3)
    assert r == {"topk_margin": 2.0, "topk_boundary_margin": 0.0}
    # a tie below the boundary does not count
    r = dv.topk_margins(_enc_logits([9.0, 7.0, 5.0, 3.0, 1.0, 1.0]), 3)
    assert r == {"topk_margin": 2.0, "topk_boundary_margin": 2.0}
    # a batch: the smallest gap over its images
    r = dv.topk_margins(_enc_logits(clean, [9.0, 8.5, 5.0, 4.75, 1.0, -1.0]), 3)
    assert r == {"topk_margin": 0.5, "topk_boundary_margin": 0.25}
    # k = 1: nothing within; k = S: no boundary
    r = dv.topk_margins(_enc_logits(clean), 1)
    assert r == {"topk_margin": float("inf"), "topk_boundary_margin": 2.0}
    r = dv.topk_margins(_enc_logits(clean), len(clean))
    assert r == {"topk_margin": 2.0, "topk_boundary_margin": float("inf")}


def _tied(*rows: list[float], k: int, **kw: float) -> list[list[bool]]:
    tied = dv.tied_slots(_enc_logits(*rows), k, **kw)
    assert tied.dtype == bool and tied.shape == (len(rows), k)
    return tied.tolist()


def test_tied_slots_marks_the_slots_of_a_near_tie() -> None:
    m = dv.TIE_MARGIN  # absolute for scores of magnitude <= 1, relative above

    def tied(*rows: list[float], k: int, **kw: float) -> list[list[bool]]:
        return _tied(*([v / 10 for v in row] for row in rows), k=k, **kw)

    clean = [9.0, 7.0, 5.0, 3.0, 1.0, -1.0]  # scores 0.9 .. -0.1
    assert tied(clean, k=3) == [[False, False, False]]
    # a near-tie inside the top 3 marks both of its slots, and only them
    assert tied([9.0, 7.0, 7.0 - 5 * m, 3.0, 1.0, -1.0], k=3) == [[False, True, True]]
    assert tied([9.0, 9.0, 5.0, 3.0, 1.0, -1.0], k=3) == [[True, True, False]]
    # three in a row: all three
    assert tied([9.0, 7.0, 7.0, 7.0, 1.0, -1.0], k=4) == [[False, True, True, True]]
    # the k-th against the first proposal left out: slot k - 1 only
    assert tied([9.0, 7.0, 5.0, 5.0 - 5 * m, 1.0, -1.0], k=3) == [[False, False, True]]
    # below the boundary, or gaps above the margin: nothing
    assert tied([9.0, 7.0, 5.0, 3.0, 1.0, 1.0], k=3) == [[False, False, False]]
    above = [9.0, 9.0 - 20 * m, 9.0 - 40 * m, 9.0 - 60 * m, 1.0, -1.0]
    assert tied(above, k=3) == [[False, False, False]]
    # large scores: the margin grows with them (float32 noise is relative)
    big = [[90.0, 90.0 - 50 * m, 50.0, 40.0], [90.0, 90.0 - 200 * m, 50.0, 40.0]]
    assert _tied(*big, k=2) == [[True, True], [False, False]]
    # the margin is a parameter: exact ties are below any positive one, none below 0
    assert tied(clean, k=3, margin=2.5) == [[True, True, True]]
    assert tied([9.0, 9.0, 5.0, 5.0, 1.0, -1.0], k=3, margin=0.0) == [[False] * 3]
    # batch rows are independent
    rows = (clean, [9.0, 7.0, 5.0, 5.0, 1.0, -1.0], [9.0, 9.0, 5.0, 3.0, 1.0, -1.0])
    assert tied(*rows, k=3) == [[False] * 3, [False, False, True], [True, True, False]]
    # k = S: no proposal left out, the last slot is compared with the one above it only
    assert tied(clean, k=len(clean)) == [[False] * len(clean)]
    assert tied([9.0, 7.0, 5.0, 3.0, 1.0, 1.0], k=6) == [[False] * 4 + [True] * 2]


def _pp_of(probs: np.ndarray, boxes: np.ndarray, labels: list[str]) -> dict:
    """What ``_pp`` returns for one image: the kept slots in slot order."""
    keep = probs.max(-1) > text_spec.BOX_THRESHOLD
    assert len(labels) == int(keep.sum())
    return {"scores": probs.max(-1)[keep], "boxes": boxes[keep], "labels": labels}


def test_compare_slots_leaves_out_tied_slots_only() -> None:
    """Slot 0 is tied (kept on both sides, 500 px and 0.3 apart, another label): left out. Slot
    1 is kept by onnxruntime only: counted. Slots 2 and 3 agree within float noise."""
    low, t_box, t_text = 0.1, text_spec.BOX_THRESHOLD, text_spec.TEXT_THRESHOLD
    probs_ref = np.array(
        [[0.9, low, low], [low, low, low], [0.8, low, low], [0.6, 0.5, low]], np.float32
    )
    probs_got = probs_ref.copy()
    probs_got[0, 0], probs_got[1, 1] = 0.6, 0.5
    probs_got[2, 0] += 1e-6
    boxes_ref = np.array([[10, 10, 50, 50], [0, 0, 5, 5], [20, 30, 60, 90], [1, 2, 3, 4]], float)
    boxes_got = boxes_ref.copy()
    boxes_got[0] += 500.0
    boxes_got[3, 2] += 2e-4
    ref = _pp_of(probs_ref, boxes_ref, ["cat", "cat", "cat remote"])
    got = _pp_of(probs_got, boxes_got, ["dog", "remote", "cat", "cat remote"])
    tied = np.array([True, False, False, False])
    r = dv._compare_slots(ref, got, probs_ref, probs_got, tied)
    assert r["kept_differ"] == 1 and r["labels_differ"] == 0 and r["excused"] == 0, r
    assert r["box_px"] == pytest.approx(2e-4) and r["score"] == pytest.approx(1e-6, rel=0.1)
    # slot 0 not tied: its differences count
    r = dv._compare_slots(ref, got, probs_ref, probs_got, np.zeros(4, bool))
    assert r["kept_differ"] == 1 and r["labels_differ"] == 1, r
    assert r["box_px"] == 500.0 and r["score"] == pytest.approx(0.3)
    # slot 1 tied as well: nothing left to fail
    r = dv._compare_slots(ref, got, probs_ref, probs_got, np.array([True, True, False, False]))
    assert r["kept_differ"] == 0 and r["box_px"] == pytest.approx(2e-4), r
    # a reference probability within THRESHOLD_MARGIN of a threshold excuses the flip
    near = probs_ref.copy()
    near[1, 1] = t_box - dv.THRESHOLD_MARGIN / 2
    r = dv._compare_slots(ref, got, near, probs_got, tied)
    assert r["kept_differ"] == 0 and r["excused"] == 1, r
    relabelled = {**got, "labels": ["dog", "remote", "cat", "remote"]}
    r = dv._compare_slots(ref, relabelled, probs_ref, probs_got, tied)
    assert r["labels_differ"] == 1 and r["excused"] == 0, r
    near = probs_ref.copy()
    near[3, 2] = t_text + dv.THRESHOLD_MARGIN / 2
    r = dv._compare_slots(ref, relabelled, near, probs_got, tied)
    assert r["labels_differ"] == 0 and r["excused"] == 1, r


class _PerturbedSession:
    """An onnxruntime session stand-in: the model itself, with query ``slot`` of every image
    perturbed (logits + 5, boxes mirrored)."""

    def __init__(self, model: torch.nn.Module, slot: int) -> None:
        self.model, self.slot = model, slot

    def get_outputs(self) -> list:
        from types import SimpleNamespace

        return [SimpleNamespace(name=n) for n in text_spec.DETECTOR_OUTPUT_NAMES]

    def run(self, _names: None, feed: dict) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.model(**{n: torch.from_numpy(v) for n, v in feed.items()})
        logits, boxes = out.logits.numpy().copy(), out.pred_boxes.numpy().copy()
        logits[:, self.slot] += 5.0  # -inf stays -inf
        boxes[:, self.slot] = 1.0 - boxes[:, self.slot]
        return [logits, boxes]


def test_verify_case_leaves_out_the_tied_slots(loaded, monkeypatch) -> None:
    """A slot that differs a lot fails every gate, unless ``tied_slots`` marks it."""
    model, processor, info = loaded
    canvas = text_spec.canvases(info["shortest_edge"], info["longest_edge"])["landscape"]
    case = dv.cases_for("landscape", canvas)[1]  # B = 2
    sess = _PerturbedSession(model.eval(), slot=3)
    k = model.config.num_queries

    def tied_at(slot: int | None):
        def tied(enc: np.ndarray, kk: int, margin: float = dv.TIE_MARGIN) -> np.ndarray:
            assert kk == k and enc.shape[0] == 2
            out = np.zeros((enc.shape[0], kk), bool)
            if slot is not None:
                out[:, slot] = True
            return out

        return tied

    def report(slot: int | None) -> dict:
        monkeypatch.setattr(dv, "tied_slots", tied_at(slot))
        r = dv._verify_case(model, processor, sess, case, canvas)
        assert r["inf_pattern_equal"]
        return {"tolerances": _gate_report()["tolerances"], "cases": {"case1_b2": r}}

    left_out = report(3)
    r = left_out["cases"]["case1_b2"]
    assert dv.failures(left_out) == [], r
    assert r["tied_slots"] == 2 and r["logits"] == 0.0 and r["pred_boxes"] == 0.0, r
    assert r["slots"]["box_px"] == 0.0 and r["slots"]["score"] == 0.0, r
    assert min(min(n) for n in r["kept"]) > 0, r  # not vacuous: detections were compared
    fails = dv.failures(report(None))
    for metric in ("logits", "pred_boxes"):
        assert any(f.startswith(f"case1_b2 {metric}:") for f in fails), fails
    # the slot kept on one side only, or moved by up to the image size
    assert any("kept on one side" in f or "box_px" in f for f in fails), fails
    # another slot tied: slot 3 still fails
    assert dv.failures(report(4))
