"""Shared fixtures: one tiny SAM 2.1 export (seeded random weights) per test session."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

SEED = 0


def export_args(*argv: str) -> argparse.Namespace:
    """Parse ``sam2-triton export`` arguments exactly as the CLI does."""
    from sam2_triton_export import main

    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the tiny variant exported (random weights, seed 0), read-only use."""
    from sam2_triton_export import main

    out = tmp_path_factory.mktemp("export") / "model_repository"
    main.export(
        export_args(
            "--variant", "tiny", "--random-weights", "--seed", str(SEED), "--output", str(out)
        )
    )
    return out


@pytest.fixture(scope="session")
def seed1_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny variant with other random weights (seed 1): another fingerprint."""
    from sam2_triton_export import main

    out = tmp_path_factory.mktemp("seed1") / "model_repository"
    main.export(
        export_args("--variant", "tiny", "--random-weights", "--seed", "1", "--output", str(out))
    )
    return out


@pytest.fixture
def repo_copy(exported_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the exported repository that a test may modify."""
    dst = tmp_path / "model_repository"
    shutil.copytree(exported_repo, dst)
    return dst


@pytest.fixture(scope="session")
def sam2_model():
    """The same seeded SAM 2.1 tiny model the export used, built by sam2 itself."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(SEED)
    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")


@pytest.fixture(scope="session")
def triton_server(exported_repo: Path):
    """The real local tritonserver (CPU flavour) on free ports, serving ``exported_repo``."""
    from sam2_triton_serve.launcher import LocalTritonServer

    with LocalTritonServer(exported_repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


# --- video (sam2-triton export --video) ---------------------------------------------------------
# The smaller video verification set (--video-quick-verify: memory lengths 1 and 7 with
# onnxruntime, one SAM 2 scenario with M=4) keeps this export near 3-4 minutes on 2 cores.
VIDEO_EXPORT_ARGS = (
    "--variant",
    "tiny",
    "--random-weights",
    "--seed",
    str(SEED),
    "--video",
    "--video-quick-verify",
)


@pytest.fixture(scope="session")
def video_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository exported once with ``--video`` (tiny, random weights, seed 0): the image
    models, the five video graphs, ``sam2_video``, ``video_export.json``; read-only use."""
    from sam2_triton_export import main

    out = tmp_path_factory.mktemp("video_export") / "model_repository"
    main.export(export_args(*VIDEO_EXPORT_ARGS, "--output", str(out)))
    return out


@pytest.fixture(scope="session")
def video_triton_server(video_repo: Path):
    """The real local tritonserver (CPU flavour) on free ports, serving ``video_repo``."""
    from sam2_triton_serve.launcher import LocalTritonServer

    with LocalTritonServer(video_repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


# --- text prompts (sam2-triton export --detector) -----------------------------------------------
@pytest.fixture(scope="session")
def detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Grounding DINO model directory (transformers save_pretrained layout) with seeded random
    weights: the "test" architecture (resize 320/480, 100 queries) and a small vocabulary with
    the special tokens at bert-base-uncased's ids."""
    from sam2_triton_export.detector_random import write_random_detector

    return write_random_detector(tmp_path_factory.mktemp("detector"), "test", seed=SEED)


@pytest.fixture(scope="session")
def text_repo(tmp_path_factory: pytest.TempPathFactory, detector_dir: Path) -> Path:
    """A model repository exported once with ``--detector`` (SAM 2.1 tiny, random weights, seed
    0, and the detector of ``detector_dir``); read-only use."""
    from sam2_triton_export import main

    out = tmp_path_factory.mktemp("text_export") / "model_repository"
    main.export(
        export_args(
            "--variant",
            "tiny",
            "--random-weights",
            "--seed",
            str(SEED),
            "--detector",
            str(detector_dir),
            "--output",
            str(out),
        )
    )
    return out


@pytest.fixture(scope="session")
def text_triton_server(text_repo: Path):
    """The real local tritonserver (CPU flavour) on free ports, serving ``text_repo``."""
    from sam2_triton_serve.launcher import LocalTritonServer

    with LocalTritonServer(text_repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server
