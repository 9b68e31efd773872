"""Text prompts on the real local Triton: ``sam2_text`` (through ``sam2_triton.LangSAM``) gives
Lang-SAM's result computed in-process by transformers' Grounding DINO + its post-processing and
SAM 2's ``SAM2ImagePredictor`` on the same weights.

The reference is Lang-SAM's pipeline on the image padded to its canvas (the detector graphs
have static canvases; transformers pads the same way for ``pad_size``, or for a batch with a
larger image). An image that fills its canvas needs no padding: there the reference is
Lang-SAM's own unpadded call, and the two are checked to be the same input.

Ties: the detector's queries are the top-k of its encoder proposals, sorted, and each slot has
its own learned embedding; proposals within float noise of each other may come out in the other
order from torch and onnxruntime, and then those two queries legitimately differ (see
``detector_verify``). Each input here is checked to have no such near-tie, so every object is
compared in order, exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam2_triton import spec, text_spec
from sam2_triton.errors import InvalidInputError
from sam2_triton_export import detector_verify
from sam2_triton_export.detector_verify import synthetic_image

from .triton_helpers import Requests

pytestmark = pytest.mark.triton

BOX_PX = 1e-3  # the gate for boxes
SCORE = 1e-4  # detector scores: sigmoid of logits that agree to ~1e-5 (ONNX vs torch)
MASK_IOU = 0.999
MASK_SCORE = 1e-4  # SAM 2's IoU prediction, ONNX vs torch (export verification: ~1e-7)
# (original image size, prompt, thresholds or None for Lang-SAM's defaults)
CASES = [
    ((240, 320), "cat. remote control", None),  # landscape, padded to 320x480
    ((400, 300), "a red car. dog.", (0.98, 0.5)),  # portrait, stricter thresholds
    ((320, 480), "Cat", (0.98, 0.25)),  # fills the landscape canvas: Lang-SAM's unpadded input
]


@pytest.fixture(scope="module")
def reference(detector_dir, sam2_model):
    """Lang-SAM's pipeline in-process: (processor, model, SAM2ImagePredictor)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2_triton_export.detector_export import load_detector

    model, processor, info = load_detector(detector_dir)
    return processor, model, SAM2ImagePredictor(sam2_model), info


def lang_sam(
    reference,
    image: np.ndarray,
    text: str,
    box_t: float,
    text_t: float,
    pad: bool,
    sam: bool = True,
):
    """``LangSAM.predict([image], [text])`` in-process (lang_sam.py, models/gdino.py, sam.py);
    ``sam=False``: the detector half only."""
    import torch

    processor, model, predictor, info = reference
    prompt = text if text.endswith(".") else text + "."
    resized = detector_pad_hw(image.shape[:2], info)
    kw = {"pad_size": {"height": resized[0], "width": resized[1]}} if pad else {}
    inputs = processor(images=[Image.fromarray(image)], text=[prompt], return_tensors="pt", **kw)
    with torch.no_grad():
        out = model(**inputs)
    (det,) = processor.post_process_grounded_object_detection(
        out,
        inputs["input_ids"],
        threshold=box_t,
        text_threshold=text_t,
        target_sizes=[image.shape[:2]],
    )
    boxes = det["boxes"].numpy()
    result = {
        "scores": det["scores"].numpy(),
        "boxes": boxes,
        "labels": list(det["text_labels"]),
        "pixel_values": inputs["pixel_values"].numpy(),
        "tied": detector_verify.tied_slots(out.enc_outputs_class.numpy(), out.logits.shape[1]),
    }
    if len(boxes) and sam:
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(box=boxes, multimask_output=False)
        result["masks"] = masks.reshape(len(boxes), *image.shape[:2]) > 0.5
        result["mask_scores"] = scores.reshape(len(boxes))
    return result


def orientation(hw: tuple[int, int], info) -> str:
    """The canvas (``landscape``/``portrait``) ``sam2_text`` pads an image of ``hw`` to."""
    from sam2_triton_server import grounding

    edges = (info["shortest_edge"], info["longest_edge"])
    return text_spec.canvas_for(grounding.resized_size(hw, *edges), *edges)


def detector_pad_hw(hw: tuple[int, int], info) -> tuple[int, int]:
    """The canvas (H, W) ``sam2_text`` pads an image of ``hw`` to."""
    return text_spec.canvases(info["shortest_edge"], info["longest_edge"])[orientation(hw, info)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def lang_sam_client(text_triton_server):
    from sam2_triton import LangSAM

    with LangSAM(url=text_triton_server.grpc_url) as client:
        yield client


@pytest.mark.parametrize("hw,text,thresholds", CASES)
def test_sam2_text_equals_lang_sam(
    reference, lang_sam_client, text_triton_server, hw, text, thresholds
):
    box_t, text_t = thresholds or (text_spec.BOX_THRESHOLD, text_spec.TEXT_THRESHOLD)
    image = synthetic_image(*hw, seed=sum(hw))
    ref = lang_sam(reference, image, text, box_t, text_t, pad=True)
    assert not ref["tied"].any(), "this input has near-tied proposals: pick another seed"
    if detector_pad_hw(hw, reference[3]) == hw:  # fills the canvas: Lang-SAM's unpadded call
        unpadded = lang_sam(reference, image, text, box_t, text_t, pad=False, sam=False)
        np.testing.assert_array_equal(unpadded["pixel_values"], ref["pixel_values"])
        np.testing.assert_array_equal(unpadded["boxes"], ref["boxes"])
    stats = Requests(text_triton_server)
    kwargs = {} if thresholds is None else {"box_threshold": box_t, "text_threshold": text_t}
    (got,) = lang_sam_client.predict([Image.fromarray(image)], [text], **kwargs)

    n = len(ref["scores"])
    assert n > 0 and len(got["scores"]) == n
    assert got["labels"] is got["text_labels"] and got["labels"] == ref["labels"]
    box_px = float(np.abs(got["boxes"] - ref["boxes"]).max())
    assert box_px <= BOX_PX, box_px
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=SCORE, rtol=0)
    masks = got["masks"].astype(bool)
    assert masks.shape == (n, *hw) and got["masks"].dtype == np.float32
    ious = [iou(masks[k], ref["masks"][k]) for k in range(n)]
    assert min(ious) >= MASK_IOU, min(ious)
    mask_scores = np.atleast_1d(got["mask_scores"])
    np.testing.assert_allclose(mask_scores, ref["mask_scores"], atol=MASK_SCORE, rtol=0)
    # one detector call, the image's features computed once, every box decoded
    detector = text_spec.DETECTOR_MODELS[orientation(hw, reference[3])]
    assert stats.settled(detector, expect=1) == 1
    assert stats.settled("sam2_encoder", expect=1) == 1
    decoder_calls = -(-n // spec.MAX_PROMPTS_PER_REQUEST)
    assert stats.settled("sam2_decoder", expect=decoder_calls) == decoder_calls


def test_nothing_detected_skips_sam(lang_sam_client, text_triton_server):
    """Lang-SAM runs SAM only when the detector kept something; masks and mask_scores are []."""
    stats = Requests(text_triton_server)
    image = Image.fromarray(synthetic_image(240, 320, seed=7))
    (got,) = lang_sam_client.predict([image], ["dog"], box_threshold=1.0)
    assert got["masks"] == [] and got["mask_scores"] == [] and got["labels"] == []
    assert got["boxes"].shape == (0, 4) and got["scores"].shape == (0,)
    assert stats.settled("sam2_text", expect=1) == 1
    assert stats.delta("sam2_encoder") == 0 and stats.delta("sam2_decoder") == 0


def test_bad_requests_name_the_problem(text_triton_server):
    """Raw v2 requests with bad inputs get Triton's 400 naming the input; nothing crashes."""
    import io
    import json

    import tritonclient.http as th

    image = Image.fromarray(synthetic_image(64, 80, seed=1))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    client = th.InferenceServerClient(text_triton_server.http_url.removeprefix("http://"))

    def call(**elements: bytes) -> str:
        inputs = []
        for name, value in elements.items():
            t = th.InferInput(name, [1], "BYTES")
            t.set_data_from_numpy(np.array([value], dtype=object))
            inputs.append(t)
        with pytest.raises(th.InferenceServerException) as err:
            client.infer(text_spec.TEXT_MODEL, inputs)
        return str(err.value)

    png = buf.getvalue()
    assert "text" in call(image=png, text=b"   ")
    assert "input 'image'" in call(image=b"\x89PNG\r\n\x1a\nbroken", text=b"cat")
    assert "options.box_threshold" in call(
        image=png, text=b"cat", options=json.dumps({"box_threshold": 1.5}).encode()
    )
    assert "unknown key" in call(image=png, text=b"cat", options=b'{"threshold": 0.3}')
    assert "text" in call(image=png, text=b"\xff\xfe")
    assert "missing required input(s) ['text']" in call(image=png)


def test_client_refuses_bad_arguments_before_sending(lang_sam_client):
    image = Image.fromarray(synthetic_image(64, 80, seed=1))
    with pytest.raises(InvalidInputError, match="2"):
        lang_sam_client.predict([image, image], ["cat"])
    with pytest.raises(InvalidInputError, match="box_threshold"):
        lang_sam_client.predict([image], ["cat"], box_threshold=2.0)


def test_cli_segment_text_and_batch_text(text_triton_server, tmp_path):
    """``sam2-triton segment IMAGE --text`` and ``batch --text``: the server's objects (as
    ``LangSAM.segment`` gets them), as JSON, an overlay and COCO records with labels."""
    import json

    from pycocotools import mask as coco_mask

    from sam2_triton import LangSAM
    from sam2_triton_app import cli

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, hw in enumerate(((200, 260), (260, 200))):
        Image.fromarray(synthetic_image(*hw, seed=40 + i)).save(photos / f"p{i}.png")
    image = photos / "p0.png"
    url = ["--url", text_triton_server.grpc_url]
    out_json, out_png = tmp_path / "found.json", tmp_path / "overlay.png"
    argv = ["segment", str(image), "--text", "cat", "--box-threshold", "0.97", "--rle",
            "--json", str(out_json), "--overlay", str(out_png), *url]  # fmt: skip
    assert cli.main(argv) == 0
    with LangSAM(url=text_triton_server.grpc_url) as model:
        want = {p.name: model.segment(p, "cat", box_threshold=0.97) for p in photos.iterdir()}
    doc = json.loads(out_json.read_text())
    assert doc["text"] == "cat." and len(doc["objects"]) == len(want["p0.png"].labels) >= 1
    assert [o["label"] for o in doc["objects"]] == list(want["p0.png"].labels)
    assert [o["rle"] for o in doc["objects"]] == list(want["p0.png"].rles)
    overlay = np.asarray(Image.open(out_png).convert("RGB"))
    assert overlay.shape == (200, 260, 3) and (overlay != np.asarray(Image.open(image))).any()

    results = tmp_path / "results.json"
    argv = ["batch", str(photos), "-o", str(results), "--text", "cat", "--box-threshold", "0.97",
            *url]  # fmt: skip
    assert cli.main(argv) == 0
    records = json.loads(results.read_text())
    assert len(records) == sum(len(w.labels) for w in want.values())
    assert {r["label"] for r in records} <= {lb for w in want.values() for lb in w.labels}
    for r in records[:3]:
        mask = coco_mask.decode(
            {**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}
        )
        assert mask.any()
    with pytest.raises(SystemExit):
        cli.main(["segment", str(image), "--text", "cat", "--point", "3,3", *url])
