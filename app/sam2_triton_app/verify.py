"""``sam2-triton verify``: how far a running deployment's masks are from exact FP32 SAM 2.

A fixed, seeded set of images and prompts (``verify_cases``) goes through the server with
``SAM2Client`` and through the same ONNX files run in this process by onnxruntime in FP32 on
the CPU, with the SDK's own pre- and post-processing on both sides: the only difference is where
and how the models run (e.g. TensorRT FP16 on a GPU). The weights fingerprints must match first.
Exit code 0: passed; 1: failed (fingerprint, mask count or IoU gate); 2: usage or connection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from sam2_triton import RemoteEmbedding, spec
from sam2_triton.errors import (
    EmbeddingMismatchError,
    InvalidInputError,
    ModelNotReadyError,
    SAM2TritonError,
    ServerUnavailableError,
)

from . import verify_cases as vc

if TYPE_CHECKING:
    from sam2_triton import SAM2Client
    from sam2_triton_bench.baselines import InProcessORT

ADMIN_HEADERS = {"grpc": "triton-grpc-protocol-admin-key", "http": "admin-key"}


class VerifyUsageError(Exception):
    """A problem with the arguments, the local files or the connection (exit code 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the verify options on ``parser``."""
    parser.add_argument(
        "--url",
        default=None,
        help="Triton address host:port (default localhost:8001 for gRPC, localhost:8000 for HTTP)",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=Path("model_repository"),
        help="the export the deployment serves (sam2_encoder/1/model.onnx, "
        "sam2_decoder/1/model.onnx), run here in FP32 as the reference",
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("SAM2_TRITON_ADMIN_KEY"),
        help="admin key of a deployment that restricts the model-config API (docker compose); "
        "default $SAM2_TRITON_ADMIN_KEY",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra header (gRPC metadata) sent with every request; repeatable",
    )
    parser.add_argument("--min-iou", type=float, default=0.99, help="gate: every mask IoU >= this")
    parser.add_argument(
        "--min-mean-iou", type=float, default=0.999, help="gate: mean mask IoU >= this"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{len(vc.QUICK_SHAPES)} of the {len(vc.IMAGE_SHAPES)} images (every prompt kind)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write the report as JSON to PATH ('-' for stdout)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="request timeout, seconds")
    parser.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the server to be ready"
    )


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise VerifyUsageError(f"--header must be NAME=VALUE, got {item!r}")
        headers[name.strip()] = value
    if args.admin_key:
        headers[ADMIN_HEADERS[args.protocol]] = args.admin_key
    return headers


# --- the server's model configs ---------------------------------------------------------------
def _triton_client(url: str, protocol: str, ssl: bool, timeout_s: float) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as grpc

        return grpc.InferenceServerClient(url, ssl=ssl)
    import tritonclient.http as http

    return http.InferenceServerClient(
        url, ssl=ssl, connection_timeout=timeout_s, network_timeout=timeout_s
    )


def _model_info(cfg: dict | None, meta: dict | None) -> dict:
    """Backend, TensorRT, precision and tensor dtypes of one model, from what could be read."""
    info: dict[str, Any] = {"backend": None, "tensorrt": None, "precision_mode": None}
    info["instance_kinds"] = None
    if meta:
        info["platform"] = meta.get("platform") or None
        info["inputs"] = {t["name"]: t["datatype"] for t in meta.get("inputs", [])}
        info["outputs"] = {t["name"]: t["datatype"] for t in meta.get("outputs", [])}
    if cfg:
        info["backend"] = cfg.get("backend") or cfg.get("platform") or None
        accels = cfg.get("optimization", {}).get("execution_accelerators", {})
        trt = [
            a for a in accels.get("gpu_execution_accelerator", []) if a.get("name") == "tensorrt"
        ]
        info["tensorrt"] = bool(trt)
        if trt:
            info["precision_mode"] = trt[0].get("parameters", {}).get("precision_mode", "FP32")
        kinds = [g.get("kind", "KIND_AUTO") for g in cfg.get("instance_group", [])]
        info["instance_kinds"] = sorted(set(kinds)) or None
    return info


def deployment_info(
    url: str, protocol: str, ssl: bool, headers: dict[str, str], timeout_s: float
) -> tuple[dict, list[str]]:
    """The encoder's and decoder's configs as far as the server lets us read them, and what could
    not be checked."""
    from tritonclient.utils import InferenceServerException

    if protocol == "grpc":
        headers = {k.lower(): v for k, v in headers.items()}
    triton = _triton_client(url, protocol, ssl, timeout_s)
    models: dict[str, dict] = {}
    not_checked: list[str] = []
    kw: dict[str, Any] = {"as_json": True} if protocol == "grpc" else {}
    try:
        for model in (spec.ENCODER_MODEL, spec.DECODER_MODEL):
            try:
                meta = triton.get_model_metadata(model, headers=headers or None, **kw)
            except InferenceServerException as exc:
                meta = None
                not_checked.append(f"{model} metadata: {exc.message()}")
            try:
                cfg = triton.get_model_config(model, headers=headers or None, **kw)
                cfg = cfg.get("config", cfg) if protocol == "grpc" else cfg
            except InferenceServerException as exc:
                cfg = None
                text = str(exc)
                if any(s in text for s in ("restricted", "403", "PERMISSION_DENIED")):
                    not_checked.append(
                        f"{model} config (backend, TensorRT, precision_mode): the server "
                        "restricts the model-config API; pass --admin-key"
                    )
                else:
                    not_checked.append(f"{model} config: {exc.message()}")
            models[model] = _model_info(cfg, meta)
    finally:
        triton.close()
    enc = models[spec.ENCODER_MODEL]
    models["image_dtype"] = enc.get("inputs", {}).get(spec.ENCODER_IMAGE)
    models["feature_dtype"] = enc.get("outputs", {}).get(spec.IMAGE_EMBED)
    return models, not_checked


# --- the reference ----------------------------------------------------------------------------
def _reference(repo: Path) -> InProcessORT:
    """The in-process FP32 CPU pipeline on ``repo``'s ONNX files."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        from sam2_triton_bench.baselines import InProcessORT
        from sam2_triton_serve import repository
    except ModuleNotFoundError as exc:
        raise VerifyUsageError(
            f"verify runs the reference with onnxruntime ({exc.name} is missing): "
            "pip install 'sam2-triton[serve]'"
        ) from None

    missing = [
        str(p)
        for p in (repository.model_file(repo, m) for m in (spec.ENCODER_MODEL, spec.DECODER_MODEL))
        if not p.is_file()
    ]
    if missing:
        raise VerifyUsageError(
            f"no exported models in {repo} (missing {', '.join(missing)}): pass "
            "--model-repository with the export the deployment serves"
        )
    errors = (
        ort_errors.Fail,
        ort_errors.InvalidArgument,
        ort_errors.InvalidGraph,
        ort_errors.InvalidProtobuf,
        ort_errors.NoSuchFile,
        ort_errors.RuntimeException,
    )
    try:
        return InProcessORT(repo, providers=["CPUExecutionProvider"])
    except errors as exc:
        raise VerifyUsageError(f"onnxruntime cannot load the models in {repo}: {exc}") from None


def local_fingerprint(reference: InProcessORT) -> list[int]:
    """The decoder ONNX file's weights fingerprint (one decoder run on zero features)."""
    dtypes = {i.name: i.type for i in reference.decoder.get_inputs()}
    feat = np.float16 if dtypes[spec.IMAGE_EMBED] == "tensor(float16)" else np.float32
    feeds = {n: np.zeros((1, *spec.FEATURE_SHAPES[n]), feat) for n in spec.FEATURE_NAMES}
    feeds[spec.POINT_COORDS] = np.zeros((1, 1, 2), np.float32)
    feeds[spec.POINT_LABELS] = np.ones((1, 1), np.int32)
    feeds[spec.MASK_INPUT] = np.zeros((1, 1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE), np.float32)
    feeds[spec.HAS_MASK_INPUT] = np.zeros((1,), np.float32)
    (fingerprint,) = reference.decoder.run([spec.FINGERPRINT], feeds)
    return [int(v) for v in np.asarray(fingerprint).reshape(-1)]


def _manifest_notes(repo: Path) -> list[str]:
    from sam2_triton_serve.repository import MANIFEST_FILENAME

    try:
        manifest = json.loads((repo / MANIFEST_FILENAME).read_text())
    except (OSError, ValueError):
        return [f"{MANIFEST_FILENAME} not readable: the weights of the export are not named"]
    weights = manifest.get("weights", {})
    if weights.get("random"):
        return [
            f"real weights: the export holds RANDOM weights (seed {weights.get('seed')}); "
            "the numbers show the serving path's fidelity, not that of a real checkpoint"
        ]
    return []


# --- the run ----------------------------------------------------------------------------------
def run_cases(
    client: SAM2Client,
    reference: InProcessORT,
    local_fp: list[int],
    shapes: tuple[tuple[int, int], ...],
    log: TextIO,
) -> tuple[list[vc.CaseResult], list[int], bool]:
    """Every case of the images of ``shapes`` through server and reference. Stops after the
    first image when the server's fingerprint differs from ``local_fp``. Returns the results,
    the server's fingerprint and whether it decoded through sessions."""
    results: list[vc.CaseResult] = []
    server_fp: list[int] = []
    sessions = False
    for index, hw in enumerate(vc.IMAGE_SHAPES):
        if hw not in shapes:
            continue
        image = vc.case_image(index, hw)
        served_emb = client.encode(image)
        server_fp = [int(v) for v in np.asarray(served_emb.fingerprint).reshape(-1)]
        sessions = isinstance(served_emb, RemoteEmbedding)
        if server_fp != local_fp:
            return results, server_fp, sessions
        ref_emb = reference.encode(image)
        if [int(v) for v in np.asarray(ref_emb.fingerprint).reshape(-1)] != local_fp:
            raise VerifyUsageError(
                "the local repository's encoder and decoder come from different exports"
            )
        previous: dict[tuple[str, bool], np.ndarray] = {}
        cases = vc.prompt_cases(index, hw)
        for case in cases:
            s_mask = previous.get(("served", case.multimask)) if case.refines else None
            r_mask = previous.get(("reference", case.multimask)) if case.refines else None
            served = client.decode(served_emb, case.prompt(s_mask), multimask_output=case.multimask)
            ref, _ = reference.decode(ref_emb, case.prompt(r_mask), case.multimask)
            if case.kind == "click":
                for side, pred in (("served", served), ("reference", ref)):
                    best = int(np.argmax(pred.scores))
                    previous[(side, case.multimask)] = pred.low_res_logits[best : best + 1]
            results.append(vc.compare(served, ref, hw, case))
        worst = min(v for r in results[-len(cases) :] for v in r.ious)
        print(f"image {hw[0]}x{hw[1]}: {len(cases)} prompts, min IoU {worst:.6f}", file=log)
    return results, server_fp, sessions


def gate(
    overall: dict, fingerprint_ok: bool, problems: list[str], min_iou: float, min_mean: float
) -> dict:
    """The pass/fail decision: which gates failed, and why, in words."""
    failed: dict[str, str] = {}
    if not fingerprint_ok:
        failed["fingerprint"] = (
            "the server's weights fingerprint differs from the local repository's: the "
            "repository is not what the server serves"
        )
    if problems:
        failed["mask_count"] = f"{len(problems)} prompts: {problems[0]}"
    if fingerprint_ok and overall["masks"]:
        if overall["min_iou"] < min_iou:
            failed["min_iou"] = f"min mask IoU {overall['min_iou']:.6f} < {min_iou}"
        if overall["mean_iou"] < min_mean:
            failed["mean_iou"] = f"mean mask IoU {overall['mean_iou']:.6f} < {min_mean}"
    return {
        "min_iou": min_iou,
        "min_mean_iou": min_mean,
        "passed": not failed,
        "failed": list(failed),
        "messages": list(failed.values()),
    }


def verify(args: argparse.Namespace, log: TextIO) -> dict:
    """Run the check; returns the report (raises VerifyUsageError, SAM2TritonError)."""
    from sam2_triton import SAM2Client

    for name in ("min_iou", "min_mean_iou"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise VerifyUsageError(f"--{name.replace('_', '-')} must be in [0, 1]")
    headers = _headers(args)
    started = time.perf_counter()
    reference = _reference(args.model_repository)
    local_fp = local_fingerprint(reference)
    shapes = vc.QUICK_SHAPES if args.quick else vc.IMAGE_SHAPES
    with SAM2Client(args.url, args.protocol, timeout_s=args.timeout, headers=headers) as client:
        url = client.config.url
        client.wait_until_ready(timeout_s=args.wait)
        deployment, not_checked = deployment_info(
            url, args.protocol, client.config.ssl, headers, args.timeout
        )
        results, server_fp, sessions = run_cases(client, reference, local_fp, shapes, log)
    overall = vc.summarize(results)
    match = server_fp == local_fp
    not_checked += _manifest_notes(args.model_repository)
    not_checked += [
        "batched decoder calls: every prompt is decoded in its own request here",
        "your own images and prompts: the set is generated (seeded), not photographs",
    ]
    return {
        "url": url,
        "protocol": args.protocol,
        "model_repository": str(args.model_repository),
        "quick": bool(args.quick),
        "images": [list(hw) for hw in shapes] if match else [],
        "kinds": list(vc.KINDS),
        "deployment": deployment,
        "sessions": sessions,
        "fingerprint": {"server": server_fp, "local": local_fp, "match": match},
        "gate": gate(overall, match, overall["problems"], args.min_iou, args.min_mean_iou),
        "overall": overall,
        "by_kind": vc.by_kind(results),
        "by_image": vc.by_image(results),
        "cases": [r.to_json() for r in results],
        "not_checked": not_checked,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(args: argparse.Namespace) -> int:
    """``sam2-triton verify``; returns the exit code (0 pass, 1 fail, 2 usage/connection)."""
    to_stdout = args.json == "-"
    out = sys.stderr if to_stdout else sys.stdout
    try:
        report = verify(args, sys.stderr)
    except VerifyUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ServerUnavailableError, ModelNotReadyError) as exc:
        where = args.url or "the default address"
        print(f"error: cannot use the server at {where}: {exc}", file=sys.stderr)
        return 2
    except EmbeddingMismatchError as exc:
        print(f"FAIL: the server's encoder and decoder disagree: {exc}", file=sys.stderr)
        return 1
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SAM2TritonError as exc:
        print(f"error: the server failed during the check: {exc}", file=sys.stderr)
        return 2
    print(vc.format_report(report), file=out)
    if args.json:
        text = json.dumps(report, indent=2) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            try:
                Path(args.json).write_text(text)
            except OSError as exc:
                print(f"error: cannot write --json {args.json}: {exc}", file=sys.stderr)
                return 2
            print(f"wrote {args.json}", file=out)
    return 0 if report["gate"]["passed"] else 1
