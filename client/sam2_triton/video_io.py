"""Video frames as SAM 2's video predictor sees them, without torch.

:func:`load_video` opens a video lazily and returns :class:`VideoFrames`: ``len()``, the
original ``video_height`` / ``video_width``, ``model_input(i)`` (the uint8 ``[3, 1024, 1024]``
model input of frame ``i``) and ``frame(i)`` (the original ``[H, W, 3]`` uint8 RGB frame, e.g.
for overlays). Sources:

* a folder of JPEG frames, listed exactly as ``sam2.utils.misc.load_video_frames_from_jpg_images``
  does (extensions ``.jpg .jpeg .JPG .JPEG``, sorted by ``int(stem)``), each frame read by
  ``_load_img_as_tensor``'s ``np.array(Image.open(p).convert("RGB").resize((1024, 1024)))``
  (Pillow's default resampling, no EXIF transpose). ``model_input(i) / 255`` normalised by
  ``spec.PIXEL_MEAN`` / ``spec.PIXEL_STD`` is SAM 2's frame tensor.
* a video file (MP4 or anything FFmpeg reads), decoded by PyAV (``pip install
  'sam2-triton-client[video]'``) to RGB at its own size, then resized by the same Pillow call.
  SAM 2 decodes MP4 with decord, which lets FFmpeg scale straight to 1024 x 1024 while
  converting from YUV; the model inputs therefore differ slightly (a pixel value or so) from
  SAM 2's for video files, and so can the masks. For SAM 2's exact input, extract the frames
  to JPEG first (``ffmpeg -i video.mp4 -q:v 2 -start_number 0 DIR/'%05d.jpg'``, as SAM 2's
  README says) and pass the folder. Rotation metadata is ignored (as decord does).
* a sequence of ``[H, W, 3]`` uint8 RGB arrays (a list, or one ``[F, H, W, 3]`` array), all of
  the same size, resized by the same Pillow call.

Nothing is decoded up front except, for a video file, one pass that counts the frames.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from . import spec
from .errors import InvalidImageError, InvalidInputError

__all__ = ["JPEG_EXTENSIONS", "VideoFrames", "frame_model_input", "load_video", "VideoSource"]

#: the frame extensions SAM 2's JPEG-folder loader lists (case-sensitive, as SAM 2)
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")

#: what :func:`load_video` accepts
VideoSource = str | os.PathLike | Sequence[np.ndarray] | np.ndarray

_AV_HINT = (
    "reading video files needs PyAV: pip install 'sam2-triton-client[video]' (or "
    "'pip install av'); or pass a folder of JPEG frames"
)


def _to_model(img: Image.Image, size: int) -> np.ndarray:
    """``_load_img_as_tensor``'s resize, as uint8 ``[3, size, size]`` (C-contiguous)."""
    arr = np.array(img.convert("RGB").resize((size, size)))
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class VideoFrames(Sequence):
    """A video's frames, read on demand. ``len()``, ``video_height``, ``video_width``,
    :meth:`model_input`, :meth:`frame`; ``fps`` (frames per second of a video file, else None)
    and ``source`` (a description for messages). Indexing (``frames[i]``) is
    :meth:`model_input`. Thread-safe; :meth:`close` (or ``with``) releases a video file."""

    def __init__(
        self,
        backend: _Backend,
        num_frames: int,
        video_hw: tuple[int, int],
        source: str,
        fps: float | None = None,
        image_size: int = spec.IMAGE_SIZE,
    ) -> None:
        self._backend = backend
        self._n = num_frames
        self.video_height, self.video_width = video_hw
        self.source = source
        self.fps = fps
        self.image_size = image_size
        self._lock = threading.Lock()
        self._cached: tuple[int, Image.Image] | None = None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.model_input(j) for j in range(*i.indices(self._n))]
        return self.model_input(i)

    def __repr__(self) -> str:
        return (
            f"VideoFrames({self.source}, {self._n} frames, {self.video_height}x{self.video_width})"
        )

    def _index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"frame index must be an int, got {type(i).__name__}")
        j = int(i) + self._n if i < 0 else int(i)
        if not 0 <= j < self._n:
            raise IndexError(f"frame index {int(i)} out of range for {self._n} frames")
        return j

    def _pil(self, i: Any) -> Image.Image:
        j = self._index(i)
        with self._lock:
            if self._cached is not None and self._cached[0] == j:
                return self._cached[1]
            img = self._backend.read(j)
            if (img.height, img.width) != (self.video_height, self.video_width):
                raise InvalidImageError(
                    f"frame {j} of {self.source} is {img.height}x{img.width} (HxW), expected "
                    f"{self.video_height}x{self.video_width} like frame 0: every frame of a "
                    "video must have the same size"
                )
            self._cached = (j, img)
            return img

    def model_input(self, i: int) -> np.ndarray:
        """Frame ``i`` as the model input: uint8 ``[3, 1024, 1024]`` RGB (a new array)."""
        return _to_model(self._pil(i), self.image_size)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` at its original size: uint8 ``[H, W, 3]`` RGB (a new array)."""
        return np.array(self._pil(i).convert("RGB"))

    def close(self) -> None:
        with self._lock:
            self._cached = None
            self._backend.close()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Backend:
    def read(self, i: int) -> Image.Image:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class _JpegFolder(_Backend):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def read(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")  # as _load_img_as_tensor (a new, loaded image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidImageError(f"frame {i} ({path!r}) cannot be decoded: {exc}") from exc


class _Arrays(_Backend):
    def __init__(self, frames: Sequence[np.ndarray]) -> None:
        self.frames = frames

    def read(self, i: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.frames[i]))


class _VideoFile(_Backend):
    """Sequential PyAV decoding; going back reopens the file (the predictor reads in order)."""

    def __init__(self, path: str, av: Any) -> None:
        self.path = path
        self.av = av
        self.container: Any = None
        self.frames: Any = None
        self.next_index = 0

    def _open(self) -> None:
        self.close()
        self.container = self.av.open(self.path)
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.frames = self.container.decode(stream)
        self.next_index = 0

    def scan(self) -> tuple[int, tuple[int, int], float | None]:
        """Decode once: frame count, size of frame 0, average frame rate."""
        self._open()
        stream = self.container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else None
        n, hw = 0, None
        for fr in self.frames:
            if hw is None:
                hw = (fr.height, fr.width)
            n += 1
        self.close()
        if n == 0 or hw is None:
            raise InvalidInputError(f"video file {self.path!r} has no video frames")
        return n, hw, fps

    def read(self, i: int) -> Image.Image:
        if self.frames is None or i < self.next_index:
            self._open()
        try:
            while True:
                fr = next(self.frames)
                self.next_index += 1
                if self.next_index - 1 == i:
                    return fr.to_image()  # RGB24 at the video's own size
        except StopIteration:
            raise InvalidInputError(f"video file {self.path!r} ended before frame {i}") from None

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.container = self.frames = None
        self.next_index = 0


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise ImportError(_AV_HINT, name="av") from exc
    return av


def list_jpeg_frames(folder: str) -> list[str]:
    """SAM 2's frame listing of a JPEG folder: paths sorted by ``int(stem)``.

    Raises InvalidInputError for a file with a JPEG extension whose stem is not an integer, and
    for a folder without frames.
    """
    names = [p for p in os.listdir(folder) if os.path.splitext(p)[-1] in JPEG_EXTENSIONS]
    bad = []
    for p in names:
        try:
            int(os.path.splitext(p)[0])
        except ValueError:
            bad.append(p)
    if bad:
        raise InvalidInputError(
            f"JPEG frames in {folder!r} must be named <frame index>.jpg (e.g. 00000.jpg), as SAM 2 "
            f"expects; not an integer: {', '.join(sorted(bad)[:5])}"
            + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
        )
    names.sort(key=lambda p: int(os.path.splitext(p)[0]))
    if not names:
        raise InvalidInputError(
            f"no images found in {folder!r}: expected JPEG frames named <frame index>.jpg "
            f"(extensions {', '.join(JPEG_EXTENSIONS)})"
        )
    return [os.path.join(folder, p) for p in names]


def _check_arrays(frames: Sequence[np.ndarray]) -> tuple[int, int]:
    if len(frames) == 0:
        raise InvalidInputError("the video has no frames (an empty sequence)")
    hw = None
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray):
            raise InvalidImageError(
                f"frame {i} must be a numpy array [H, W, 3] uint8 RGB, got {type(f).__name__}"
            )
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8 or 0 in f.shape:
            raise InvalidImageError(
                f"frame {i} must be [H, W, 3] uint8 RGB, got shape {f.shape} dtype {f.dtype}"
            )
        if hw is None:
            hw = f.shape[:2]
        elif f.shape[:2] != hw:
            raise InvalidImageError(
                f"frame {i} is {f.shape[0]}x{f.shape[1]} (HxW), expected {hw[0]}x{hw[1]} like "
                "frame 0: every frame of a video must have the same size"
            )
    assert hw is not None
    return int(hw[0]), int(hw[1])


def frame_model_input(
    frame: np.ndarray, video_hw: tuple[int, int], image_size: int = spec.IMAGE_SIZE
) -> np.ndarray:
    """One live frame ``[H, W, 3]`` uint8 RGB of a video of size ``video_hw`` as the model input
    uint8 ``[3, image_size, image_size]`` (the resize of :func:`load_video`'s array source)."""
    (h, w) = _check_arrays([frame])
    if (h, w) != tuple(video_hw):
        raise InvalidImageError(
            f"frame is {h}x{w} (HxW), expected {video_hw[0]}x{video_hw[1]}: the stream's size"
        )
    return _to_model(Image.fromarray(np.ascontiguousarray(frame)), image_size)


def load_video(video_path: VideoSource, image_size: int = spec.IMAGE_SIZE) -> VideoFrames:
    """Open a video (a JPEG folder, a video file or a sequence of RGB arrays) lazily; a
    :class:`VideoFrames` is returned as it is.

    See the module docstring for what each source means and how it matches
    ``sam2.utils.misc.load_video_frames``. The frame size is that of frame 0 (JPEG folder,
    video file); a frame of another size is an InvalidImageError when read.

    Raises:
        InvalidInputError: missing path, empty folder/sequence, badly named JPEG frames,
            a video file without video frames or that FFmpeg cannot read.
        InvalidImageError: a bad array frame (names the frame and what was expected), an
            undecodable JPEG frame.
        ImportError: a video file without PyAV installed (names the extra to install).
    """
    if isinstance(video_path, VideoFrames):  # already open: used as is (not a copy)
        return video_path
    if isinstance(video_path, np.ndarray) and video_path.ndim == 4:
        video_path = list(video_path)
    if isinstance(video_path, (str, os.PathLike)):
        path = os.fspath(video_path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if os.path.isdir(path):
            paths = list_jpeg_frames(path)
            with Image.open(paths[0]) as first:
                hw = (first.height, first.width)
            return VideoFrames(
                _JpegFolder(paths), len(paths), hw, f"folder {path!r}", None, image_size
            )
        if not os.path.exists(path):
            raise InvalidInputError(
                f"video {path!r} does not exist (expected a video file or a folder of JPEG frames)"
            )
        av = _import_av()
        backend = _VideoFile(path, av)
        try:
            n, hw, fps = backend.scan()
        except av.FFmpegError as exc:
            backend.close()
            raise InvalidInputError(f"video file {path!r} cannot be decoded: {exc}") from exc
        except IndexError:  # no video stream
            backend.close()
            raise InvalidInputError(f"video file {path!r} has no video stream") from None
        return VideoFrames(backend, n, hw, f"video file {path!r}", fps, image_size)
    if isinstance(video_path, Sequence) and not isinstance(video_path, (bytes, bytearray)):
        frames = list(video_path)
        hw = _check_arrays(frames)
        return VideoFrames(_Arrays(frames), len(frames), hw, "frame arrays", None, image_size)
    raise InvalidInputError(
        "video must be a folder of JPEG frames, a video file path, or a list of [H, W, 3] uint8 "
        f"RGB arrays; got {type(video_path).__name__}"
    )
