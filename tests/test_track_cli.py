"""``sam2-triton track``: argument parsing and validation, mask/overlay writing (with given masks
and a stand-in predictor), and one end-to-end run against the real ``sam2_video`` model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sam2_triton.video_io import load_video
from sam2_triton_app import cli, track

av = pytest.importorskip("av")

H, W, N = 90, 120, 6


@pytest.fixture
def video_dir(tmp_path: Path) -> Path:
    """A JPEG-folder video (SAM 2's format): N frames of H x W, a square moving right."""
    folder = tmp_path / "video"
    folder.mkdir()
    for i in range(N):
        arr = np.full((H, W, 3), 40, np.uint8)
        arr[30:60, 10 + 5 * i : 40 + 5 * i] = (220, 60, 60)
        Image.fromarray(arr).save(folder / f"{i:05d}.jpg", quality=95)
    return folder


def parse(*argv: str):
    argv = ["track", *argv]
    return cli.build_parser(argv).parse_args(argv)


def fake_mask(obj_id: int, frame_idx: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[10 * obj_id : 10 * obj_id + 20, 3 * frame_idx : 3 * frame_idx + 25] = True
    return m


class FakePredictor:
    """Stands in for sam2_triton.video.SAM2VideoPredictor: records the calls, yields fake masks
    in SAM 2's propagate_in_video order."""

    instances: list[FakePredictor] = []

    def __init__(self, url: str, protocol: str) -> None:
        self.url, self.protocol = url, protocol
        self.calls: list[tuple[str, Any]] = []
        self.closed = False
        FakePredictor.instances.append(self)

    def init_state(self, video_path, window=0):
        self.calls.append(("init_state", video_path))
        self.window = window
        video = load_video(video_path)
        return {"num_frames": len(video), "obj_ids": [], "cond": set()}

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None, box=None):
        self.calls.append(("add", dict(frame_idx=frame_idx, obj_id=obj_id, points=points,
                                       labels=labels, box=box)))  # fmt: skip
        if obj_id not in state["obj_ids"]:
            state["obj_ids"].append(obj_id)
        state["cond"].add(frame_idx)
        return frame_idx, list(state["obj_ids"]), None

    def propagate_in_video(self, state, start_frame_idx=None, max_frame_num_to_track=None,
                           reverse=False):  # fmt: skip
        self.calls.append(("propagate", (start_frame_idx, max_frame_num_to_track, reverse)))
        n = state["num_frames"]
        start = min(state["cond"]) if start_frame_idx is None else start_frame_idx
        span = n if max_frame_num_to_track is None else max_frame_num_to_track
        if reverse:
            order = range(start, max(start - span, 0) - 1, -1) if start > 0 else []
        else:
            order = range(start, min(start + span, n - 1) + 1)
        for f in order:
            ids = list(state["obj_ids"])
            masks = np.stack([fake_mask(o, f) for o in ids])[:, None]
            yield f, ids, np.where(masks, 5.0, -5.0).astype(np.float32)

    def close_state(self, state) -> None:
        self.calls.append(("close_state", state["num_frames"]))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    FakePredictor.instances.clear()
    monkeypatch.setattr(track, "make_predictor", FakePredictor)
    return FakePredictor.instances


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------
def test_prompt_groups_follow_frame_and_obj() -> None:
    args = parse(
        "v.mp4", "--out", "o",
        "--point", "10,20",  # frame 0, object 1 (the defaults)
        "--obj", "2", "--box", "1,2,30,40", "--neg-point", "5.5,6",
        "--frame", "4", "--obj", "1", "--point", "7,8",
        "--frame", "0", "--point", "11,12",  # back to (0, 1): merged, in order
    )  # fmt: skip
    groups = track.prompt_groups(args)
    assert [(g.frame, g.obj) for g in groups] == [(0, 1), (0, 2), (4, 1)]
    assert groups[0].points == [(10, 20), (11, 12)] and groups[0].labels == [1, 1]
    assert groups[1].box == (1, 2, 30, 40) and groups[1].labels == [0]
    kw = groups[1].kwargs()
    assert kw["frame_idx"] == 0 and kw["obj_id"] == 2
    assert kw["points"].dtype == np.float32 and kw["points"].tolist() == [[5.5, 6.0]]
    assert kw["labels"].dtype == np.int32 and kw["labels"].tolist() == [0]
    assert kw["box"].tolist() == [1, 2, 30, 40]
    box_only = track.PromptGroup(0, 3, box=(1, 2, 3, 4)).kwargs()
    assert box_only["points"] is None and box_only["labels"] is None
    assert args.format == "png" and args.protocol == "grpc" and args.max_frames is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--point", "10"], "argument --point: --point takes 2 comma-separated numbers"),
        (["--neg-point", "a,b"], "argument --neg-point: --neg-point takes 2"),
        (["--point", "nan,3"], "argument --point"),
        (["--box", "1,2,3"], "argument --box: --box takes 4"),
        (["--box", "30,2,10,40"], "X0 < X1 and Y0 < Y1"),
        (["--box", "1,2,3,4", "--box", "2,3,4,5"], "already has a box"),
        (["--frame", "-1", "--point", "1,2"], "argument --frame: --frame must be an integer >= 0"),
        (["--obj", "x", "--point", "1,2"], "argument --obj: --obj must be an integer"),
        (["--obj", "2", "--obj", "3", "--point", "1,2"], "--obj 2 is followed by --obj 3"),
        (["--point", "1,2", "--max-frames", "-2"], "--max-frames must be an integer >= 0"),
        (["--point", "1,2", "--format", "jpg"], "argument --format: invalid choice"),
    ],
)
def test_parse_errors_name_the_argument(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("v", "--out", "o", *argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give at least one --point"),
        (["--point", "1,2", "--obj", "3"], "--obj 3 is not followed by any --point"),
        (["--frame", "6", "--point", "1,2"], "--frame 6 is out of range: the video has 6 frames"),
        (["--point", "121,5"], "--point 121,5 (object 1, frame 0) is outside the video's 120x90"),
        (["--neg-point", "5,-1"], "--neg-point 5,-1"),
        (["--box", "200,10,300,20"], "does not overlap"),
        (["--point", "1,2", "--start-frame", "9"], "--start-frame 9 is out of range"),
        (["--point", "1,2", "--fps", "0"], "--fps must be a positive number"),
    ],
)
def test_run_errors_name_the_argument(argv, message, video_dir, tmp_path, fake) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["track", str(video_dir), "--out", str(tmp_path / "o"), *argv])
    assert message in str(exc.value.code)
    assert not fake  # nothing was sent


def test_run_error_bad_video(tmp_path, fake) -> None:
    with pytest.raises(SystemExit, match=r"VIDEO .*does not exist"):
        cli.main(["track", str(tmp_path / "nope.mp4"), "--point", "1,2", "--out", str(tmp_path)])


def test_help_has_an_example(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["track", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "sam2-triton track video.mp4 --url localhost:8001" in out
    assert "--frame 40 --obj 2 --point 560,260" in out
    assert "track" in cli.build_parser().format_help()


@pytest.mark.parametrize(
    ("frames", "start", "max_frames", "reverse", "want"),
    [
        ([0], None, None, False, 6),
        ([2, 4], None, None, False, 4),
        ([2], None, 1, False, 2),
        ([2], None, 10, True, 3),
        ([0], None, None, True, 0),
        ([3], 5, None, True, 6),
        ([3], None, 0, False, 1),
    ],
)
def test_expected_frames_is_propagate_order(frames, start, max_frames, reverse, want) -> None:
    groups = [track.PromptGroup(f, 1, [(1.0, 1.0)], [1]) for f in frames]
    assert track.expected_frames(groups, N, start, max_frames, reverse) == want
    state = {"num_frames": N, "obj_ids": [1], "cond": set(frames)}
    got = list(FakePredictor("u", "grpc").propagate_in_video(state, start, max_frames, reverse))
    assert len(got) == want


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _overlay_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("fmt", ["png", "rle"])
def test_mask_writer_and_overlay(fmt: str, tmp_path: Path) -> None:
    h, w = 45, 67  # odd: the overlay pads to even
    masks = {}
    for f in (3, 1, 2):  # arrives out of order
        m = np.zeros((2, h, w), bool)
        m[0, 4:20, 4 + f : 30 + f] = True  # object 7
        m[1, 24:42, 30 + 3 * f : 60 + 3 * f] = True  # object 2
        masks[f] = m
    writer = track.MaskWriter(tmp_path / "out", fmt, (h, w), "clip")
    for f, m in masks.items():
        writer.add(f, [7, 2], np.where(m, 1.5, -1.5)[:, None].astype(np.float32))  # logits
    with pytest.raises(ValueError, match=r"frame 9: expected masks \[2"):
        writer.add(9, [7, 2], np.zeros((2, h + 1, w), bool))
    json_path = writer.close()
    out = tmp_path / "out"
    if fmt == "png":
        assert json_path is None and not (out / "masks.json").exists()
        for f, m in masks.items():
            for k, obj in enumerate((7, 2)):
                png = np.array(Image.open(out / "masks" / f"{f:05d}_obj{obj}.png"))
                assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
                np.testing.assert_array_equal(png == 255, m[k])
    else:
        from pycocotools import mask as mask_utils

        doc = json.loads(json_path.read_text())
        assert not (out / "masks").exists()
        assert (doc["height"], doc["width"], doc["frames"], doc["obj_ids"]) == (
            h,
            w,
            [1, 2, 3],
            [2, 7],
        )
        assert [(a["frame_idx"], a["obj_id"]) for a in doc["annotations"]][:3] == [
            (1, 2), (1, 7), (2, 2)
        ]  # fmt: skip
        for a in doc["annotations"]:
            seg = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
            m = masks[a["frame_idx"]][[7, 2].index(a["obj_id"])]
            np.testing.assert_array_equal(mask_utils.decode(seg).astype(bool), m)
            assert a["area"] == int(m.sum()) and len(a["bbox"]) == 4

    video = load_video([np.full((h, w, 3), 128, np.uint8)] * 4)
    groups = [track.PromptGroup(1, 7, [(5.0, 5.0)], [1], box=(1, 1, 30, 30))]
    n = track.write_overlay(out / "overlay.mp4", video, writer, 12.5, groups)
    frames = _overlay_frames(out / "overlay.mp4")
    assert n == len(frames) == 3
    assert frames[0].shape == (46, 68, 3)
    # frame 3: object 2 (the first sorted id) is tinted with the first palette colour, blue
    rgb = frames[2][:h, :w].astype(int)
    inside = rgb[28:38, 42:56]  # well inside object 2's box on frame 3
    assert (inside[..., 2] - inside[..., 0]).mean() > 60  # bluish: (0, 114, 178) at 50 %
    assert np.abs(rgb[:2] - 128).max() < 12  # untouched grey (rows 0-1: no mask)


def test_run_png_with_fake_predictor(video_dir: Path, tmp_path: Path, fake, capsys) -> None:
    out = tmp_path / "out"
    code = cli.main(
        [
            "track", str(video_dir), "--url", "triton:9001", "--protocol", "http",
            "--obj", "1", "--point", "20,40", "--point", "25,45",
            "--obj", "2", "--box", "10,10,50,50", "--neg-point", "60,60",
            "--frame", "2", "--obj", "1", "--neg-point", "100,80",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    (pred,) = fake
    assert (pred.url, pred.protocol, pred.closed) == ("triton:9001", "http", True)
    (kind, frames), *_ = pred.calls  # the CLI's opened frames, passed through load_video
    assert kind == "init_state" and str(video_dir) in frames.source and len(frames) == N
    assert pred.window == 0
    adds = [c[1] for c in pred.calls if c[0] == "add"]
    assert [(a["frame_idx"], a["obj_id"]) for a in adds] == [(0, 1), (0, 2), (2, 1)]
    assert adds[0]["points"].tolist() == [[20, 40], [25, 45]] and adds[0]["box"] is None
    assert adds[1]["labels"].tolist() == [0] and adds[1]["box"].tolist() == [10, 10, 50, 50]
    assert pred.calls[-2:] == [("propagate", (None, None, False)), ("close_state", N)]
    for f in range(N):
        for obj in (1, 2):
            png = np.array(Image.open(out / "masks" / f"{f:05d}_obj{obj}.png"))
            np.testing.assert_array_equal(png == 255, fake_mask(obj, f))
    assert len(_overlay_frames(out / "overlay.mp4")) == N
    assert "tracked 2 object(s) over 6 frame(s)" in capsys.readouterr().out


def test_run_rle_reverse_default_url(video_dir: Path, tmp_path: Path, fake) -> None:
    out = tmp_path / "out"
    argv = ["track", str(video_dir), "--frame", "4", "--point", "30,40", "--reverse"]
    assert cli.main([*argv, "--max-frames", "2", "--format", "rle", "--no-overlay",
                     "--window", "16", "--out", str(out)]) == 0  # fmt: skip
    (pred,) = fake
    assert pred.window == 16
    assert pred.url == "localhost:8001" and pred.calls[-2] == ("propagate", (None, 2, True))
    doc = json.loads((out / "masks.json").read_text())
    assert doc["frames"] == [2, 3, 4] and doc["obj_ids"] == [1]
    assert not (out / "overlay.mp4").exists() and not (out / "masks").exists()


# --------------------------------------------------------------------------------------------
# end to end: the real sam2_video model
# --------------------------------------------------------------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc"])  # HTTP: tests/test_video.py, same predictor
def test_track_end_to_end(video_triton_server, video_dir: Path, tmp_path: Path, protocol) -> None:
    """Two objects (a click; a box with a background click) on frame 0 and a second click on
    frame 2, tracked for 3 frames (--max-frames 2, to keep CI short): every tracked frame has a
    mask per object, at the video's size, and the overlay has every tracked frame. (The served
    weights are a test export, so the masks' content is not checked here; tests of the
    predictor compare it with SAM 2.)"""
    tracked = 3
    url = video_triton_server.grpc_url if protocol == "grpc" else video_triton_server.http_url
    out = tmp_path / protocol
    argv = [
        "track", str(video_dir), "--url", url, "--protocol", protocol,
        "--obj", "1", "--point", "25,45",
        "--obj", "5", "--box", "5,5,60,80", "--neg-point", "100,10",
        "--frame", "2", "--obj", "1", "--point", "40,45",
        "--max-frames", "2", "--format", "rle", "--out", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    doc = json.loads((out / "masks.json").read_text())
    assert doc["frames"] == list(range(tracked)) and doc["obj_ids"] == [1, 5]
    assert (doc["height"], doc["width"]) == (H, W)
    assert len(doc["annotations"]) == 2 * tracked
    assert all(a["segmentation"]["size"] == [H, W] for a in doc["annotations"])
    assert len(_overlay_frames(out / "overlay.mp4")) == tracked
