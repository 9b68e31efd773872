"""The exported models on the real local tritonserver: health, metadata, outputs, metrics, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from sam2_triton import spec
from sam2_triton_export import verify
from sam2_triton_serve import repository

from .triton_helpers import Requests, metric, metrics_text

pytestmark = pytest.mark.triton
CLI = [sys.executable, "-m", "sam2_triton_app.cli"]


def _client(server, protocol: str):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def _infer(module, client, model: str, arrays: dict[str, np.ndarray], outputs: list[str]):
    inputs = []
    for name, arr in arrays.items():
        inp = module.InferInput(
            name,
            list(arr.shape),
            {
                np.dtype(np.float32): "FP32",
                np.dtype(np.int32): "INT32",
                np.dtype(np.float16): "FP16",
            }[arr.dtype],
        )
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = client.infer(model, inputs, outputs=[module.InferRequestedOutput(o) for o in outputs])
    return [result.as_numpy(o) for o in outputs]


@pytest.fixture(scope="module")
def ort_sessions(exported_repo: Path):
    import onnxruntime as ort

    return {
        m: ort.InferenceSession(str(repository.model_file(exported_repo, m)))
        for m in (spec.ENCODER_MODEL, spec.DECODER_MODEL)
    }


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_and_models_ready(triton_server, protocol: str) -> None:
    _, client = _client(triton_server, protocol)
    assert client.is_server_live() and client.is_server_ready()
    for model in (spec.ENCODER_MODEL, spec.DECODER_MODEL):
        assert client.is_model_ready(model)


def test_metadata_and_config_via_curl(triton_server) -> None:
    def curl(path: str) -> dict:
        out = subprocess.run(
            ["curl", "-sf", f"{triton_server.http_url}{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)

    meta = curl(f"/v2/models/{spec.DECODER_MODEL}")
    assert [i["name"] for i in meta["inputs"]] == [t.name for t in spec.decoder_inputs()]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]}[spec.LOW_RES_MASKS] == "FP32"
    config = curl(f"/v2/models/{spec.ENCODER_MODEL}/config")
    assert config["max_batch_size"] > 1 and config["response_cache"]["enable"] is True
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] > 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_outputs_equal_in_process_onnxruntime(triton_server, ort_sessions, protocol: str) -> None:
    module, client = _client(triton_server, protocol)
    image = verify.model_input(verify.synthetic_image(300, 400, seed=7), "float32")
    names = [t.name for t in spec.encoder_outputs()]
    served = _infer(module, client, spec.ENCODER_MODEL, {spec.ENCODER_IMAGE: image}, names)
    local = ort_sessions[spec.ENCODER_MODEL].run(names, {spec.ENCODER_IMAGE: image})
    for name, a, b in zip(names, served, local):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.abs(a.astype(np.float64) - b).max() <= 1e-5, name
    feeds = dict(zip(spec.FEATURE_NAMES, local[:3]))
    feeds.update(
        {
            spec.POINT_COORDS: np.array([[[300.0, 200.0], [500.0, 700.0]]] * 3, np.float32),
            spec.POINT_LABELS: np.array([[1, 0]] * 3, np.int32),
            spec.MASK_INPUT: np.zeros((1, 1, 256, 256), np.float32),
            spec.HAS_MASK_INPUT: np.zeros(1, np.float32),
        }
    )
    names = [t.name for t in spec.decoder_outputs()]
    served = _infer(module, client, spec.DECODER_MODEL, feeds, names)
    local = ort_sessions[spec.DECODER_MODEL].run(names, feeds)
    for name, a, b in zip(names, served, local):
        assert a.shape == b.shape and np.abs(a.astype(np.float64) - b).max() <= 1e-5, name


def test_wrong_shape_and_dtype_are_rejected_with_400(triton_server) -> None:
    _, client = _client(triton_server, "http")
    with pytest.raises(InferenceServerException) as err:
        _infer(
            httpclient,
            client,
            spec.ENCODER_MODEL,
            {spec.ENCODER_IMAGE: np.zeros((1, 3, 8, 8), np.float32)},
            [spec.IMAGE_EMBED],
        )
    assert err.value.status() == "400" and "'image'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        _infer(
            httpclient,
            client,
            spec.DECODER_MODEL,
            {spec.IMAGE_EMBED: np.zeros((1, 256, 64, 64), np.float16)},
            [spec.LOW_RES_MASKS],
        )
    assert err.value.status() == "400" and "image_embed" in err.value.message()


def test_metrics_count_requests_and_cache_hits(triton_server) -> None:
    before = metrics_text(triton_server.metrics_url)
    module, client = _client(triton_server, "grpc")
    image = verify.model_input(verify.synthetic_image(200, 300, seed=11), "float32")
    requests = Requests(triton_server)
    for _ in range(2):  # the second one is answered by the response cache
        _infer(module, client, spec.ENCODER_MODEL, {spec.ENCODER_IMAGE: image}, [spec.FINGERPRINT])
    requests.settled(spec.ENCODER_MODEL, expect=2)  # statistics follow the responses
    after = metrics_text(triton_server.metrics_url)
    enc = {"model": spec.ENCODER_MODEL}
    assert (
        metric(after, "nv_inference_request_success", **enc)
        - metric(before, "nv_inference_request_success", **enc)
        == 2
    )
    assert (
        metric(after, "nv_cache_num_hits_per_model", **enc)
        - metric(before, "nv_cache_num_hits_per_model", **enc)
        == 1
    )
    assert metric(after, "nv_inference_request_success", model=spec.DECODER_MODEL) >= 0
    assert "nv_inference_request_success" in after and f'model="{spec.DECODER_MODEL}"' in after


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_metrics_exposition_parses_with_promtool(triton_server) -> None:
    text = metrics_text(triton_server.metrics_url)
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    # exit 3: Triton's own names trip promtool's naming lint (no _total suffix); 1: parse error
    assert proc.returncode in (0, 3), proc.stdout + proc.stderr
    assert "error while linting" not in proc.stderr


def test_concurrent_encoder_requests_are_batched(triton_server) -> None:
    requests = Requests(triton_server)
    images = [
        verify.model_input(verify.synthetic_image(120, 160, seed=100 + i), "float32")
        for i in range(4)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(len(images))

    def send(img: np.ndarray) -> None:
        try:
            module, client = _client(triton_server, "grpc")
            start.wait()
            _infer(
                module, client, spec.ENCODER_MODEL, {spec.ENCODER_IMAGE: img}, [spec.FINGERPRINT]
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised below in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(img,)) for img in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # Triton reports statistics just after it sends the responses: wait for all four
    inferences = requests.settled(spec.ENCODER_MODEL, "inferences", expect=4)
    executions = requests.settled(spec.ENCODER_MODEL, "executions")
    assert inferences == 4 and executions < inferences


# --- sam2-triton serve, as users run it ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(repo: Path, *extra: str) -> subprocess.CompletedProcess:
    ports = [
        "--http-port",
        str(_free_port()),
        "--grpc-port",
        str(_free_port()),
        "--metrics-port",
        str(_free_port()),
    ]
    return subprocess.run(
        [*CLI, "serve", "--model-repository", str(repo), *ports, *extra],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_serve_names_a_missing_onnx_file(repo_copy: Path) -> None:
    missing = repository.model_file(repo_copy, spec.DECODER_MODEL)
    missing.unlink()
    proc = _serve(repo_copy)
    assert proc.returncode == 1
    assert str(missing) in proc.stderr and "sam2-triton export" in proc.stderr


def test_serve_names_a_corrupt_onnx_file(repo_copy: Path) -> None:
    corrupt = repository.model_file(repo_copy, spec.DECODER_MODEL)
    corrupt.write_bytes(os.urandom(4096))
    proc = _serve(repo_copy)
    assert proc.returncode == 1
    assert str(corrupt) in proc.stderr and spec.DECODER_MODEL in proc.stderr


def test_serve_says_which_port_is_taken(exported_repo: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [
                *CLI,
                "serve",
                "--model-repository",
                str(exported_repo),
                "--http-port",
                str(port),
                "--grpc-port",
                str(_free_port()),
                "--metrics-port",
                str(_free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1 and str(port) in proc.stderr and "in use" in proc.stderr


def test_serve_prints_endpoints_and_stops_on_sigterm(exported_repo: Path) -> None:
    http = _free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--model-repository",
            str(exported_repo),
            "--http-port",
            str(http),
            "--grpc-port",
            str(_free_port()),
            "--metrics-port",
            str(_free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl+C" in line or time.monotonic() > deadline:
            break
    assert any(f"http://127.0.0.1:{http}" in line for line in lines), lines
    assert httpclient.InferenceServerClient(f"127.0.0.1:{http}").is_server_ready()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", http), timeout=1).close()
