"""``sam2-triton verify`` against the real local CPU Triton: it passes on the served export, and
fails plainly on other weights (fingerprint) and on a perturbed decoder (the IoU gate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam2_triton import spec
from sam2_triton.prompts import validate_prompt
from sam2_triton_app import cli
from sam2_triton_app import verify_cases as vc
from sam2_triton_serve import repository
from sam2_triton_serve.launcher import LocalTritonServer, find_free_ports

KEY = "verify-admin-key-0123456789abcdef"
RESTRICTED = "model-repository,model-config,shared-memory,statistics,trace,logging"


def _verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# --- without a server ---------------------------------------------------------------------------
def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["verify", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--url", "--model-repository", "--min-iou", "--min-mean-iou", "--quick"):
        assert option in out
    assert "--admin-key" in out and "--json" in out


def test_cases_are_fixed_valid_and_cover_every_kind() -> None:
    assert set(vc.QUICK_SHAPES) <= set(vc.IMAGE_SHAPES)
    assert {(480, 640), (1200, 900), (333, 1024), (64, 96)} <= set(vc.IMAGE_SHAPES)
    for index, hw in enumerate(vc.IMAGE_SHAPES):
        cases = vc.prompt_cases(index, hw)
        assert [c.kind for c in cases] == list(vc.KINDS) * 2
        assert {c.multimask for c in cases} == {True, False}
        assert repr(cases) == repr(vc.prompt_cases(index, hw))  # seeded: the same every run
        assert np.array_equal(vc.case_image(index, hw), vc.case_image(index, hw))
        assert vc.case_image(index, hw).shape == (*hw, 3)
        mask = np.zeros((1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE), np.float32)
        for case in cases:  # the SDK accepts every prompt for its image
            validate_prompt(case.prompt(mask if case.refines else None), case.kind, hw)


def test_closed_port_is_a_clear_usage_error(
    exported_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (port,) = find_free_ports(1)
    code, out, err = _verify(
        capsys,
        "--url",
        f"127.0.0.1:{port}",
        "--model-repository",
        str(exported_repo),
        "--wait",
        "1",
    )
    assert code == 2
    assert f"error: cannot use the server at 127.0.0.1:{port}" in err
    assert "Traceback" not in err + out


def test_missing_repository_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _verify(capsys, "--url", "127.0.0.1:1", "--model-repository", str(tmp_path))
    assert code == 2
    assert "no exported models in" in err and "--model-repository" in err


# --- against the real local Triton (CPU flavour, seed-0 weights) --------------------------------
@pytest.mark.triton
def test_passes_against_the_local_cpu_flavour(
    triton_server: LocalTritonServer,
    exported_repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report_path = tmp_path / "verify.json"
    code, out, err = _verify(
        capsys,
        "--url",
        triton_server.grpc_url,
        "--model-repository",
        str(exported_repo),
        "--quick",
        "--json",
        str(report_path),
    )
    assert code == 0, out + err
    assert "PASS" in out and "Traceback" not in err
    report = _json(report_path)
    assert report["gate"] == {
        "min_iou": 0.99,
        "min_mean_iou": 0.999,
        "passed": True,
        "failed": [],
        "messages": [],
    }
    assert report["fingerprint"]["match"] and report["fingerprint"]["server"]
    assert {(r["kind"], r["multimask"]) for r in report["by_kind"]} == {
        (k, m) for k in vc.KINDS for m in (True, False)
    }
    assert [tuple(r["image"]) for r in report["by_image"]] == list(vc.QUICK_SHAPES)
    assert len(report["cases"]) == len(vc.QUICK_SHAPES) * len(vc.KINDS) * 2
    ious = [v for c in report["cases"] for v in c["ious"]]
    assert ious and all(v == 1.0 or v >= 0.999 for v in ious)
    assert report["overall"]["masks"] == len(ious)
    # the masks are not trivial (neither empty nor the whole image)
    assert 0.05 < report["overall"]["mean_mask_fraction"] < 0.95
    dep = report["deployment"]
    for model in (spec.ENCODER_MODEL, spec.DECODER_MODEL):
        assert dep[model]["backend"] == "python"
        assert dep[model]["tensorrt"] is False
        assert dep[model]["instance_kinds"] == ["KIND_CPU"]
    assert (dep["image_dtype"], dep["feature_dtype"]) == ("FP32", "FP32")
    assert "TensorRT off" in out
    assert any("RANDOM weights" in n for n in report["not_checked"])


@pytest.mark.triton
def test_other_weights_fail_on_the_fingerprint(
    triton_server: LocalTritonServer, seed1_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """HTTP, JSON on stdout: the repository (seed 1) is not what the server serves (seed 0)."""
    code, out, err = _verify(
        capsys,
        "--url",
        triton_server.http_url,
        "--protocol",
        "http",
        "--model-repository",
        str(seed1_repo),
        "--json",
        "-",
    )
    assert code == 1, out + err
    report = json.loads(out)  # stdout holds the JSON alone; the table went to stderr
    assert report["gate"]["failed"] == ["fingerprint"]
    fp = report["fingerprint"]
    assert not fp["match"] and fp["server"] != fp["local"]
    assert "the repository is not what the server serves" in err
    assert "FAIL" in err and "DIFFERENT WEIGHTS" in err
    assert report["cases"] == []


def _perturb_decoder(repo: Path, scale: float = 0.05) -> None:
    """Noise on one mask-decoder weight of the local decoder ONNX; its fingerprint (a constant
    of the graph) stays the same."""
    import onnx
    from onnx import numpy_helper

    path = repository.model_file(repo, spec.DECODER_MODEL)
    model = onnx.load(path)
    (init,) = [
        i for i in model.graph.initializer if i.name == "mask_decoder.output_upscaling.3.weight"
    ]
    weight = numpy_helper.to_array(init).copy()
    weight += (
        np.random.default_rng(0).normal(0, scale * weight.std(), weight.shape).astype(weight.dtype)
    )
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    onnx.save(model, path)


@pytest.mark.triton
def test_a_perturbed_decoder_fails_the_iou_gate(
    triton_server: LocalTritonServer,
    repo_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _perturb_decoder(repo_copy)
    report_path = tmp_path / "verify.json"
    code, out, err = _verify(
        capsys,
        "--url",
        triton_server.grpc_url,
        "--model-repository",
        str(repo_copy),
        "--quick",
        "--json",
        str(report_path),
    )
    assert code == 1, out + err
    report = _json(report_path)
    assert report["fingerprint"]["match"]  # the fingerprint alone does not catch it
    assert report["gate"]["failed"] == ["min_iou", "mean_iou"]
    assert report["overall"]["min_iou"] < 0.99 and report["overall"]["mean_iou"] < 0.999
    assert report["overall"]["max_logit_error"] > 1e-3
    assert "FAIL" in out and "failed: min mask IoU" in out


@pytest.mark.triton
def test_restricted_model_config_needs_the_admin_key(
    exported_repo: Path, seed1_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Docker compose's restrictions: without the key the configs are reported as not checked,
    with ``--admin-key`` they are read. (Other weights locally: both runs stop after one image.)"""
    with LocalTritonServer(
        exported_repo,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        extra_args=[
            f"--http-restricted-api={RESTRICTED}:admin-key={KEY}",
            f"--grpc-restricted-protocol={RESTRICTED}:admin-key={KEY}",
        ],
    ) as server:
        base = ["--url", server.grpc_url, "--model-repository", str(seed1_repo), "--json", "-"]
        code, out, err = _verify(capsys, *base)
        assert code == 1, err
        report = json.loads(out)
        assert report["deployment"][spec.ENCODER_MODEL]["tensorrt"] is None
        assert any(
            "restricts the model-config API; pass --admin-key" in n for n in report["not_checked"]
        )
        assert "TensorRT unknown" in err
        code, out, err = _verify(capsys, *base, "--admin-key", KEY)
        assert code == 1, err
        report = json.loads(out)
        assert report["deployment"][spec.ENCODER_MODEL]["backend"] == "python"
        assert not any("model-config" in n for n in report["not_checked"])
