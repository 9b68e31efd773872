"""Text prompts in the SDK and the CLI (``sam2_triton.text``, ``segment --text``, ``batch --text``)
without a server.

The flows are driven step by step: their ``Compute`` steps run for real, the ``Call`` step is
answered by a real ``tritonclient.http.InferResult`` built from a response body that carries a
result document. The documents hold masks encoded with pycocotools here, so every expected
value is computed from those masks, never typed in. Where a test goes through ``LangSAM`` or
the CLI, the client points at a closed port: bad arguments must fail before any connection,
valid ones reach the network and get ``ServerUnavailableError`` (the control). The live tests
against a Triton with a detector live elsewhere.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
from PIL import Image
from pycocotools import mask as coco_mask
from tritonclient.utils import deserialize_bytes_tensor

from sam2_triton import (
    AsyncLangSAM,
    AsyncSAM2Client,
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    InvalidPromptError,
    LangSAM,
    SAM2Client,
    ServerUnavailableError,
    text_spec,
    transforms,
)
from sam2_triton._core import Call, Compute
from sam2_triton.text import (
    TextSegmentation,
    lang_sam_flow,
    lang_sam_result,
    parse_result,
    segment_text_flow,
    segmentation_flow,
)
from sam2_triton_app import (
    batch,
    batch_inputs,
    batch_scheduler,
    batch_worker,
    cli,
    text_prompts,
    visualize,
)

H, W = 30, 44  # not square: a transposed image or mask would not fit
LANG_SAM_KEYS = {"scores", "boxes", "text_labels", "labels", "masks", "mask_scores"}


# --- helpers -----------------------------------------------------------------------------------
@pytest.fixture
def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def picture(h: int = H, w: int = W, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def masks_of(n: int, seed: int = 1) -> np.ndarray:
    """``n`` distinct bool ``[H, W]`` masks (random rectangles plus noise)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, H, W), bool)
    for k in range(n):
        y0, x0 = rng.integers(0, H // 2), rng.integers(0, W // 2)
        out[k, y0 : y0 + rng.integers(3, H // 2), x0 : x0 + rng.integers(3, W // 2)] = True
        out[k] ^= rng.random((H, W)) < 0.05
    return out


def document(masks: np.ndarray, seed: int = 2) -> dict[str, Any]:
    """A ``sam2_text`` result document for ``masks`` (COCO RLE by pycocotools)."""
    rng = np.random.default_rng(seed)
    n = len(masks)
    rles = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    objects = []
    for k in range(n):
        x0, y0 = rng.uniform(0, W / 2), rng.uniform(0, H / 2)
        objects.append(
            {
                "label": f"thing {k}",
                "score": float(rng.uniform(0.3, 1)),
                "box": [x0, y0, x0 + rng.uniform(1, W / 2), y0 + rng.uniform(1, H / 2)],
                "mask_score": float(rng.uniform(0, 1)),
                "mask": {"size": [H, W], "counts": rles[k]["counts"].decode("ascii")},
            }
        )
    return {
        "width": W,
        "height": H,
        "text": "thing.",
        "box_threshold": 0.3,
        "text_threshold": 0.25,
        "format": "rle",
        "model_fingerprint": [7, 9] if n else None,
        "detector": "grounding_dino_landscape",
        "objects": objects,
    }


def infer_result(doc: dict[str, Any]) -> triton_http.InferResult:
    """A real tritonclient InferResult of ``sam2_text`` carrying ``doc``."""
    body = {
        "model_name": text_spec.TEXT_MODEL,
        "outputs": [
            {
                "name": text_spec.TEXT_RESULT,
                "datatype": "BYTES",
                "shape": [1],
                "data": [json.dumps(doc)],
            }
        ],
    }
    return triton_http.InferResult.from_response_body(json.dumps(body).encode())


def drive(flow: Any, doc: dict[str, Any]) -> tuple[list[Call], Any]:
    """Run ``flow``: Compute steps for real, the server's answer ``doc`` to its Call."""
    calls: list[Call] = []
    reply: Any = None
    while True:
        try:
            step = flow.send(reply)
        except StopIteration as stop:
            return calls, stop.value
        if isinstance(step, Compute):
            reply = step.fn(*step.args)
        else:
            assert isinstance(step, Call)
            calls.append(step)
            reply = infer_result(doc)


def sent(call: Call) -> dict[str, bytes]:
    """The BYTES elements of an (HTTP client's) infer call, by input name."""
    return {
        inp.name(): deserialize_bytes_tensor(inp._get_binary_data())[0]
        for inp in call.kwargs["inputs"]
    }


@pytest.fixture
def offline(closed_port):
    with SAM2Client(f"127.0.0.1:{closed_port}", "http", timeout_s=5) as client:
        yield client


# --- the request -------------------------------------------------------------------------------
def test_one_sam2_text_request_with_the_prompt_thresholds_and_lossless_pixels(offline):
    image = picture()
    flow = segment_text_flow(offline._core, image, "cat. remote control", 0.4, 0.2)
    calls, doc = drive(flow, document(masks_of(2)))
    (call,) = calls
    assert (call.method, call.model, call.kwargs["model_name"]) == ("infer",) + ("sam2_text",) * 2
    elements = sent(call)
    assert set(elements) == {"image", "text", "options"}
    assert elements["text"].decode() == "cat. remote control"  # the server appends the "."
    assert json.loads(elements["options"]) == {
        "box_threshold": 0.4,
        "text_threshold": 0.2,
        "format": "rle",
    }
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(elements["image"]))), np.asarray(image))
    assert doc == document(masks_of(2))


def test_a_pil_image_with_an_exif_orientation_is_sent_as_its_stored_pixels(offline, tmp_path):
    """Lang-SAM gives the PIL image to the detector and np.asarray of it to SAM 2: no EXIF
    transpose. The server applies EXIF when it decodes, so the PNG sent must carry none."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    picture().save(path, format="JPEG", exif=exif.tobytes())
    opened = Image.open(path)
    assert opened.getexif().get(0x0112) == 6
    assert transforms.load_image(path).shape[:2] == (W, H)  # the control: the tag does turn it
    calls, _ = drive(lang_sam_flow(offline._core, opened, "cat"), document(masks_of(1)))
    data = sent(calls[0])["image"]
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) is None
    as_server_decodes = np.rint(transforms.load_image(data) * 255).astype(np.uint8)
    assert as_server_decodes.shape == (H, W, 3)
    assert np.array_equal(as_server_decodes, np.asarray(Image.open(path)))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "I", "F"])
def test_non_rgb_pil_images_are_sent_as_convert_rgb(offline, mode):
    image = picture().convert(mode)
    calls, _ = drive(lang_sam_flow(offline._core, image, "cat"), document(masks_of(1)))
    data = sent(calls[0])["image"]
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(data))), np.asarray(image.convert("RGB"))
    )


# --- results -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 5])
def test_lang_sam_result_of_several_objects(offline, n):
    masks = masks_of(n)
    doc = document(masks)
    _, result = drive(lang_sam_flow(offline._core, picture(), "thing"), doc)
    assert set(result) == LANG_SAM_KEYS
    objects = doc["objects"]
    assert result["masks"].dtype == np.float32 and result["masks"].shape == (n, H, W)
    assert np.array_equal(result["masks"], masks.astype(np.float32))
    assert result["scores"].dtype == np.float32 and result["scores"].shape == (n,)
    assert np.array_equal(result["scores"], np.float32([o["score"] for o in objects]))
    assert result["boxes"].dtype == np.float32 and result["boxes"].shape == (n, 4)
    assert np.array_equal(result["boxes"], np.float32([o["box"] for o in objects]))
    assert result["mask_scores"].dtype == np.float32 and result["mask_scores"].shape == (n,)
    assert np.array_equal(result["mask_scores"], np.float32([o["mask_score"] for o in objects]))
    assert result["labels"] == [o["label"] for o in objects]
    assert result["text_labels"] is result["labels"]  # transformers: one list under both keys


def test_one_object_gives_a_0d_mask_score_as_lang_sam(offline):
    masks = masks_of(1)
    doc = document(masks)
    _, result = drive(lang_sam_flow(offline._core, picture(), "thing"), doc)
    assert result["masks"].shape == (1, H, W)
    assert np.array_equal(result["masks"][0], masks[0].astype(np.float32))
    assert result["mask_scores"].shape == ()  # np.squeeze of SAM 2's [1] scores
    assert result["mask_scores"] == np.float32(doc["objects"][0]["mask_score"])
    assert result["scores"].shape == (1,) and result["boxes"].shape == (1, 4)


def test_no_object_gives_empty_lists_as_lang_sam(offline):
    _, result = drive(lang_sam_flow(offline._core, picture(), "unicorn"), document(masks_of(0)))
    assert set(result) == LANG_SAM_KEYS
    assert result["masks"] == [] and isinstance(result["masks"], list)
    assert result["mask_scores"] == [] and isinstance(result["mask_scores"], list)
    assert result["labels"] == [] and result["text_labels"] is result["labels"]
    assert result["scores"].shape == (0,) and result["scores"].dtype == np.float32
    assert result["boxes"].shape == (0, 4) and result["boxes"].dtype == np.float32


def test_text_segmentation_keeps_masks_rles_and_metadata(offline):
    masks = masks_of(3)
    doc = document(masks)
    _, found = drive(segmentation_flow(offline._core, picture(), "thing"), doc)
    assert isinstance(found, TextSegmentation) and len(found) == 3
    assert found.masks.dtype == bool and np.array_equal(found.masks, masks)
    assert [r["counts"] for r in found.rles] == [o["mask"]["counts"] for o in doc["objects"]]
    assert (found.width, found.height, found.text) == (W, H, "thing.")
    assert found.model_fingerprint == [7, 9] and found.detector == "grounding_dino_landscape"
    assert found.labels == tuple(o["label"] for o in doc["objects"])
    assert np.array_equal(lang_sam_result(found)["masks"], masks.astype(np.float32))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("objects"),
        lambda d: d.update(objects="none"),
        lambda d: d["objects"][0].pop("mask"),
        lambda d: d["objects"][0].update(label=3),
        lambda d: d["objects"][0]["mask"].update(size=[W, H]),
        lambda d: d["objects"][0]["mask"].update(counts="!!!"),
        lambda d: d["objects"][0].update(box=[1, 2, 3]),
        lambda d: d.update(format="png"),
    ],
    ids=[
        "no objects",
        "objects not a list",
        "no mask",
        "label not str",
        "transposed size",
        "corrupt RLE",
        "3-number box",
        "png masks",
    ],  # fmt: skip
)
def test_a_malformed_result_is_an_inference_error(damage):
    doc = document(masks_of(2))
    damage(doc)
    with pytest.raises(InferenceError, match="sam2_text returned a malformed result"):
        parse_result(doc)


# --- validation before anything is sent ----------------------------------------------------------
@pytest.fixture
def lang_sam(closed_port):
    with LangSAM(url=f"127.0.0.1:{closed_port}", protocol="http", timeout_s=5) as model:
        yield model


BAD_PREDICT = {
    "lengths differ": (([picture()] * 2, ["cat"]), InvalidInputError, "2 images.*1 prompts"),
    "empty lists": (([], []), InvalidInputError, "images_pil is empty"),
    "one image, not a list": ((picture(), ["cat"]), InvalidInputError, "images_pil must be a list"),
    "a str of prompts": (([picture()], "cat"), InvalidInputError, "texts_prompt must be a list"),
    "array, not PIL": (([np.zeros((4, 4, 3), np.uint8)], ["cat"]), InvalidImageError, "PIL image"),
    "empty prompt": (([picture()], [""]), InvalidPromptError, r"texts_prompt\[0\] is empty"),
    "blank prompt": (([picture()] * 2, ["cat", "  "]), InvalidPromptError, r"\[1\] is empty"),
    "prompt not str": (([picture()], [None]), InvalidPromptError, "must be a str"),
    "prompt too long": (([picture()], ["a" * 5000]), InvalidPromptError, "limit is 4096"),
    "box_threshold > 1": (([picture()], ["cat"], 1.5), InvalidInputError, "box_threshold"),
    "box_threshold NaN": (([picture()], ["cat"], float("nan")), InvalidInputError, "box_thr"),
    "text_threshold < 0": (([picture()], ["cat"], 0.3, -0.1), InvalidInputError, "text_thr"),
    "threshold a bool": (([picture()], ["cat"], True), InvalidInputError, "box_threshold"),
}


@pytest.mark.parametrize("case", BAD_PREDICT.values(), ids=BAD_PREDICT)
def test_bad_predict_arguments_are_refused_before_connecting(lang_sam, case):
    args, error, message = case
    with pytest.raises(error, match=message):
        lang_sam.predict(*args)


def test_valid_arguments_reach_the_network(lang_sam):
    """The control of the test above: the same predictor does try the (closed) port."""
    with pytest.raises(ServerUnavailableError):
        lang_sam.predict([picture(), picture(seed=1)], ["cat", "dog."])
    with pytest.raises(ServerUnavailableError):
        lang_sam.segment(picture(), "cat")
    with pytest.raises(InvalidPromptError):
        lang_sam.segment(picture(), "")


def test_async_lang_sam_validates_then_connects(closed_port):
    async def run() -> None:
        async with AsyncSAM2Client(f"127.0.0.1:{closed_port}", "http", timeout_s=5) as client:
            model = AsyncLangSAM(client)
            with pytest.raises(InvalidInputError, match="2 images.*1 prompts"):
                await model.predict([picture(), picture()], ["cat"])
            with pytest.raises(ServerUnavailableError):
                await model.predict([picture(), picture()], ["cat", "dog"])

    asyncio.run(run())


def test_constructor_arguments(closed_port):
    with pytest.raises(InvalidInputError, match="sam_type"):
        LangSAM("sam2.1_hiera_small")
    with SAM2Client(f"127.0.0.1:{closed_port}") as client:
        with pytest.raises(InvalidInputError, match="not both"):
            LangSAM(client, url="127.0.0.1:1")
        with pytest.raises(InvalidInputError, match="max_concurrency"):
            LangSAM(client, max_concurrency=0)
        with pytest.raises(InvalidInputError, match="AsyncSAM2Client"):
            AsyncLangSAM(client)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="box_thresh"):  # an unknown option is never ignored
        LangSAM(url=f"127.0.0.1:{closed_port}", box_thresh=0.5)


# --- the command line ----------------------------------------------------------------------------
def test_segment_text_refuses_points_boxes_and_everything(tmp_path):
    image = tmp_path / "a.png"
    picture().save(image)
    for extra in (["--point", "3,4"], ["--box", "1,2,5,6"], ["--everything"]):
        with pytest.raises(SystemExit, match="--text takes no --point, --box or --everything"):
            cli.main(["segment", str(image), "--text", "cat.", *extra])
    with pytest.raises(SystemExit, match="--multimask goes with --point/--box"):
        cli.main(["segment", str(image), "--text", "cat.", "--multimask", "on"])
    with pytest.raises(SystemExit, match="--box-threshold goes with --text"):
        cli.main(["segment", str(image), "--point", "3,4", "--box-threshold", "0.5"])


def test_segment_text_flags_parse_with_lang_sams_defaults(capsys):
    args = cli.build_parser(["segment"]).parse_args(["segment", "a.png", "--text", "cat"])
    assert text_prompts.text_options(args) == {
        "text": "cat",
        "box_threshold": text_spec.BOX_THRESHOLD,
        "text_threshold": text_spec.TEXT_THRESHOLD,
    }
    argv = ["segment", "a.png", "--text", "cat", "--box-threshold", "0.5", "--text-threshold", "0"]
    args = cli.build_parser(argv).parse_args(argv)
    assert (text_prompts.text_options(args)["box_threshold"], args.text_threshold) == (0.5, 0.0)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["segment", "a.png", "--text", "cat", "--box-threshold", "1.5"])
    assert exit_info.value.code == 2 and "expected a number in [0, 1]" in capsys.readouterr().err


def test_segment_text_reports_a_blank_prompt_and_reaches_the_server(tmp_path, capsys, closed_port):
    image = tmp_path / "a.png"
    picture().save(image)
    assert cli.main(["segment", str(image), "--text", " "]) == 1
    assert "error: --text is empty" in capsys.readouterr().err
    url = f"127.0.0.1:{closed_port}"
    assert cli.main(["segment", str(image), "--text", "cat", "--url", url, "--timeout", "5"]) == 1
    assert "server unavailable" in capsys.readouterr().err


def test_segment_text_json_and_overlay_of_a_result(tmp_path):
    masks = masks_of(3)
    found = parse_result(document(masks))
    argv = ["segment", "a.png", "--text", "thing", "--rle"]
    args = cli.build_parser(argv).parse_args(argv)
    doc = text_prompts.document(args, found)
    assert (doc["width"], doc["height"], doc["text"]) == (W, H, "thing.")
    for k, obj in enumerate(doc["objects"]):
        assert obj["label"] == found.labels[k] and obj["area"] == int(masks[k].sum())
        assert obj["box_xyxy"] == [float(v) for v in found.boxes[k]]
        decoded = coco_mask.decode({**obj["rle"], "counts": obj["rle"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), masks[k])
        x, y, w, h = obj["bbox_xywh"]
        ys, xs = np.nonzero(masks[k])
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    rgb = np.zeros((H, W, 3), np.uint8)
    plain = visualize.overlay(rgb, list(found.masks), boxes=found.boxes)
    labelled = plain.copy()
    text_prompts.draw_labels(labelled, found)
    assert labelled.size == (W, H) and labelled.tobytes() != plain.tobytes()


def _batch_args(*argv: str):
    parser = cli.build_parser(["batch"])
    return parser.parse_args(["batch", *argv])


def test_batch_text_is_checked_before_any_work(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    picture().save(folder / "a.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(folder / "a.png"), "box": [1, 2, 5, 6]}) + "\n")
    out = str(tmp_path / "out.json")
    cases = {
        "a manifest": ([str(manifest), "--text", "cat"], "--text goes with image files"),
        "everything options": (
            [str(folder), "--text", "cat", "--points-per-side", "8"],
            "do not go with --text",
        ),  # fmt: skip
        "multimask": ([str(folder), "--text", "cat", "--multimask", "off"], "--multimask goes"),
        "threshold alone": ([str(folder), "--text-threshold", "0.3"], "goes with --text"),
        "blank text": ([str(folder), "--text", ""], "--text is empty"),
    }
    for argv, message in cases.values():
        assert batch.run(_batch_args(*argv, "-o", out)) == batch.EXIT_USAGE
        assert message in capsys.readouterr().err
    assert not Path(out).exists() and not (tmp_path / "out.json.journal").exists()


def test_batch_text_is_recorded_in_the_journal_settings(tmp_path):
    folder = str(tmp_path)
    spec = batch.InputSpec((folder,))
    args = _batch_args(folder, "-o", "o.json", "--text", "cat.", "--box-threshold", "0.4")
    settings = batch.settings(spec, batch._options(args))
    assert settings["text"] == {"text": "cat.", "box_threshold": 0.4, "text_threshold": 0.25}
    plain = batch.settings(spec, batch._options(_batch_args(folder, "-o", "o.json")))
    assert "text" not in plain  # journals of runs without --text still resume


def test_batch_text_waits_for_the_text_model(tmp_path, capsys, closed_port, monkeypatch):
    monkeypatch.setattr(batch_scheduler, "READY_TIMEOUT_S", 0.3)
    picture().save(tmp_path / "a.png")
    argv = [str(tmp_path / "a.png"), "-o", str(tmp_path / "out.json"), "--text", "cat"]
    args = _batch_args(*argv, "--url", f"127.0.0.1:{closed_port}", "--no-progress")
    assert batch.run(args) == batch.EXIT_SERVERS
    assert "no server is ready" in capsys.readouterr().err


def test_batch_text_records_are_coco_results_of_the_masks(tmp_path):
    masks = masks_of(4)
    doc = document(masks)
    found = parse_result(doc)
    task = batch_inputs.make_task(7, "a.png", str(tmp_path / "a.png"), None)
    records = batch_worker.text_records(task, found, category_id=3)
    assert [r["prompt_index"] for r in records] == [0, 1, 2, 3]
    for k, (record, obj) in enumerate(zip(records, doc["objects"])):
        assert (record["image_id"], record["file_name"], record["category_id"]) == (7, "a.png", 3)
        seg = record["segmentation"]
        assert np.array_equal(coco_mask.decode({**seg, "counts": seg["counts"].encode()}), masks[k])
        assert record["area"] == int(masks[k].sum())
        ys, xs = np.nonzero(masks[k])
        x, y, w, h = record["bbox"]
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert record["score"] == float(np.float32(obj["score"]))
        assert record["predicted_iou"] == float(np.float32(obj["mask_score"]))
        assert (record["label"], record["box_xyxy"]) == (
            obj["label"],
            [float(np.float32(v)) for v in obj["box"]],
        )
    json.dumps(records)  # the journal stores them as JSON
