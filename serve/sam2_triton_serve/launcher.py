"""Run the real ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel as a local process.

``find_tritonserver()`` locates the binary, its libraries, the python backend, the
python-backend stub for this Python version and the response-cache plugin inside the installed
wheel. ``LocalTritonServer`` copies the python backend plus the matching stub into a private
temporary directory (never into site-packages or the model repository), starts the server,
waits for ``/v2/health/ready`` and turns Triton's failures into typed errors
(``sam2_triton_serve.errors``). ``serve_main(args)`` is the ``sam2-triton serve`` command.

How the python-backend stub gets this project's environment
-----------------------------------------------------------
The stub embeds the system ``libpython3.X`` in isolated mode: ``PYTHONPATH``/``PYTHONHOME`` are
ignored. It does not know its own prefix, so CPython derives it the way it does for any
embedded interpreter: it looks up the program name ``python3`` on ``PATH`` and follows that
executable's ``pyvenv.cfg``/landmarks to ``sys.prefix`` and its ``site-packages`` (whose ``.pth``
files, including setuptools' editable-install finder, are processed). Triton's own
``EXECUTION_ENV_PATH`` parameter works through exactly this: for a directory it only runs
``source <env>/bin/activate`` (prepending ``<env>/bin`` to ``PATH``) before starting the stub.

So the launcher starts tritonserver with the directory of the running interpreter
(``sys.executable``) first on ``PATH`` (plus ``VIRTUAL_ENV`` when it is a venv). The stub then
runs in the very environment the launcher runs in (same numpy, onnxruntime and
``sam2_triton_serve``), whatever kind it is (venv, conda, plain interpreter), and:

- no machine-specific path is written into committed configs, and nothing into the repository;
- no ``bin/activate`` is required (``EXECUTION_ENV_PATH`` needs one, so it fails for conda and
  non-venv interpreters) and no config rewriting or repository overlay is needed;
- a config that does set ``EXECUTION_ENV_PATH`` still wins (its ``activate`` prepends again);
- another Python on the machine (e.g. a system one with numpy 2) is not picked up, because ours
  comes first on ``PATH``.

The interpreter's own ``libpython`` directory is appended to ``LD_LIBRARY_PATH`` when it holds
the shared library, so the stub loads the libpython that matches the standard library it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

from sam2_triton.spec import DECODER_MODEL, ENCODER_MODEL

from .errors import (
    LauncherError,
    ModelLoadError,
    ModelsNotExportedError,
    PortInUseError,
    ServerStartError,
    ServerStartTimeoutError,
    TritonNotFoundError,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "LocalTritonServer",
    "TritonDistribution",
    "add_serve_arguments",
    "check_models_exported",
    "check_port_free",
    "find_free_ports",
    "find_tritonserver",
    "serve",
    "serve_main",
]

LOGGER = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_MODEL_CONFIG_NAME = "cpu"
DEFAULT_CACHE_SIZE = 256 * 2**20  # bytes for --cache-config local,size=...; about 15 images
DEFAULT_START_TIMEOUT = 300.0  # seconds; loading large encoders on 2 cores takes a while
DEFAULT_STOP_TIMEOUT = 35.0  # Triton waits up to 30 s (--exit-timeout-secs) for in-flight work
POLL_INTERVAL = 0.1
ONNX_FILENAME = "model.onnx"

# Error lines Triton prints on every machine without a GPU; never a reason for a failure.
_HARMLESS = (
    "CudaDriverHelper has not been initialized",
    "Failed to initialize NVML",
    "Unable to allocate pinned system memory",
    "CUDA driver version is insufficient",
    "Unable to get CUDA device count",
    "GPU metrics",
)
_LOG_LINE = re.compile(r'^([EWI])\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\]\s*"?(.*?)"?\s*$')
_LOAD_FAILED = re.compile(r"^failed to load '([^']+)' version (\d+): (.*)$", re.S)
_PORT_TAKEN = re.compile(r"failed to start (\w+) service: .*Socket '([^']*):(\d+)' already in use")
_STATUS_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(UNAVAILABLE: .*?)\s*\|\s*$")


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pieces of Triton live inside the installed ``nvidia-pytriton`` wheel."""

    version: str  # nvidia-pytriton's version
    binary: Path  # bin/tritonserver
    libs_dir: Path  # nvidia_pytriton.libs, for LD_LIBRARY_PATH
    python_backend_dir: Path  # backends/python (libtriton_python.so, utils)
    stub: Path  # python_backend_stubs/<X.Y>/triton_python_backend_stub
    caches_dir: Path  # caches (local response cache plugin), for --cache-directory


def find_tritonserver(python_version: str | None = None) -> TritonDistribution:
    """Locate tritonserver and friends in the installed nvidia-pytriton wheel (imports nothing).

    ``python_version`` ("3.11") selects the stub; default: the running interpreter's.
    """
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    hint = "install the serve extra: pip install 'sam2-triton[serve]' (nvidia-pytriton)"
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(f"nvidia-pytriton is not installed; {hint}")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    try:
        dist_version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        dist_version = "unknown"
    dist = TritonDistribution(
        version=dist_version,
        binary=root / "bin" / "tritonserver",
        libs_dir=package.parent / "nvidia_pytriton.libs",
        python_backend_dir=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        caches_dir=root / "caches",
    )
    for path in (dist.binary, dist.libs_dir, dist.python_backend_dir, dist.caches_dir):
        if not path.exists():
            raise TritonNotFoundError(f"{path} is missing from nvidia-pytriton; {hint}")
    if not dist.stub.is_file():
        stubs = root / "python_backend_stubs"
        have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise TritonNotFoundError(
            f"nvidia-pytriton {dist_version} has no python-backend stub for Python {version} "
            f"({dist.stub} missing; available: {', '.join(have) or 'none'})"
        )
    return dist


def prepare_backend_directory(dist: TritonDistribution, dest: Path) -> Path:
    """Copy the python backend and this Python's stub to ``dest/backends``; return that path."""
    backends = dest / "backends"
    python_dir = backends / "python"
    shutil.copytree(
        dist.python_backend_dir, python_dir, ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy2(dist.stub, python_dir / "triton_python_backend_stub")
    return backends


def find_free_ports(count: int = 3, address: str = DEFAULT_ADDRESS) -> list[int]:
    """Return ``count`` distinct ports that are free on ``address`` right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(_family(address), socket.SOCK_STREAM)
            sock.bind((address, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def check_port_free(address: str, port: int, what: str = "") -> None:
    """Raise ``PortInUseError`` if ``port`` cannot be bound on ``address``."""
    label = f"{what} port" if what else "port"
    with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
        # Like Triton's listeners, tolerate TIME_WAIT leftovers but not a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            raise PortInUseError(
                f"{label} {port} on {address} is already in use ({exc.strerror}); stop the "
                f"process using it or choose another port",
                address=address,
                port=port,
            ) from exc


def check_models_exported(
    repository: Path,
    models: Sequence[str] = (ENCODER_MODEL, DECODER_MODEL),
    python_models: bool = False,
) -> None:
    """Raise ``ModelsNotExportedError`` naming every missing ``<model>/1/model.onnx`` (and,
    for the python-backend CPU flavour, ``<model>/1/model.py``)."""
    names = (ONNX_FILENAME, "model.py") if python_models else (ONNX_FILENAME,)
    missing = [repository / m / "1" / n for m in models for n in names]
    missing = [p for p in missing if not p.is_file()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ModelsNotExportedError(
            f"model repository {repository} has no exported models: missing {names}; "
            f"run `sam2-triton export --output {repository}` first",
            missing=missing,
        )


_STUB_FAILED = re.compile(r"Failed to preinitialize Python stub: ([^\n]*)")


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _connect_host(address: str) -> str:
    """The host a client on this machine uses for a server bound to ``address``."""
    if address in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address == "::":
        return "[::1]"
    return f"[{address}]" if ":" in address else address


def _python_environment(base: Mapping[str, str], libs_dir: Path) -> dict[str, str]:
    """Environment for tritonserver so that the stub runs the current interpreter's packages."""
    env = dict(base)
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "python3").exists():
        LOGGER.warning("%s has no python3; the python backend may use another Python", bin_dir)
    env["PATH"] = os.pathsep.join([str(bin_dir), *filter(None, [env.get("PATH")])])
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    else:
        env.pop("VIRTUAL_ENV", None)
    lib_dirs = [str(libs_dir)]
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        lib_dirs.append(libdir)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [*lib_dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])]
    )
    return env


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse_log(text: str) -> tuple[list[str], dict[str, str], list[tuple[str, str, int]]]:
    """Extract Triton's reasons from a server log.

    Returns ``(reasons, model_failures, port_failures)``: the error lines worth showing, the
    load failure per model (traceback trimmed) and ``(service, address, port)`` bind failures.
    """
    reasons: list[str] = []
    instance_errors: list[str] = []  # backend_model.cc's copy of a model's load failure
    failures: dict[str, str] = {}
    ports: list[tuple[str, str, int]] = []
    for raw in text.splitlines():
        line = raw.strip()
        match = _LOG_LINE.match(line)
        if match and match.group(1) == "E":
            message = _unescape(match.group(2)).split("\n\nAt:")[0].strip()  # no traceback
            if any(h in message for h in _HARMLESS):
                continue
            if message.startswith("ERROR: Failed to create instance:"):
                instance_errors.append(message)
                continue
            load = _LOAD_FAILED.match(message)
            if load:
                failures.setdefault(load.group(1), load.group(3))
                message = f"model '{load.group(1)}' version {load.group(2)}: {load.group(3)}"
            port = _PORT_TAKEN.search(message)
            if port:
                ports.append((port.group(1), port.group(2), int(port.group(3))))
            if "chttp2_server" in line:  # gRPC's verbose duplicate of the bind failure
                continue
            reasons.append(message)
        elif line.startswith("error:") or "error while loading shared libraries" in line:
            reasons.append(line)
        else:
            row = _STATUS_ROW.match(line)
            if row and row.group(1) not in failures:
                failures[row.group(1)] = row.group(3).removeprefix("UNAVAILABLE: ")
                reasons.append(f"model '{row.group(1)}' version {row.group(2)}: {row.group(3)}")
    if not failures:
        reasons = instance_errors + reasons
    return list(dict.fromkeys(reasons)), failures, ports


class LocalTritonServer:
    """A local ``tritonserver`` process serving one model repository; a context manager.

    ``with LocalTritonServer(repo, http_port=0, ...) as server:`` starts it (waiting for
    readiness) and stops it on exit. Ports of 0 are replaced by free ones.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        model_config_name: str | None = DEFAULT_MODEL_CONFIG_NAME,
        http_port: int = DEFAULT_HTTP_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        address: str = DEFAULT_ADDRESS,
        cache_size: int = DEFAULT_CACHE_SIZE,
        required_models: Sequence[str] = (ENCODER_MODEL, DECODER_MODEL),
        log_path: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        distribution: TritonDistribution | None = None,
    ) -> None:
        """Configure (nothing starts yet).

        ``model_config_name``: ``configs/<name>.pbtxt`` per model (None: ``config.pbtxt``).
        ``cache_size``: bytes of Triton's local response cache (0 disables it).
        ``required_models``: models whose ``1/model.onnx`` must exist before starting.
        ``log_path``: file for the server's output (default: in a private temporary directory,
        deleted after a clean stop). ``env``: base environment (default ``os.environ``).
        """
        self.model_repository = Path(model_repository).resolve()
        self.model_config_name = model_config_name
        if 0 in (http_port, grpc_port, metrics_port):
            free = iter(find_free_ports(3, address))
            http_port, grpc_port, metrics_port = (
                p or next(free) for p in (http_port, grpc_port, metrics_port)
            )
        if len({http_port, grpc_port, metrics_port}) != 3:
            raise ValueError(f"ports must differ: {http_port}, {grpc_port}, {metrics_port}")
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.address = address
        self.cache_size = int(cache_size)
        self.required_models = tuple(required_models)
        self._user_log_path = Path(log_path) if log_path is not None else None
        self.extra_args = tuple(extra_args)
        self._base_env = dict(os.environ if env is None else env)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._distribution = distribution
        self._process: subprocess.Popen[bytes] | None = None
        self._runtime_dir: Path | None = None
        self._log_path: Path | None = self._user_log_path
        self._failed = False
        self.start_seconds: float | None = None

    # --- endpoints ---------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """``http://host:port`` of the HTTP/REST endpoint."""
        return f"http://{_connect_host(self.address)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (the form gRPC clients take)."""
        return f"{_connect_host(self.address)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """``http://host:port/metrics`` (Prometheus text format)."""
        return f"http://{_connect_host(self.address)}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        """The server's combined stdout/stderr log (None before ``start``)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self, backend_directory: Path, cache_directory: Path) -> list[str]:
        """The tritonserver command line (binary path excluded)."""
        args = [
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--log-verbose=0",
        ]
        if self.model_config_name:
            args.append(f"--model-config-name={self.model_config_name}")
        if self.cache_size > 0:
            args += [
                f"--cache-config=local,size={self.cache_size}",
                f"--cache-directory={cache_directory}",
            ]
        return [*args, *self.extra_args]

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> LocalTritonServer:
        """Start the server and wait until ``/v2/health/ready`` answers 200; return self."""
        if self._process is not None:
            raise LauncherError("server already started")
        timeout = self.start_timeout if timeout is None else timeout
        if not self.model_repository.is_dir():
            raise ModelsNotExportedError(
                f"model repository {self.model_repository} does not exist; run "
                f"`sam2-triton export --output {self.model_repository}`",
                missing=[self.model_repository],
            )
        check_models_exported(
            self.model_repository,
            self.required_models,
            python_models=self.model_config_name == "cpu",
        )
        for what, port in (
            ("HTTP", self.http_port),
            ("gRPC", self.grpc_port),
            ("metrics", self.metrics_port),
        ):
            check_port_free(self.address, port, what)
        dist = self._distribution or find_tritonserver()

        self._runtime_dir = Path(tempfile.mkdtemp(prefix="sam2-triton-server-"))
        self._failed = False
        backends = prepare_backend_directory(dist, self._runtime_dir)
        self._log_path = self._user_log_path or self._runtime_dir / "tritonserver.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(dist.binary), *self.command(backends, dist.caches_dir)]
        env = _python_environment(self._base_env, dist.libs_dir)
        LOGGER.info("starting tritonserver (nvidia-pytriton %s): %s", dist.version, " ".join(cmd))
        started = time.monotonic()
        try:
            with open(self._log_path, "wb") as log:
                self._process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self._runtime_dir,
                    start_new_session=True,
                )
            self._wait_ready(started + timeout, timeout)
        except BaseException:
            self._failed = True
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        LOGGER.info("tritonserver ready in %.1f s at %s", self.start_seconds, self.http_url)
        return self

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        url = f"{self.http_url}/v2/health/ready"
        assert self._process is not None
        while True:
            code = self._process.poll()
            if code is not None:
                raise self._exit_error(code)
            stub_failure = _STUB_FAILED.search(self.read_log())
            if stub_failure:  # Triton keeps waiting for such a stub; don't wait with it
                raise ModelLoadError(
                    self._describe(
                        "the python backend could not start a model",
                        [stub_failure.group(0).strip()],
                    ),
                    failures={"python_backend": stub_failure.group(1).strip()},
                    reasons=[stub_failure.group(0).strip()],
                    log_path=self._log_path,
                    returncode=None,
                )
            with contextlib.suppress(OSError):  # URLError, refused, reset: not up yet
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        self._confirm_listeners()
                        return
            if time.monotonic() >= deadline:
                reasons, _, _ = parse_log(self.read_log())
                raise ServerStartTimeoutError(
                    self._describe(
                        f"tritonserver was not ready within {timeout:.0f} s",
                        reasons,
                        tail=not reasons,
                    ),
                    reasons=reasons,
                    log_path=self._log_path,
                )
            time.sleep(POLL_INTERVAL)

    def _confirm_listeners(self, limit: float = 10.0) -> None:
        """After ``/ready`` answered 200, make sure all of Triton's listeners are its own.

        Triton binds gRPC, HTTP, then metrics, and exits if one is taken; meanwhile another
        process on a taken port may answer our probe. Wait for Triton's "Started Metrics
        Service" line plus a short settle time, and check that no bind failed.
        """
        assert self._process is not None
        end = time.monotonic() + limit
        settled_at: float | None = None
        while time.monotonic() < end:
            log = self.read_log()
            code = self._process.poll()
            if parse_log(log)[2] or code is not None:
                raise self._exit_error(-1 if code is None else code)
            if settled_at is None and "Started Metrics Service" in log:
                settled_at = time.monotonic() + 0.2
            if settled_at is not None and time.monotonic() >= settled_at:
                return
            time.sleep(0.05)
        if "--allow-metrics=false" not in self.extra_args:
            LOGGER.warning("no 'Started Metrics Service' line in %s", self._log_path)

    def _exit_error(self, code: int) -> LauncherError:
        reasons, failures, ports = parse_log(self.read_log())
        if ports:
            service, address, port = ports[0]
            return PortInUseError(
                f"tritonserver could not bind its {service} port {port} on {address}: already "
                f"in use (Triton: {reasons[0] if reasons else 'socket already in use'}); "
                f"log: {self._log_path}",
                address=address,
                port=port,
            )
        common = {"reasons": reasons, "log_path": self._log_path, "returncode": code}
        if failures:
            reasons = [r for r in reasons if "failed to load all models" not in r]
            common["reasons"] = reasons
            head = "tritonserver failed to load " + ", ".join(f"'{m}'" for m in failures)
            if any("No module named" in f for f in failures.values()):
                reasons.append(
                    f"hint: the python backend runs the environment of {sys.executable}; "
                    f"install sam2-triton[serve] there (numpy<2, onnxruntime)"
                )
            return ModelLoadError(self._describe(head, reasons), failures=failures, **common)
        return ServerStartError(
            self._describe(
                f"tritonserver exited with code {code} while starting", reasons, tail=not reasons
            ),
            **common,
        )

    def _describe(self, head: str, reasons: Sequence[str], tail: bool = False) -> str:
        lines = [head + ":"] if reasons or tail else [head]
        lines += [f"  {r}" for r in reasons]
        if tail:
            lines += [f"  | {t}" for t in self.read_log().splitlines()[-15:]]
        lines.append(f"(full server log: {self._log_path})")
        return "\n".join(lines)

    def read_log(self) -> str:
        """The server log so far ('' if none)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def poll(self) -> int | None:
        """The server's exit code, or None while it runs (or was never started)."""
        return self._process.poll() if self._process else None

    def is_ready(self) -> bool:
        """True if ``/v2/health/ready`` answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit code (idempotent)."""
        process, self._process = self._process, None
        code: int | None = None
        if process is not None:
            timeout = self.stop_timeout if timeout is None else timeout
            if process.poll() is None:
                LOGGER.info("stopping tritonserver (pid %d)", process.pid)
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    LOGGER.warning("tritonserver ignored SIGTERM for %.0f s; killing it", timeout)
                    # Not reaped yet, so its process group (the server and its python-backend
                    # stubs, started with start_new_session) is still the one we created.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
            # python-backend stubs still running after their server exited (a server stopped
            # while it was loading models leaves them behind, orphaned, holding their memory).
            # A process group's id is not reused while a member lives, so this kills only ours.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
                LOGGER.info(
                    "killed python-backend stubs left by tritonserver (pid %d)", process.pid
                )
            if code != 0:
                self._failed = True
        if self._runtime_dir is not None:
            keep_log = self._failed and self._user_log_path is None
            if keep_log:
                shutil.rmtree(self._runtime_dir / "backends", ignore_errors=True)
                LOGGER.info("kept the server log of the failed run: %s", self._log_path)
            else:
                shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        return code

    def __enter__(self) -> LocalTritonServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.poll() is None and self._process else "stopped"
        return f"LocalTritonServer({str(self.model_repository)!r}, {self.http_url}, {state})"


# --- `sam2-triton serve` -------------------------------------------------------------------------
class _StopRequested(Exception):
    """Raised by the SIGINT/SIGTERM handler of ``serve`` to unwind to a clean stop."""


def serve(server: LocalTritonServer, *, out: TextIO | None = None) -> int:
    """Start ``server``, print its endpoints, block until SIGINT/SIGTERM, stop; exit code.

    0 after a requested stop; 1 if the server cannot start or dies on its own. Must run in
    the main thread (it installs signal handlers for its duration and restores them).
    """
    stream = out if out is not None else sys.stdout
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int, frame: object) -> None:
        raise _StopRequested(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in signals}
    try:
        try:
            server.start()
            print(
                f"tritonserver ready in {server.start_seconds:.1f} s "
                f"(repository {server.model_repository})",
                file=stream,
            )
            print(f"  HTTP     {server.http_url}", file=stream)
            print(f"  gRPC     {server.grpc_url}", file=stream)
            print(f"  metrics  {server.metrics_url}", file=stream)
            print(f"  log      {server.log_path}", file=stream)
            print("Press Ctrl+C to stop.", file=stream, flush=True)
            while (code := server.poll()) is None:
                time.sleep(0.5)
            reasons, _, _ = parse_log(server.read_log())
            print(
                f"error: tritonserver exited unexpectedly with code {code} "
                f"(log: {server.log_path})",
                file=sys.stderr,
            )
            for reason in reasons:
                print(f"  {reason}", file=sys.stderr)
            return 1
        except _StopRequested as stop:
            print(f"{stop}: stopping tritonserver ...", file=stream, flush=True)
            return 0
        except LauncherError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for sig in signals:  # a second Ctrl+C must not interrupt the shutdown
                signal.signal(sig, signal.SIG_IGN)
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options ``serve_main`` reads to ``parser``."""
    parser.add_argument(
        "--model-repository",
        default="model_repository",
        type=Path,
        help="model repository (default: ./model_repository)",
    )
    parser.add_argument(
        "--model-config-name",
        default=DEFAULT_MODEL_CONFIG_NAME,
        help="per-model configs/<NAME>.pbtxt; '' uses config.pbtxt (default: cpu)",
    )
    parser.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        help="address to bind HTTP, gRPC and metrics to (default: 127.0.0.1)",
    )
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--cache-size",
        type=int,
        default=DEFAULT_CACHE_SIZE,
        help="response cache size in bytes, 0 disables (default: 256 MiB)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT,
        help="seconds to wait for readiness (default: 300)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="write the server log here (default: a temporary file)",
    )


def serve_main(args: argparse.Namespace) -> int:
    """``sam2-triton serve``: run until SIGINT/SIGTERM; returns the process exit code."""
    try:
        server = LocalTritonServer(
            args.model_repository,
            model_config_name=args.model_config_name or None,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            address=args.address,
            cache_size=args.cache_size,
            log_path=args.log_file,
            start_timeout=args.start_timeout,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve(server)
