"""SAM 2.1 checkpoints: the published table, verified downloads, and safe loading.

``load_model(variant, checkpoint=None, seed=None)`` returns a ``SAM2Base`` built from the
``sam2`` package's own SAM 2.1 config, with weights either from a checkpoint (official
``{"model": state_dict}`` format, ``torch.load(weights_only=True)``) or random:
exactly ``torch.manual_seed(seed)`` then ``build_sam2(config, ckpt_path=None, device="cpu")``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import CheckpointError, DownloadError

logger = logging.getLogger(__name__)

VARIANTS = ("tiny", "small", "base_plus", "large")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CheckpointInfo:
    """One official SAM 2.1 checkpoint: file name, sam2 config, URL, sha256, size in bytes."""

    variant: str
    file: str
    config: str
    url: str
    sha256: str
    bytes: int


def checkpoint_info(variant: str) -> CheckpointInfo:
    """Published facts of a variant's official checkpoint (see ``checkpoints.json``)."""
    table = json.loads(resources.files(__package__).joinpath("checkpoints.json").read_text())
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    entry = table[variant]
    return CheckpointInfo(variant=variant, **entry)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """Where downloaded checkpoints are kept: $SAM2_TRITON_CACHE or ~/.cache/sam2-triton."""
    return Path(os.environ.get("SAM2_TRITON_CACHE", Path.home() / ".cache" / "sam2-triton"))


def download(
    variant: str,
    dest_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download a variant's official checkpoint into ``dest_dir``; see ``download_file``."""
    info = checkpoint_info(variant)
    dest = Path(dest_dir) if dest_dir is not None else default_cache_dir()
    return download_file(info.url, dest / info.file, info.sha256, info.bytes, progress)


def download_file(
    url: str,
    final: Path,
    sha256: str,
    size: int,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download ``url`` to ``final``, verified against ``sha256`` and ``size``.

    The data goes to ``<final>.part`` and is renamed only after size and sha256 match, so a
    partial file never looks complete; an interrupted download resumes from the ``.part`` file
    with an HTTP Range request. An already present, verified file is reused.
    ``progress(done_bytes, total_bytes)`` is called as data arrives.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if sha256_file(final) == sha256:
            return final
        raise DownloadError(
            f"{final} exists but its sha256 does not match the published {sha256}; "
            "delete it and retry"
        )
    part = final.with_name(final.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    if done > size:
        part.unlink()
        done = 0
    request = urllib.request.Request(url, headers={"User-Agent": "sam2-triton"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if done and getattr(response, "status", 200) != 206:
                done = 0  # the server ignored the range: start over
            with open(part, "ab" if done else "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, size)
                out.flush()
                os.fsync(out.fileno())
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(
            f"downloading {url} failed after {done} of {size} bytes ({exc}); "
            f"run the command again to resume from {part}"
        ) from exc
    if done != size:
        raise DownloadError(
            f"{url}: got {done} bytes, expected {size}; run the command again to resume from {part}"
        )
    actual = sha256_file(part)
    if actual != sha256:
        part.unlink()
        raise DownloadError(
            f"{url}: sha256 {actual} does not match the published {sha256}; "
            "the downloaded file was deleted"
        )
    os.replace(part, final)
    return final


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``model`` state dict of an official checkpoint, loaded with ``weights_only=True``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (not a torch.save zip archive; truncated "
            "download or wrong file?)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} contains objects other than tensors; refusing to unpickle it "
            "(weights_only=True)"
        ) from exc
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, dict) or "model" not in obj or not isinstance(obj["model"], dict):
        raise CheckpointError(
            f"{path} is not an official SAM 2 checkpoint: expected a dict with a 'model' "
            f"state dict, got {type(obj).__name__} with keys {sorted(obj)[:5] if isinstance(obj, dict) else '-'}"
        )
    return obj["model"]


def build_model(variant: str, state_dict: dict[str, Any] | None = None, seed: int | None = None):
    """Build SAM 2.1 ``variant`` on CPU in eval mode with the given or random weights."""
    import torch
    from sam2.build_sam import build_sam2

    info = checkpoint_info(variant)
    if state_dict is None:
        if seed is None:
            raise CheckpointError("random weights need a seed")
        torch.manual_seed(seed)
        return build_sam2(info.config, ckpt_path=None, device="cpu")
    model = build_sam2(info.config, ckpt_path=None, device="cpu")
    _check_keys(variant, model, state_dict)
    model.load_state_dict(state_dict)
    return model.eval()


def _check_keys(variant: str, model: Any, state_dict: dict[str, Any]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        hint = ""
        # SAM 2.1 added these; a SAM 2.0 checkpoint lacks them.
        if any(k.startswith(("no_obj_embed_spatial", "obj_ptr_tpos_proj")) for k in missing):
            hint = (
                " This looks like a SAM 2 (2.0) checkpoint; sam2-triton exports SAM 2.1 "
                f"(download sam2.1_hiera_{variant}.pt)."
            )
        raise CheckpointError(
            f"checkpoint does not match the SAM 2.1 {variant} config: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}).{hint}"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint does not match the SAM 2.1 {variant} config: {key} has shape "
                f"{tuple(state_dict[key].shape)}, expected {tuple(tensor.shape)} (another variant?)"
            )


def weights_fingerprint(model: Any) -> tuple[int, int]:
    """Two int32 taken from the sha256 over every weight (names, shapes and bytes, sorted).

    The encoder and decoder of one export both output it, so the client can refuse to decode an
    embedding with another model's decoder.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    raw = digest.digest()[:8]
    return (
        int.from_bytes(raw[:4], "little", signed=True),
        int.from_bytes(raw[4:], "little", signed=True),
    )
