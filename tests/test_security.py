"""Secure defaults, checked on the real local tritonserver and on the source tree (issue 6).

Covered elsewhere, not repeated here:

- the compose file runs Triton as uid 1000, mounts the model repository read-only, uses
  ``--model-control-mode=none``, publishes ports on 127.0.0.1 only and restricts the admin
  APIs behind ``SAM2_TRITON_ADMIN_KEY`` (``tests/test_deploy.py``: statically, and on
  tritonserver with identity models);
- checkpoint downloads are verified by sha256 (``tests/test_download.py``) and checkpoints
  holding pickled objects are refused (``tests/test_export.py::test_pickled_objects_are_refused``).

Here: the SAM 2 models behind the compose file's restricted-API flags, with the client
(admin key over HTTP and gRPC, shared memory), the local server's listening addresses, what an
unrestricted local server still refuses, and no unsafe deserialisation anywhere in the tree.
"""

from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from sam2_triton import Prompt, SAM2Client
from sam2_triton.errors import AccessDeniedError
from sam2_triton_bench.loadtest import (
    listening_pids,
    listening_sockets,
    prediction_digest,
    process_tree,
)
from sam2_triton_serve.launcher import LocalTritonServer, find_free_ports

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-admin-key-" + "0123456789abcdef" * 2
PROMPTS = [Prompt(point_coords=[[20, 30]], point_labels=[1]), Prompt(box=[5, 5, 60, 50])]
HTTP_ADMIN = {"admin-key": KEY}
GRPC_ADMIN = {"triton-grpc-protocol-admin-key": KEY}


def _compose_restriction_flags(key: str) -> list[str]:
    """The compose file's restricted-API flags, with its ``${SAM2_TRITON_ADMIN_KEY...}``."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    flags = [
        a
        for a in compose["services"]["triton"]["command"]
        if a.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))
    ]
    assert len(flags) == 2, flags
    return [re.sub(r"\$\{SAM2_TRITON_ADMIN_KEY[^}]*\}", key, f) for f in flags]


def _http(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def _image() -> np.ndarray:
    return np.random.default_rng(77).integers(0, 256, (72, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def restricted_server(exported_repo: Path):
    """The SAM 2 repository served with docker compose's admin-API restrictions; the
    launcher's default bind address."""
    with LocalTritonServer(
        exported_repo,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        extra_args=_compose_restriction_flags(KEY),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def reference(restricted_server) -> str:
    """Masks through the default client path, without any key: inference stays open."""
    with SAM2Client(restricted_server.grpc_url, "grpc") as client:
        return prediction_digest(client.decode(client.encode(_image()), PROMPTS))


# --- restricted admin APIs ---------------------------------------------------------------------
@pytest.mark.triton
def test_admin_apis_need_the_key_over_http(restricted_server) -> None:
    base = restricted_server.http_url
    restricted = [
        ("/v2/models/stats", None),
        ("/v2/models/sam2_encoder/stats", None),
        ("/v2/models/sam2_encoder/config", None),
        ("/v2/systemsharedmemory/status", None),
        ("/v2/logging", None),
        ("/v2/trace/setting", None),
        ("/v2/repository/index", b"{}"),
    ]
    for path, body in restricted:
        assert _http(base + path, body) == 403, path
        assert _http(base + path, body, HTTP_ADMIN) == 200, path
        assert _http(base + path, body, {"admin-key": "wrong"}) == 403, path
    for path in ("/v2/health/ready", "/v2/models/sam2_encoder", "/v2/models/sam2_decoder"):
        assert _http(base + path) == 200, path  # health and metadata stay open


@pytest.mark.triton
def test_admin_apis_need_the_key_over_grpc(restricted_server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(restricted_server.grpc_url)
    try:
        calls = [
            lambda h: client.get_inference_statistics("sam2_encoder", headers=h),
            lambda h: client.get_model_config("sam2_encoder", headers=h),
            lambda h: client.get_system_shared_memory_status(headers=h),
            lambda h: client.get_log_settings(headers=h),
            lambda h: client.get_model_repository_index(headers=h),
        ]
        for call in calls:
            with pytest.raises(InferenceServerException, match="restricted"):
                call(None)
            call(GRPC_ADMIN)
        assert client.is_model_ready("sam2_decoder")  # health and metadata stay open
        assert client.get_model_metadata("sam2_decoder").name == "sam2_decoder"
    finally:
        client.close()


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_with_the_admin_key_uses_shared_memory(
    restricted_server, reference, protocol: str
) -> None:
    """``use_shared_memory=True`` registers regions through the restricted shared-memory API."""
    url = restricted_server.http_url if protocol == "http" else restricted_server.grpc_url
    headers = HTTP_ADMIN if protocol == "http" else GRPC_ADMIN
    with SAM2Client(
        url, protocol, headers=headers, use_shared_memory=True, use_sessions=False
    ) as client:
        emb = client.encode(_image())
        assert prediction_digest(client.decode(emb, PROMPTS)) == reference
    with SAM2Client(
        url,
        protocol,
        headers={k: "wrong" for k in headers},
        use_shared_memory=True,
        use_sessions=False,
    ) as client:
        with pytest.raises(AccessDeniedError, match="admin key"):
            client.decode(emb, PROMPTS)


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_without_the_key(restricted_server, reference, protocol: str) -> None:
    """Inference needs no key (the client falls back when it cannot read the encoder config);
    shared memory does, and its refusal is the typed AccessDeniedError, never retried."""
    url = restricted_server.http_url if protocol == "http" else restricted_server.grpc_url
    for sessions in (None, False):  # the default path, and features in every request
        with SAM2Client(url, protocol, use_sessions=sessions) as client:
            emb = client.encode(_image())
            assert prediction_digest(client.decode(emb, PROMPTS)) == reference
    with SAM2Client(url, protocol, use_shared_memory=True, use_sessions=False, retries=5) as client:
        emb = client.encode(_image())
        with pytest.raises(AccessDeniedError, match="triton-grpc-protocol-admin-key") as err:
            client.decode(emb, PROMPTS)
        assert isinstance(err.value, PermissionError)


# --- listening addresses -----------------------------------------------------------------------
@pytest.mark.triton
def test_local_server_listens_on_loopback_only(restricted_server) -> None:
    sockets = listening_sockets(process_tree(restricted_server.pid))
    ports = {p for _, p, _ in sockets}
    assert {
        restricted_server.http_port,
        restricted_server.grpc_port,
        restricted_server.metrics_port,
    } <= ports
    assert {a for a, _, _ in sockets} == {"127.0.0.1"}, sockets


@pytest.mark.triton
def test_serve_command_binds_loopback_by_default(exported_repo: Path) -> None:
    http, grpc, metrics = find_free_ports(3)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam2_triton_app.cli",
            "serve",
            "--model-repository",
            str(exported_repo),
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
        output = []
        for line in proc.stdout:
            output.append(line)
            if "Press Ctrl+C" in line:
                break
        else:
            pytest.fail("sam2-triton serve did not start:\n" + "".join(output))
        pids = listening_pids(http)
        assert pids, "nothing listens on the HTTP port"
        sockets = listening_sockets([p for pid in pids for p in process_tree(pid)])
        assert {p for _, p, _ in sockets} >= {http, grpc, metrics}
        assert {a for a, _, _ in sockets} == {"127.0.0.1"}, sockets
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 0


@pytest.mark.triton
def test_unrestricted_local_server_cannot_be_reconfigured(triton_server) -> None:
    """``sam2-triton serve`` has no admin key (loopback only), but Triton itself refuses what
    would change the served models or write files as the server's user."""
    base = triton_server.http_url
    post = {"Content-Type": "application/json"}

    def status(path: str, body: dict) -> int:
        return _http(base + path, json.dumps(body).encode(), post)

    assert status("/v2/logging", {"log_file": "/tmp/sam2-triton-evil.log"}) == 501
    assert status("/v2/trace/setting", {"trace_file": "/tmp/sam2-triton-evil.trace"}) == 501
    assert status("/v2/repository/models/sam2_encoder/unload", {}) >= 400
    assert status("/v2/repository/models/sam2_encoder/load", {}) >= 400
    assert not Path("/tmp/sam2-triton-evil.log").exists()
    time.sleep(0.1)
    assert _http(base + "/v2/health/ready") == 200  # still serving both models


# --- the source tree ---------------------------------------------------------------------------
_SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "__pycache__",
    ".hypothesis",
    "outputs",
    ".pytest_cache",
    ".ruff_cache",
    "node_modules",
    ".pixi",
}


def _tree_files(suffixes: tuple[str, ...]) -> list[Path]:
    out = []
    stack = [ROOT]
    while stack:
        d = stack.pop()
        for p in d.iterdir():
            if p.is_dir():
                if p.name not in _SKIP_DIRS and not p.name.endswith(".egg-info"):
                    stack.append(p)
            elif p.suffix in suffixes:
                out.append(p)
    return out


def _unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Deserialisation that can run code: torch.load without weights_only=True, pickle /
    dill / joblib / cloudpickle loads, numpy loads with allow_pickle=True, yaml.load without
    a safe loader."""
    torch_names = {"torch"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname for a in node.names if a.name == "torch" and a.asname}
        if isinstance(node, ast.ImportFrom) and node.module in (
            "torch",
            "pickle",
            "dill",
            "cloudpickle",
        ):
            for a in node.names:
                if a.name in ("load", "loads"):
                    found.append((node.lineno, f"from {node.module} import {a.name}"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        base = node.func.value
        name = base.id if isinstance(base, ast.Name) else None
        attr = node.func.attr
        kw = {k.arg: k.value for k in node.keywords}

        def true(key: str, kw: dict = kw) -> bool:
            v = kw.get(key)
            return isinstance(v, ast.Constant) and v.value is True

        if name in torch_names and attr == "load" and not true("weights_only"):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in ("pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve") and attr in (
            "load",
            "loads",
            "open",
        ):
            found.append((node.lineno, f"{name}.{attr}"))
        elif name in ("np", "numpy") and attr == "load" and true("allow_pickle"):
            found.append((node.lineno, "numpy.load(allow_pickle=True)"))
        elif name == "yaml" and attr in ("load", "load_all", "unsafe_load", "full_load"):
            loader = kw.get("Loader", node.args[1] if len(node.args) > 1 else None)
            safe = isinstance(loader, ast.Attribute) and loader.attr in (
                "SafeLoader",
                "CSafeLoader",
            )
            if not safe:
                found.append((node.lineno, f"yaml.{attr} without SafeLoader"))
    return found


def test_no_unsafe_deserialisation_in_the_source_tree() -> None:
    problems = []
    py_files = _tree_files((".py",))
    assert any(p.name == "checkpoints.py" for p in py_files)  # the walk sees the product code
    for path in py_files:
        tree = ast.parse(path.read_text(), filename=str(path))
        problems += [
            f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in _unsafe_calls(tree)
        ]
    # examples in documentation and scripts count too
    for path in _tree_files((".md", ".sh", ".toml", ".ipynb", ".txt", ".cfg")):
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                problems.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_the_scan_finds_unsafe_calls() -> None:
    code = """
import torch as T, pickle, numpy as np, yaml
T.load(p)
T.load(p, weights_only=False)
T.load(p, weights_only=True)
pickle.loads(b)
np.load(p, allow_pickle=True)
np.load(p)
yaml.load(s)
yaml.load(s, Loader=yaml.SafeLoader)
yaml.safe_load(s)
"""
    found = _unsafe_calls(ast.parse(code))
    assert [line for line, _ in found] == [3, 4, 6, 7, 9]
