"""sam2_triton.video_io and sam2_triton.video_transforms against SAM 2 1.1.0 / torch (CPU).

The SDK code is numpy/Pillow/PyAV only; torch and sam2 are the references here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_triton import spec, video_io, video_transforms
from sam2_triton.errors import InvalidImageError, InvalidInputError, InvalidPromptError

torch = pytest.importorskip("torch")
F = torch.nn.functional

MEAN = np.array(spec.PIXEL_MEAN, np.float32)[:, None, None]
STD = np.array(spec.PIXEL_STD, np.float32)[:, None, None]


def _normalized(model_input: np.ndarray) -> np.ndarray:
    """uint8 [3, 1024, 1024] as SAM 2's frame tensor: /255 (float64, stored float32), -mean, /std."""
    x = (model_input / 255.0).astype(np.float32)
    return (x - MEAN) / STD


def _frames(n: int = 3, h: int = 90, w: int = 120, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 7 * i, axis=1) for i in range(n)]


# --------------------------------------------------------------------------------------------
# load_video
# --------------------------------------------------------------------------------------------
@pytest.fixture
def jpeg_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    # SAM 2's listing: these four extensions, sorted by int(stem) (10 after 2), others ignored
    names = ["10.JPG", "0.jpg", "2.jpeg", "3.JPEG"]
    for name, arr in zip(names, _frames(4)):
        Image.fromarray(arr).save(folder / name, format="JPEG", quality=90)
    Image.fromarray(_frames(1)[0]).save(folder / "5.png")
    (folder / "notes.txt").write_text("not a frame")
    return folder


def test_jpeg_folder_matches_sam2(jpeg_folder: Path) -> None:
    from sam2.utils.misc import load_video_frames

    ref, ref_h, ref_w = load_video_frames(
        str(jpeg_folder),
        spec.IMAGE_SIZE,
        offload_video_to_cpu=True,
        img_mean=spec.PIXEL_MEAN,
        img_std=spec.PIXEL_STD,
        compute_device=torch.device("cpu"),
    )
    video = video_io.load_video(str(jpeg_folder))
    assert len(video) == ref.shape[0] == 4
    assert (video.video_height, video.video_width) == (ref_h, ref_w) == (90, 120)
    assert video._backend.paths == [  # int(stem) order
        str(jpeg_folder / n) for n in ("0.jpg", "2.jpeg", "3.JPEG", "10.JPG")
    ]
    for i in range(len(video)):
        x = video.model_input(i)
        assert x.dtype == np.uint8 and x.shape == (3, 1024, 1024) and x.flags.c_contiguous
        np.testing.assert_allclose(_normalized(x), ref[i].numpy(), rtol=0, atol=1e-6)
        assert video.frame(i).shape == (90, 120, 3)
    assert video.fps is None
    assert video_io.load_video(video) is video  # an open VideoFrames passes through
    np.testing.assert_array_equal(video[1], video.model_input(1))
    assert len(video[0:2]) == 2 and video.model_input(-1).shape == (3, 1024, 1024)


def test_jpeg_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "0.png").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="no images found"):
        video_io.load_video(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("0.jpg", "frame_1.jpg"):
        Image.fromarray(_frames(1)[0]).save(bad / name)
    with pytest.raises(InvalidInputError, match="frame_1.jpg"):
        video_io.load_video(str(bad))
    with pytest.raises(InvalidInputError, match="does not exist"):
        video_io.load_video(tmp_path / "missing.mp4")
    with pytest.raises(InvalidInputError, match="folder of JPEG frames"):
        video_io.load_video(42)


def test_jpeg_folder_frame_of_another_size(tmp_path: Path) -> None:
    Image.fromarray(_frames(1)[0]).save(tmp_path / "0.jpg")
    Image.fromarray(_frames(1, 60, 80)[0]).save(tmp_path / "1.jpg")
    video = video_io.load_video(tmp_path)
    video.model_input(0)
    with pytest.raises(InvalidImageError, match=r"frame 1 .* is 60x80 .* expected 90x120"):
        video.model_input(1)


def test_array_frames() -> None:
    frames = _frames(3, 37, 53)
    for source in (frames, np.stack(frames)):
        video = video_io.load_video(source)
        assert len(video) == 3 and (video.video_height, video.video_width) == (37, 53)
        for i, arr in enumerate(frames):
            want = np.array(Image.fromarray(arr).resize((1024, 1024))).transpose(2, 0, 1)
            np.testing.assert_array_equal(video.model_input(i), want)
            np.testing.assert_array_equal(video.frame(i), arr)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "no frames"),
        (
            [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)],
            r"frame 1 must be \[H, W, 3\]",
        ),
        ([np.zeros((4, 4, 3), np.float32)], r"frame 0 .* dtype float32"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], r"frame 1 is 4x5.*4x4"),
        ([np.zeros((4, 4, 3), np.uint8), "x"], "frame 1 must be a numpy array"),
    ],
)
def test_array_frame_errors(frames: list, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        video_io.load_video(frames)


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    av = pytest.importorskip("av")
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_file(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    _write_mp4(path, _frames(5, 90, 120))
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with video_io.load_video(path) as video:
        assert len(video) == 5 and (video.video_height, video.video_width) == (90, 120)
        assert video.fps == pytest.approx(10)
        for i in (3, 1, 4, 0, 2):  # going back reopens the file
            np.testing.assert_array_equal(video.frame(i), decoded[i])
            want = np.array(Image.fromarray(decoded[i]).resize((1024, 1024))).transpose(2, 0, 1)
            np.testing.assert_array_equal(video.model_input(i), want)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(InvalidInputError, match="cannot be decoded"):
        video_io.load_video(bad)


def test_video_file_without_pyav(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\0" * 10)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"sam2-triton-client\[video\]"):
        video_io.load_video(path)


# --------------------------------------------------------------------------------------------
# antialias_resize / mask prompts
# --------------------------------------------------------------------------------------------
def _torch_aa(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(x.reshape(-1, 1, *x.shape[-2:]))
    out = F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
    return out.numpy().reshape(*x.shape[:-2], *out_hw)


SIZES = [
    ((1024, 1024), (256, 256)),  # _use_mask_as_output
    ((90, 120), (1024, 1024)),  # add_new_mask, upsampling
    ((37, 53), (1024, 1024)),
    ((1080, 1920), (1024, 1024)),  # mixed: down in W, up in H
    ((2001, 3001), (1024, 1024)),
    ((7, 5), (3, 11)),
    ((5, 5), (1, 1)),
    ((300, 17), (1024, 1024)),
    ((1024, 1024), (1024, 1024)),
]


@pytest.mark.parametrize(("in_hw", "out_hw"), SIZES)
def test_antialias_resize_matches_torch(in_hw, out_hw) -> None:
    rng = np.random.default_rng(in_hw[0] * 7 + out_hw[1])
    logits = np.where(rng.random((2, 1, *in_hw)) > 0.5, 10.0, -10.0).astype(np.float32)
    ours = video_transforms.antialias_resize(logits, out_hw)
    assert ours.dtype == np.float32 and ours.shape == (2, 1, *out_hw)
    np.testing.assert_allclose(ours, _torch_aa(logits, out_hw), rtol=0, atol=1e-5)
    noise = rng.standard_normal((3, *in_hw)).astype(np.float32)  # [C, H, W]
    np.testing.assert_allclose(
        video_transforms.antialias_resize(noise, out_hw), _torch_aa(noise, out_hw), atol=1e-5
    )


def test_use_mask_as_output_logits() -> None:
    # SAM2Base._use_mask_as_output: mask * 20 - 10, antialiased 1024 -> 256
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:1024, :1024]
    mask = ((yy - 500) ** 2 + (xx - 400) ** 2 < 300**2) ^ (rng.random((1024, 1024)) < 0.02)
    high = mask[None, None].astype(np.float32) * 20.0 - 10.0
    ours = video_transforms.antialias_resize(high, (256, 256))
    ref = F.interpolate(
        torch.from_numpy(mask[None, None]).float() * 20.0 - 10.0,
        size=(256, 256),
        align_corners=False,
        mode="bilinear",
        antialias=True,
    ).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def _sam2_add_new_mask(mask: np.ndarray) -> np.ndarray:
    """SAM2VideoPredictor.add_new_mask's preprocessing (sam2 1.1.0), verbatim."""
    m = torch.tensor(mask, dtype=torch.bool)[None, None].float()
    if m.shape[-2:] != (1024, 1024):
        m = F.interpolate(
            m, size=(1024, 1024), align_corners=False, mode="bilinear", antialias=True
        )
        m = (m >= 0.5).float()
    return m[0, 0].numpy().astype(bool)


@pytest.mark.parametrize(
    "hw", [(90, 120), (37, 53), (480, 854), (1080, 1920), (2001, 3001), (1024, 1024), (1, 1)]
)
def test_mask_prompt_matches_add_new_mask(hw) -> None:
    rng = np.random.default_rng(hw[0])
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    blob = (yy - h / 2) ** 2 / max(h / 3, 1) ** 2 + (xx - w / 3) ** 2 / max(w / 4, 1) ** 2 < 1
    for mask in (blob, rng.random(hw) < 0.5):  # a shape, and noise (many near-0.5 values)
        ours = video_transforms.mask_prompt_to_model(mask)
        assert ours.dtype == np.bool_ and ours.shape == (1024, 1024)
        np.testing.assert_array_equal(ours, _sam2_add_new_mask(mask))
    ones = video_transforms.mask_prompt_to_model(blob.astype(np.uint8))  # 0/1 numbers
    np.testing.assert_array_equal(ones, _sam2_add_new_mask(blob))


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.zeros((2, 4, 4), bool), "2-D"),
        (np.zeros((0, 4), bool), "empty"),
        (np.full((4, 4), 2), r"only 0/1 .* got 2 at \(y=0, x=0\)"),
        (np.full((4, 4), 0.5), "only 0/1"),
        (np.array([["a"]]), "bool or 0/1"),
    ],
)
def test_mask_prompt_errors(mask, match: str) -> None:
    with pytest.raises(InvalidPromptError, match=match):
        video_transforms.mask_prompt_to_model(mask)


# --------------------------------------------------------------------------------------------
# video_res_masks / points
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(90, 120), (257, 255), (1080, 1920), (17, 300), (256, 256)])
def test_video_res_masks_matches_get_orig_video_res_output(hw) -> None:
    rng = np.random.default_rng(hw[1])
    low = (rng.standard_normal((3, 1, 256, 256)) * 10).astype(np.float32)
    ours = video_transforms.video_res_masks(low, hw)
    t = torch.from_numpy(low)
    ref = t if hw == (256, 256) else F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    assert ours.dtype == np.float32 and ours.shape == (3, 1, *hw)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-5)
    with pytest.raises(InvalidInputError):
        video_transforms.video_res_masks(low[0], hw)


def _sam2_points(points, labels, box, hw):
    """add_new_points_or_box's coordinate handling (sam2 1.1.0), verbatim."""
    h, w = hw
    points = (
        torch.zeros(0, 2, dtype=torch.float32)
        if points is None
        else torch.tensor(points, dtype=torch.float32)
    )
    labels = (
        torch.zeros(0, dtype=torch.int32)
        if labels is None
        else torch.tensor(labels, dtype=torch.int32)
    )
    points, labels = points.unsqueeze(0), labels.unsqueeze(0)
    if box is not None:
        box = torch.tensor(box, dtype=torch.float32)
        points = torch.cat([box.reshape(1, 2, 2), points], dim=1)
        labels = torch.cat([torch.tensor([2, 3], dtype=torch.int32).reshape(1, 2), labels], dim=1)
    points = points / torch.tensor([w, h])
    points = points * 1024
    return points[0].numpy(), labels[0].numpy()


@pytest.mark.parametrize("hw", [(90, 120), (1080, 1920), (481, 853)])
def test_points_match_add_new_points_or_box(hw) -> None:
    rng = np.random.default_rng(hw[0])
    pts = rng.random((5, 2)) * [hw[1], hw[0]]  # float64, as a caller passes
    labs = rng.integers(0, 2, 5)
    box = [hw[1] * 0.1, hw[0] * 0.2, hw[1] * 0.7, hw[0] * 0.9]
    for p, lab, b in ((pts, labs, None), (None, None, box), (pts[:2], labs[:2], box)):
        coords, labels = video_transforms.prompt_points(p, lab, b, hw)
        ref_c, ref_l = _sam2_points(p, lab, b, hw)
        assert coords.dtype == np.float32 and labels.dtype == np.int32
        np.testing.assert_array_equal(coords, ref_c)
        np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_array_equal(
        video_transforms.normalize_points(pts, hw), _sam2_points(pts, labs, None, hw)[0]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": [[1, 2]], "labels": None}, "together"),
        ({"points": None, "labels": None}, "at least one"),
        ({"points": [[1, 2, 3]], "labels": [1]}, r"\[N, 2\]"),
        ({"points": [[1, 2]], "labels": [1, 0]}, r"shape \[1\]"),
        ({"points": [[1, 2]], "labels": [7]}, "labels must be in"),
        ({"points": [[np.nan, 2]], "labels": [1]}, "NaN"),
        ({"points": None, "labels": None, "box": [1, 2, 3]}, "4 numbers"),
    ],
)
def test_prompt_point_errors(kwargs, match: str) -> None:
    kwargs = {"box": None, **kwargs}
    with pytest.raises(InvalidPromptError, match=match):
        video_transforms.prompt_points(video_hw=(90, 120), **kwargs)
