"""The local Triton launcher and the python-backend model, against the REAL tritonserver.

A throwaway repository with two tiny ONNX models under the real model names (an encoder-like
batched model and a decoder-like one without batch dimension), hand-written CPU-flavour configs
and the committed ``model.py`` shims.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sam2_triton_serve import launcher
from sam2_triton_serve.errors import (
    LauncherError,
    ModelLoadError,
    ModelsNotExportedError,
    PortInUseError,
    ServerStartTimeoutError,
)
from sam2_triton_serve.launcher import LocalTritonServer, find_free_ports

from .triton_helpers import metric

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[1]
ENC, DEC = "sam2_encoder", "sam2_decoder"

ENCODER_CONFIG = """
name: "sam2_encoder"
backend: "python"
max_batch_size: 8
input [{ name: "image", data_type: TYPE_FP32, dims: [3, 4, 4] }]
output [
  { name: "image_embed", data_type: TYPE_FP32, dims: [3, 4, 4] },
  { name: "pooled", data_type: TYPE_FP32, dims: [3] }
]
instance_group [{ kind: KIND_CPU, count: 1 }]
dynamic_batching { max_queue_delay_microseconds: 500000 }
parameters: { key: "ORT_INTRA_OP_THREADS", value: { string_value: "1" } }
"""
# point_coords is looser here ([-1, -1, -1]) than in the ONNX graph ([-1, -1, 2]) so that a
# wrong last dimension passes Triton's own check and reaches the python model's validation.
DECODER_CONFIG = """
name: "sam2_decoder"
backend: "python"
max_batch_size: 0
input [
  { name: "image_embed", data_type: TYPE_FP32, dims: [1, 3, 4, 4] },
  { name: "point_coords", data_type: TYPE_FP32, dims: [-1, -1, -1] }
]
output [{ name: "scores", data_type: TYPE_FP32, dims: [-1, 2] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
parameters: { key: "ORT_INTRA_OP_THREADS", value: { string_value: "0" } }
"""
# The GPU flavour's config.pbtxt: its backend is not installed here, so loading it would fail.
GPU_CONFIG = 'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {mbs}\n'


def _encoder_model():
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 4, 4])
    embed = helper.make_tensor_value_info("image_embed", TensorProto.FLOAT, ["B", 3, 4, 4])
    pooled = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["B", 3])
    nodes = [
        helper.make_node("Mul", ["image", "two"], ["scaled"]),
        helper.make_node("Add", ["scaled", "one"], ["image_embed"]),
        helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
    ]
    inits = [
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    graph = helper.make_graph(nodes, "encoder", [image], [embed, pooled], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _decoder_model():
    from onnx import TensorProto, helper

    embed = helper.make_tensor_value_info("image_embed", TensorProto.FLOAT, [1, 3, 4, 4])
    coords = helper.make_tensor_value_info("point_coords", TensorProto.FLOAT, ["N", "P", 2])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])
    nodes = [
        helper.make_node("ReduceSum", ["point_coords", "axis1"], ["per_prompt"], keepdims=0),
        helper.make_node("ReduceSum", ["image_embed"], ["total"], keepdims=0),
        helper.make_node("Add", ["per_prompt", "total"], ["scores"]),
    ]
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(nodes, "decoder", [embed, coords], [scores], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def make_repository(root: Path) -> Path:
    """Write the throwaway repository; return its path."""
    import onnx

    repo = root / "model_repository"
    for name, model, config, mbs in (
        (ENC, _encoder_model(), ENCODER_CONFIG, 8),
        (DEC, _decoder_model(), DECODER_CONFIG, 0),
    ):
        version = repo / name / "1"
        (repo / name / "configs").mkdir(parents=True)
        version.mkdir()
        onnx.checker.check_model(model)
        onnx.save(model, version / "model.onnx")
        shutil.copy(ROOT / "model_repository" / name / "1" / "model.py", version / "model.py")
        (repo / name / "configs" / "cpu.pbtxt").write_text(config)
        (repo / name / "config.pbtxt").write_text(GPU_CONFIG.format(name=name, mbs=mbs))
    return repo


def reference(repo: Path, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


@pytest.fixture(scope="module", autouse=True)
def _need_triton() -> None:
    try:
        launcher.find_tritonserver()
    except LauncherError as exc:
        pytest.skip(f"no local tritonserver: {exc}")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    repo = make_repository(tmp_path_factory.mktemp("launcher"))
    # Put the base interpreter (outside any venv; may hold numpy 2) first on PATH: the stub
    # must still run the environment of sys.executable.
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(Path(sys.base_prefix) / "bin"), os.environ.get("PATH", "")]),
    )
    with LocalTritonServer(
        repo, http_port=0, grpc_port=0, metrics_port=0, env=env, start_timeout=120
    ) as server:
        yield server


def server_for(repo: Path, **kwargs) -> LocalTritonServer:
    # The log next to the repository (in tmp_path): failed runs leave nothing in /tmp.
    defaults = {
        "start_timeout": 120,
        "http_port": 0,
        "grpc_port": 0,
        "metrics_port": 0,
        "log_path": repo.parent / "tritonserver.log",
    }
    for key, value in defaults.items():
        kwargs.setdefault(key, value)
    return LocalTritonServer(repo, **kwargs)


# --- a running server ----------------------------------------------------------------------------
def test_ready_and_endpoints(running: LocalTritonServer) -> None:
    assert running.is_ready()
    assert running.http_url == f"http://127.0.0.1:{running.http_port}"
    assert running.grpc_url == f"127.0.0.1:{running.grpc_port}"
    assert running.metrics_url.endswith(f":{running.metrics_port}/metrics")
    assert running.log_path is not None and running.log_path.is_file()
    assert running.start_seconds is not None and running.start_seconds < 60
    # The CPU flavour (configs/cpu.pbtxt) was loaded, not the GPU config.pbtxt.
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(running.http_url.removeprefix("http://"))
    assert client.get_model_config(ENC)["backend"] == "python"
    assert client.is_model_ready(ENC) and client.is_model_ready(DEC)


def test_stub_runs_this_environment(running: LocalTritonServer) -> None:
    import numpy

    log = running.read_log()
    assert f"python {sys.prefix}, numpy {numpy.__version__}" in log


def test_http_and_grpc_match_onnxruntime(running: LocalTritonServer) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    rng = np.random.default_rng(0)
    image = rng.random((2, 3, 4, 4), dtype=np.float32)
    embed = rng.random((1, 3, 4, 4), dtype=np.float32)
    coords = rng.random((5, 3, 2), dtype=np.float32)
    want_embed, want_pooled = reference(running.model_repository, ENC, {"image": image})
    (want_scores,) = reference(
        running.model_repository, DEC, {"image_embed": embed, "point_coords": coords}
    )

    for module, url in (
        (httpclient, running.http_url.removeprefix("http://")),
        (grpcclient, running.grpc_url),
    ):
        client = module.InferenceServerClient(url)
        inp = module.InferInput("image", list(image.shape), "FP32")
        inp.set_data_from_numpy(image)
        result = client.infer(ENC, [inp])
        np.testing.assert_array_equal(result.as_numpy("image_embed"), want_embed)
        np.testing.assert_allclose(result.as_numpy("pooled"), want_pooled, rtol=1e-6)
        only = client.infer(ENC, [inp], outputs=[module.InferRequestedOutput("pooled")])
        assert only.as_numpy("image_embed") is None
        np.testing.assert_allclose(only.as_numpy("pooled"), want_pooled, rtol=1e-6)

        inputs = [
            module.InferInput("image_embed", list(embed.shape), "FP32"),
            module.InferInput("point_coords", list(coords.shape), "FP32"),
        ]
        inputs[0].set_data_from_numpy(embed)
        inputs[1].set_data_from_numpy(coords)
        outputs = [module.InferRequestedOutput("scores")]
        result = client.infer(DEC, inputs, outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("scores"), want_scores, rtol=1e-6)


def test_concurrent_requests_are_batched(running: LocalTritonServer) -> None:
    import tritonclient.http as httpclient

    url = running.http_url.removeprefix("http://")
    before = urllib.request.urlopen(running.metrics_url).read().decode()
    count0, exec0 = (
        metric(before, m, model=ENC) for m in ("nv_inference_count", "nv_inference_exec_count")
    )
    images = [np.full((1, 3, 4, 4), i, dtype=np.float32) for i in range(8)]

    def one(image: np.ndarray) -> np.ndarray:
        client = httpclient.InferenceServerClient(url)
        inp = httpclient.InferInput("image", list(image.shape), "FP32")
        inp.set_data_from_numpy(image)
        return client.infer(ENC, [inp]).as_numpy("image_embed")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, images))
    for image, result in zip(images, results):  # each request got its own slice back
        np.testing.assert_array_equal(result, image * 2 + 1)

    after = urllib.request.urlopen(running.metrics_url).read().decode()
    count = metric(after, "nv_inference_count", model=ENC) - count0
    executions = metric(after, "nv_inference_exec_count", model=ENC) - exec0
    assert count == 8
    assert executions < count, f"8 requests ran in {executions} executions: not batched"


def test_wrong_shape_is_a_clear_request_error(running: LocalTritonServer) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(running.http_url.removeprefix("http://"))
    embed = np.zeros((1, 3, 4, 4), np.float32)
    coords = np.zeros((2, 1, 3), np.float32)  # the graph wants [N, P, 2]
    inputs = [
        httpclient.InferInput("image_embed", [1, 3, 4, 4], "FP32"),
        httpclient.InferInput("point_coords", [2, 1, 3], "FP32"),
    ]
    inputs[0].set_data_from_numpy(embed)
    inputs[1].set_data_from_numpy(coords)
    with pytest.raises(InferenceServerException) as info:
        client.infer(DEC, inputs)
    message = str(info.value)
    assert "point_coords" in message and "[2, 1, 3]" in message and "[-1, -1, 2]" in message
    # Triton's own check (config dims) for the encoder, and the server keeps serving.
    bad = httpclient.InferInput("image", [1, 3, 5, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(InferenceServerException, match="image"):
        client.infer(ENC, [bad])
    inputs[1] = httpclient.InferInput("point_coords", [2, 1, 2], "FP32")
    inputs[1].set_data_from_numpy(np.zeros((2, 1, 2), np.float32))
    assert client.infer(DEC, inputs).as_numpy("scores").shape == (2, 2)


# --- failures ------------------------------------------------------------------------------------
def test_port_in_use_is_detected_before_start(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = server_for(repo, grpc_port=port)
        with pytest.raises(PortInUseError) as info:
            server.start()
    assert info.value.port == port
    assert str(port) in str(info.value) and "gRPC" in str(info.value)
    assert server.poll() is None and server.pid is None  # nothing was started


@pytest.mark.parametrize("which", ["http_port", "grpc_port", "metrics_port"])
def test_port_in_use_reported_by_triton(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """A port taken between our check and Triton's bind: Triton's own failure is recognised."""
    repo = make_repository(tmp_path)
    monkeypatch.setattr(launcher, "check_port_free", lambda *a, **k: None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = server_for(repo, **{which: port})
        with pytest.raises(PortInUseError) as info:
            server.start()
    assert info.value.port == port and str(port) in str(info.value)
    assert server.pid is None


def test_missing_model_onnx_names_file(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    missing = repo / ENC / "1" / "model.onnx"
    missing.unlink()
    with pytest.raises(ModelsNotExportedError) as info:
        server_for(repo).start()
    assert str(missing) in str(info.value) and "sam2-triton export" in str(info.value)
    assert info.value.missing == (missing,)


def test_missing_model_onnx_fails_in_the_model(tmp_path: Path) -> None:
    """Without the launcher's pre-check, the python model's own load failure names the file."""
    repo = make_repository(tmp_path)
    missing = repo / DEC / "1" / "model.onnx"
    missing.unlink()
    with pytest.raises(ModelLoadError) as info:
        server_for(repo, required_models=()).start()
    assert set(info.value.failures) == {DEC}
    assert str(missing) in info.value.failures[DEC]
    assert str(missing) in str(info.value)


def test_corrupt_model_onnx_names_file(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    corrupt = repo / ENC / "1" / "model.onnx"
    corrupt.write_bytes(np.random.default_rng(1).bytes(4096))
    server = server_for(repo)
    with pytest.raises(ModelLoadError) as info:
        server.start()
    assert str(corrupt) in str(info.value)
    assert ENC in info.value.failures and str(corrupt) in info.value.failures[ENC]
    assert info.value.log_path is not None and info.value.log_path.is_file()
    assert server.poll() is None and server.pid is None  # the failed server is gone


def test_start_timeout(tmp_path: Path) -> None:
    with pytest.raises(ServerStartTimeoutError, match="not ready within"):
        server_for(make_repository(tmp_path)).start(timeout=0.2)


# --- stopping ------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text()


def test_stop_and_sigterm_are_clean(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    log = tmp_path / "server.log"
    server = server_for(repo, log_path=log)
    with server:
        stubs = _children(server.pid)
        assert stubs, "python-backend stubs should run as children of tritonserver"
        os.kill(server.pid, signal.SIGTERM)  # as an init system would
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.poll() == 0
    assert server.stop() is None  # idempotent
    assert not any(_alive(p) for p in stubs)
    assert log.is_file()  # a log path given by the caller is kept

    second = server_for(repo, log_path=None)
    second.start()
    runtime_log = second.log_path
    assert second.stop() == 0
    assert runtime_log is not None and not runtime_log.exists()  # private temp dir removed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_main_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    repo = make_repository(tmp_path)
    http, grpc, metrics = find_free_ports(3)
    code = (
        "import argparse, sys\n"
        "from sam2_triton_serve.launcher import add_serve_arguments, serve_main\n"
        "p = argparse.ArgumentParser(); add_serve_arguments(p)\n"
        "sys.exit(serve_main(p.parse_args(sys.argv[1:])))\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "--model-repository",
            str(repo),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Press Ctrl+C" in line:
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{http}" in output and f"127.0.0.1:{grpc}" in output
        assert f"127.0.0.1:{metrics}/metrics" in output
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output + rest
    with socket.socket() as probe:  # the port is free again: the server is gone
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", http))
