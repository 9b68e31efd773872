"""Segment everything: SAM2AutomaticMaskGenerator on Triton against SAM 2's own generator.

Random weights give low logits (|l| < 0.3) and IoU predictions near 0.5, so SAM 2's default
thresholds (pred_iou 0.8, stability 0.95 at offset 1.0) keep no mask. The exactness cases lower
them (``LOWERED``) so that several masks survive every filter; every other parameter is SAM 2's.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam2_triton import amg
from sam2_triton.errors import InvalidImageError, InvalidInputError
from sam2_triton_bench.everything_bench import LOWERED  # the benchmark's, so both measure alike


def picture(h: int, w: int, seed: int) -> np.ndarray:
    from sam2_triton_export.verify import synthetic_image

    return synthetic_image(h, w, seed=seed)


# --- the SDK's ports of sam2.utils.amg ---------------------------------------------------------
@pytest.mark.parametrize("n, layers, scale", [(32, 0, 1), (16, 2, 2), (7, 1, 1), (5, 2, 2)])
def test_point_grids_are_sam2s(n: int, layers: int, scale: int) -> None:
    from sam2.utils.amg import build_all_layer_point_grids

    ours, theirs = (
        amg.build_all_layer_point_grids(n, layers, scale),
        build_all_layer_point_grids(n, layers, scale),
    )
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hw", [(480, 640), (1024, 768), (333, 517), (64, 900)])
@pytest.mark.parametrize("layers, overlap", [(0, 512 / 1500), (1, 512 / 1500), (3, 0.2)])
def test_crop_boxes_are_sam2s(hw: tuple[int, int], layers: int, overlap: float) -> None:
    from sam2.utils.amg import generate_crop_boxes

    assert amg.generate_crop_boxes(hw, layers, overlap) == generate_crop_boxes(hw, layers, overlap)


@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.3, 0.1, 0.95])
def test_nms_is_torchvisions(threshold: float) -> None:
    """Same kept indices in the same order, ties included (scores drawn from few values)."""
    import torch
    from torchvision.ops import nms

    rng = np.random.default_rng(int(threshold * 100))
    for n in (1, 7, 300):
        xy = rng.integers(0, 200, (n, 2))
        wh = rng.integers(0, 60, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        scores = rng.choice(np.float32([0.5, 0.25, 0.9]), n) if n > 1 else np.float32([0.3])
        want = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(amg.nms(boxes, scores, threshold), want)


def test_uncompressed_rle_is_mask_to_rle_pytorch() -> None:
    import torch
    from sam2.utils.amg import mask_to_rle_pytorch

    rng = np.random.default_rng(0)
    masks = rng.random((5, 23, 31)) > 0.6
    masks[1] = True  # starts with a 1-run
    masks[2] = False
    want = mask_to_rle_pytorch(torch.from_numpy(masks))
    assert [amg.rle_to_uncompressed(m) for m in masks] == want


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(points_per_sides=8), "points_per_sides"),
        (dict(points_per_side=8, point_grids=[np.zeros((4, 2))]), "points_per_side"),
        (dict(points_per_side=None), "point_grids"),
        (dict(min_mask_region_area=100), "min_mask_region_area"),
        (dict(output_mode="png"), "output_mode"),
        (dict(points_per_batch=0), "points_per_batch"),
        (
            dict(crop_n_layers=2, points_per_side=None, point_grids=[np.zeros((1, 2))]),
            "point_grids",
        ),
        (dict(points_per_side=None, point_grids=[np.ones((3, 2)) * 2]), "point_grids[0]"),
        (dict(crop_overlap_ratio=1.5), "crop_overlap_ratio"),
        (dict(pred_iou_thresh=float("nan")), "pred_iou_thresh"),
        (dict(use_m2m=1), "use_m2m"),
        (dict(points_per_side=5, crop_n_layers=3, crop_n_points_downscale_factor=2), "layer 3"),
    ],
)
def test_bad_options_name_the_parameter(kwargs: dict, names: str) -> None:
    with pytest.raises(InvalidInputError, match=names.replace("[", r"\[")):
        amg.GeneratorOptions.from_mapping(kwargs)


# --- the graph: verified against sam2.utils.amg, and the check can fail ------------------------
def test_amg_graph_verification_catches_a_wrong_graph(tmp_path) -> None:
    import onnx
    from onnx import helper

    from sam2_triton_export import amg_graph, amg_verify
    from sam2_triton_export.verify import ParityError

    good = tmp_path / "good.onnx"
    amg_graph.export(good)
    numbers = amg_verify.verify(good)
    assert numbers["masks_kept"] > 0 and numbers["mask_pixel_fraction_differing"] < 1e-4
    model = amg_graph.build()
    (resize,) = [n for n in model.graph.node if n.op_type == "Resize"]
    for attr in resize.attribute:
        if attr.name == "coordinate_transformation_mode":
            attr.CopyFrom(helper.make_attribute(attr.name, "align_corners"))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(ParityError, match="sam2_amg_masks"):
        amg_verify.verify(bad)


# --- through the real Triton, against SAM 2's generator -----------------------------------------
def _match(got: list[dict], want: list[dict]) -> dict[str, float]:
    """Masks matched one to one (best IoU, unique); field-by-field checks on the pairs."""
    assert len(got) == len(want), f"{len(got)} masks, SAM 2 has {len(want)}"
    if not want:
        return {"masks": 0, "mean_iou": 1.0, "identical": 1.0}

    def rles(records):
        return [
            {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
            for r in records
        ]

    ious = coco_mask.iou(rles(got), rles(want), [0] * len(want))
    best = ious.argmax(axis=1)
    assert len(set(best.tolist())) == len(want), "masks do not match one to one"
    matched = ious[np.arange(len(got)), best]
    assert np.mean(matched >= 0.99) >= 0.99, matched
    identical = 0
    for g, i in zip(got, best.tolist()):
        w = want[i]
        assert g["crop_box"] == w["crop_box"] and g["point_coords"] == w["point_coords"]
        assert abs(g["predicted_iou"] - w["predicted_iou"]) <= 1e-4
        assert abs(g["stability_score"] - w["stability_score"]) <= 1e-3
        identical += g["segmentation"]["counts"] == w["segmentation"]["counts"]
    return {"masks": len(got), "mean_iou": float(matched.mean()), "identical": identical / len(got)}


CASES = {
    "grid": dict(points_per_side=6, points_per_batch=20),
    "single-mask": dict(points_per_side=6, multimask_output=False),
    "m2m": dict(points_per_side=4, use_m2m=True),
    "crops": dict(points_per_side=4, crop_n_layers=1, crop_nms_thresh=0.95),
    "custom-grid": dict(
        points_per_side=None, point_grids=[np.random.default_rng(5).random((24, 2))]
    ),
}
SIZES = {"grid": (240, 320), "single-mask": (300, 200), "m2m": (240, 320), "crops": (256, 384),
         "custom-grid": (181, 257)}  # fmt: skip


@pytest.mark.triton
@pytest.mark.parametrize("case", list(CASES))
def test_generate_matches_sam2(case: str, triton_server, sam2_model) -> None:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Reference

    from sam2_triton import SAM2AutomaticMaskGenerator

    image = picture(*SIZES[case], seed=len(case))
    kwargs = {**LOWERED, **CASES[case]}
    want = Reference(sam2_model, output_mode="coco_rle", **kwargs).generate(image)
    protocol = "http" if case == "custom-grid" else "grpc"
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with SAM2AutomaticMaskGenerator(
        url=url, protocol=protocol, output_mode="coco_rle", **kwargs
    ) as g:
        got = g.generate(image)
    stats = _match(got, want)
    print(case, json.dumps(stats))
    assert case == "crops" or stats["masks"] >= 2, "the case must exercise several masks"


@pytest.mark.triton
def test_output_modes_and_held_image(triton_server, sam2_model) -> None:
    """binary_mask / uncompressed_rle records equal SAM 2's conversions; an image the session
    model holds (RemoteEmbedding) gives the same records as the pixels; crops need pixels."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Reference

    from sam2_triton import SAM2AutomaticMaskGenerator, SAM2Client

    image = picture(200, 280, seed=3)
    kwargs = {**LOWERED, "points_per_side": 5}
    with SAM2Client(triton_server.grpc_url) as client:
        coco = SAM2AutomaticMaskGenerator(client, output_mode="coco_rle", **kwargs).generate(image)
        binary = SAM2AutomaticMaskGenerator(client, **kwargs).generate(image)
        plain = SAM2AutomaticMaskGenerator(client, output_mode="uncompressed_rle", **kwargs)
        remote = client.encode(image)
        assert plain.generate(remote) == plain.generate(image)
        with pytest.raises(InvalidInputError, match="crop_n_layers"):
            SAM2AutomaticMaskGenerator(client, crop_n_layers=1, **kwargs).generate(remote)
    assert len(coco) >= 2
    want = Reference(sam2_model, output_mode="binary_mask", **kwargs).generate(image)
    for g, w in zip(binary, want):
        assert g["segmentation"].dtype == bool and g["segmentation"].shape == (200, 280)
        assert set(g) == set(w) and g["bbox"] == w["bbox"] and g["area"] == w["area"]
    for c, b in zip(coco, binary):
        rle = {"size": c["segmentation"]["size"], "counts": c["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), b["segmentation"])


@pytest.mark.triton
def test_async_generator_is_the_same_flow(triton_server) -> None:
    from sam2_triton import (
        AsyncSAM2AutomaticMaskGenerator,
        AsyncSAM2Client,
        SAM2AutomaticMaskGenerator,
    )

    image = picture(160, 200, seed=4)
    kwargs = {**LOWERED, "points_per_side": 4, "output_mode": "coco_rle"}

    async def run() -> list[dict]:
        async with AsyncSAM2Client(triton_server.grpc_url) as client:
            return await AsyncSAM2AutomaticMaskGenerator(client, **kwargs).generate(image)

    with SAM2AutomaticMaskGenerator(url=triton_server.grpc_url, **kwargs) as g:
        assert asyncio.run(run()) == g.generate(image)


@pytest.mark.triton
def test_bad_requests_get_clear_errors(triton_server) -> None:
    """Options the SDK would refuse, sent raw; a corrupt image; neither image nor id."""
    import tritonclient.http as httpclient

    from sam2_triton import SAM2AutomaticMaskGenerator

    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"))

    def infer(options: dict | None, image: bytes | None) -> str:
        inputs = []
        for name, value in (("options", json.dumps(options).encode() if options else None),
                            ("image", image)):  # fmt: skip
            if value is not None:
                inp = httpclient.InferInput(name, [1], "BYTES")
                inp.set_data_from_numpy(np.array([value], dtype=object))
                inputs.append(inp)
        with pytest.raises(Exception) as info:  # noqa: B017 - tritonclient's own exception
            client.infer("sam2_everything", inputs)
        return str(info.value)

    png = open(__file__, "rb").read()[:100]
    assert "points_per_sides" in infer({"points_per_sides": 8}, png)
    assert "min_mask_region_area" in infer({"min_mask_region_area": 5}, png)
    assert "output_mode" in infer({"output_mode": "binary_mask"}, png)
    assert "'image'" in infer({"points_per_side": 2}, b"\x00\x01 not an image")
    assert "exactly one of input 'image'" in infer({"points_per_side": 2}, None)
    assert "image_id" in infer({"image_id": "abc"}, None)
    with pytest.raises(InvalidImageError, match="uint8"):
        SAM2AutomaticMaskGenerator(url=triton_server.grpc_url).generate(np.zeros((4, 4, 3)))
    assert "unknown image id" in infer({"image_id": "0" * 64, "points_per_side": 2}, None)
    client.close()


@pytest.mark.triton
def test_cli_segment_everything_writes_coco_and_overlay(triton_server, tmp_path) -> None:
    """``sam2-triton segment IMAGE --everything``: a COCO dataset that pycocotools loads, with
    the generator's masks, and an overlay with one colour per mask."""
    from PIL import Image
    from pycocotools.coco import COCO

    from sam2_triton import SAM2AutomaticMaskGenerator
    from sam2_triton_app import cli

    image = tmp_path / "picture.png"
    Image.fromarray(picture(200, 240, seed=6)).save(image)
    kwargs = {**LOWERED, "points_per_side": 4}
    out_json, out_png = tmp_path / "masks.json", tmp_path / "overlay.png"
    argv = ["segment", str(image), "--everything", "--everything-options", json.dumps(kwargs),
            "--url", triton_server.grpc_url, "--json", str(out_json), "--overlay", str(out_png)]  # fmt: skip
    assert cli.main(argv) == 0
    with SAM2AutomaticMaskGenerator(
        url=triton_server.grpc_url, output_mode="coco_rle", **kwargs
    ) as g:
        want = g.generate(image)
    coco = COCO(str(out_json))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == len(want) >= 2
    for ann, w in zip(anns, want):
        assert ann["segmentation"] == w["segmentation"] and ann["bbox"] == w["bbox"]
        np.testing.assert_array_equal(coco.annToMask(ann), coco_mask.decode(
            {**w["segmentation"], "counts": w["segmentation"]["counts"].encode()}))  # fmt: skip
    overlay = np.asarray(Image.open(out_png).convert("RGB"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert overlay.shape == original.shape and (overlay != original).any()
    with pytest.raises(SystemExit, match="--everything takes no --point"):
        cli.main([*argv[:3], "--point", "3,3", "--url", triton_server.grpc_url])
