"""Checks of the GPU deployment: docker-compose.yml, the derived server image
(docker/Dockerfile, .dockerignore, the wheels it installs), Prometheus/Grafana files, pixi.toml.

No Docker engine or GPU is needed. Compose files are rendered with `docker-compose config`
(or `docker compose config`), Prometheus files are checked with `promtool`; tests that need a
missing tool are skipped with the reason. One test (marker `triton`) starts the real
tritonserver shipped by nvidia-pytriton with the command-line flags taken from the rendered
compose file, to prove that Triton accepts them, that the restricted APIs really need the
admin key, and that the metric names the Grafana dashboard uses exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from sam2_triton_serve import repository

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11+
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SETUP_MD = ROOT / "SETUP.md"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "sam2-triton.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards"
PIXI_TOML = ROOT / "pixi.toml"
PYPROJECT = ROOT / "pyproject.toml"

TEST_KEY = "test-admin-key-0123456789abcdef"
ADMIN_APIS = {"model-repository", "model-config", "shared-memory", "statistics", "trace", "logging"}
OPEN_APIS = {"health", "metadata", "inference"}

# Metric names Triton exposes. All but the GPU ones were read from a running tritonserver
# (2.51, nvidia-pytriton 0.7.0) with the compose file's flags, response cache and
# summary_latencies on; the GPU ones (not exposed without NVML) are from Triton's metrics
# documentation (docs/user_guide/metrics.md, 2.68.0) and carry the label gpu_uuid.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_request_summary_us",
    "nv_inference_queue_summary_us",
    "nv_inference_compute_input_summary_us",
    "nv_inference_compute_infer_summary_us",
    "nv_inference_compute_output_summary_us",
    "nv_cache_num_hits_per_model",
    "nv_cache_num_misses_per_model",
    "nv_cache_hit_duration_per_model",
    "nv_cache_miss_duration_per_model",
    "nv_cache_hit_summary_per_model",
    "nv_cache_miss_summary_per_model",
    "nv_cache_num_entries",
    "nv_cache_num_lookups",
    "nv_cache_num_hits",
    "nv_cache_num_misses",
    "nv_cache_num_evictions",
    "nv_cache_util",
    "nv_cpu_utilization",
    "nv_cpu_memory_used_bytes",
    "nv_cpu_memory_total_bytes",
    "nv_pinned_memory_pool_total_bytes",
    "nv_pinned_memory_pool_used_bytes",
}
TRITON_GPU_METRICS = {
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}
PROMETHEUS_METRICS = {"up"}  # written by Prometheus itself for every scrape target
# Custom metrics of the sam2_session model (pb_utils.MetricFamily in
# server/sam2_triton_server/session.py), on Triton's metrics port; tests/test_sessions.py
# checks that the real server exposes every one the dashboard uses.
SESSION_METRICS = {
    "sam2_session_images",
    "sam2_session_bytes",
    "sam2_session_budget_bytes",
    "sam2_session_hits_total",
    "sam2_session_misses_total",
    "sam2_session_evictions_total",
}
ALLOWED_METRICS = TRITON_METRICS | TRITON_GPU_METRICS | PROMETHEUS_METRICS | SESSION_METRICS

SPEC_VARIANTS = {"tiny", "small", "base_plus", "large"}


# --------------------------------------------------------------------------------------------
# helpers


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


COMPOSE = _compose_cmd()
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="neither docker-compose nor the docker compose plugin is installed"
)
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)


def _run_compose(
    args: list[str], env_overrides: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess:
    """Run compose on the repository's file with a clean environment and an empty env file,
    so that a developer's own .env or shell variables cannot change the result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAM2_", "COMPOSE_"))}
    env.update(env_overrides)
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    cmd = [*COMPOSE, "--env-file", str(empty_env), "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _render(env_overrides: dict[str, str], tmp_path: Path, profile: str | None = None) -> dict:
    args = (["--profile", profile] if profile else []) + ["config"]
    proc = _run_compose(args, env_overrides, tmp_path)
    assert proc.returncode == 0, f"compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    if COMPOSE is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    # with the monitoring profile: compose v2 leaves profiled services out otherwise
    return _render(
        {"SAM2_TRITON_ADMIN_KEY": TEST_KEY}, tmp_path_factory.mktemp("compose"), "monitoring"
    )


@pytest.fixture(scope="module")
def triton_service(rendered) -> dict:
    return rendered["services"]["triton"]


def _flag(command: list[str], name: str) -> list[str]:
    """Values of --name=value flags in a command list."""
    prefix = f"--{name}="
    return [c[len(prefix) :] for c in command if c.startswith(prefix)]


def _volumes(service: dict) -> list[dict]:
    """Volume mounts in long form, whatever syntax compose rendered."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append(
                {
                    "source": v.get("source"),
                    "target": v["target"],
                    "read_only": bool(v.get("read_only")),
                }
            )
        else:
            parts = v.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            out.append({"source": parts[0], "target": parts[1], "read_only": "ro" in mode})
    return out


def _ports(service: dict) -> list[tuple[str, int, int]]:
    """(host_ip, published, target) for each published port, whatever syntax compose used."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", "0.0.0.0"), int(p["published"]), int(p["target"])))
        else:
            spec = p.split("/")[0]
            parts = spec.split(":")
            if len(parts) == 3:
                out.append((parts[0], int(parts[1]), int(parts[2])))
            elif len(parts) == 2:
                out.append(("0.0.0.0", int(parts[0]), int(parts[1])))
            else:
                raise AssertionError(f"port without a host side: {p}")
    return out


def _seconds(duration) -> float:
    """Compose durations: '20m', '1h30m', '90s', or a number of nanoseconds."""
    if isinstance(duration, (int, float)):
        return duration / 1e9
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", duration):
        total += (
            float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
        )
    return total


def _restricted(command: list[str], flag: str) -> tuple[set[str], str, str]:
    values = _flag(command, flag)
    assert len(values) == 1, f"expected exactly one --{flag}"
    apis, kv = values[0].rsplit(":", 1)
    key, value = kv.split("=", 1)
    return set(apis.split(",")), key, value


# --------------------------------------------------------------------------------------------
# docker-compose.yml


@needs_compose
def test_compose_refuses_to_render_without_admin_key(tmp_path):
    proc = _run_compose(["config"], {}, tmp_path)
    assert proc.returncode != 0
    assert "SAM2_TRITON_ADMIN_KEY" in proc.stderr


@needs_compose
def test_compose_refuses_empty_admin_key(tmp_path):
    proc = _run_compose(["config"], {"SAM2_TRITON_ADMIN_KEY": ""}, tmp_path)
    assert proc.returncode != 0
    assert "SAM2_TRITON_ADMIN_KEY" in proc.stderr


@needs_compose
def test_monitoring_profile_renders(tmp_path):
    proc = _run_compose(
        ["--profile", "monitoring", "config", "--services"],
        {"SAM2_TRITON_ADMIN_KEY": TEST_KEY},
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    services = set(proc.stdout.split())
    assert {"triton", "prometheus", "grafana"} <= services


def test_admin_key_is_never_in_the_file():
    text = COMPOSE_FILE.read_text()
    # both restricted flags take the key from the environment, with no default value
    assert text.count("admin-key=${SAM2_TRITON_ADMIN_KEY:?") == 2
    uses = re.findall(r"\$\{SAM2_TRITON_ADMIN_KEY([^}]*)\}", text)
    assert len(uses) == 2 and all(u.startswith(":?") for u in uses), uses


NGC_IMAGE = re.compile(r"nvcr\.io/nvidia/tritonserver:(\d{2}\.\d{2})-py3(@sha256:[0-9a-f]{64})?")


def test_triton_image_is_pinned(rendered):
    images = {name: svc["image"] for name, svc in rendered["services"].items()}
    # triton runs the image derived from the pinned NGC image (its build argument)
    assert NGC_IMAGE.fullmatch(rendered["services"]["triton"]["build"]["args"]["TRITON_IMAGE"])
    for name, image in images.items():
        repo_tag = image.split("@")[0]
        assert ":" in repo_tag.rsplit("/", 1)[-1], f"{name}: image {image} has no tag"
        assert not repo_tag.endswith(":latest"), f"{name}: image {image} is not pinned"


def test_triton_command(triton_service):
    cmd = triton_service["command"]
    assert isinstance(cmd, list) and cmd[0] == "tritonserver"
    assert _flag(cmd, "model-repository") == ["/models"]
    assert _flag(cmd, "model-control-mode") == ["none"]
    assert _flag(cmd, "strict-readiness") == ["true"]
    assert _flag(cmd, "exit-on-error") == ["true"]
    assert _flag(cmd, "allow-gpu-metrics") == ["true"]
    assert _flag(cmd, "metrics-port") == ["8002"]
    assert "summary_latencies=true" in _flag(cmd, "metrics-config")
    (cache,) = _flag(cmd, "cache-config")
    assert re.fullmatch(r"local,size=\d+", cache), cache
    assert int(cache.split("=")[1]) == 268435456  # default of SAM2_TRITON_CACHE_BYTES


@pytest.mark.parametrize("flag", ["http-restricted-api", "grpc-restricted-protocol"])
def test_admin_apis_are_restricted(triton_service, flag):
    apis, key, value = _restricted(triton_service["command"], flag)
    assert apis == ADMIN_APIS
    assert not apis & OPEN_APIS
    assert key == "admin-key"
    assert value == TEST_KEY


def test_model_repository_read_only_and_engine_cache_writable(rendered, triton_service):
    mounts = {m["target"]: m for m in _volumes(triton_service)}
    assert mounts["/models"]["read_only"]
    assert Path(mounts["/models"]["source"]).name == "model_repository"
    assert mounts["/engine_cache"]["source"] == "engine_cache"
    assert not mounts["/engine_cache"]["read_only"]
    assert "engine_cache" in rendered["volumes"]


def test_triton_runs_as_non_root(rendered, triton_service):
    assert str(triton_service["user"]) == "1000:1000"
    assert not triton_service.get("privileged", False)
    assert "ALL" in triton_service.get("cap_drop", [])
    assert "no-new-privileges:true" in triton_service.get("security_opt", [])


def _dockerfile_engine_cache() -> tuple[set[str], str]:
    """The folders the server image creates under /engine_cache, and its RUN line doing it."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (run,) = [line for line in text.splitlines() if line.startswith("RUN mkdir -p /engine_cache")]
    return set(re.findall(r"(/engine_cache/\w+)", run)), run


def test_engine_cache_needs_no_init_job_and_survives_restarts(rendered, triton_service):
    """A root init job with only CAP_CHOWN could not re-enter the volume it had given to uid 1000
    (mode 0750): every start after the first failed, and Triton never started. The server image
    owns /engine_cache as uid 1000 instead; Docker fills a new named volume from it (no
    `nocopy`), so no job has to run, on the first start or any later one."""
    services = rendered["services"]
    assert not [
        n
        for n, svc in services.items()
        if "/engine_cache" in {m["target"] for m in _volumes(svc)} and n != "triton"
    ], "an init job is back"
    assert "depends_on" not in triton_service
    (mount,) = [m for m in _volumes(triton_service) if m["target"] == "/engine_cache"]
    assert mount["source"] in rendered["volumes"]  # a named volume, not a bind mount
    assert "nocopy" not in COMPOSE_FILE.read_text()  # Docker copies the image's folder in
    folders, run = _dockerfile_engine_cache()
    assert "chown -R 1000:1000 /engine_cache" in run and "chmod -R 0750 /engine_cache" in run
    assert {"/engine_cache/sam2_encoder", "/engine_cache/sam2_decoder"} <= folders


def test_model_configs_cache_engines_in_the_volume(rendered):
    """The GPU configs' TensorRT engine/timing cache paths lie in the engine-cache volume, in the
    per-model folders that the server image creates for uid 1000."""
    configs = sorted((ROOT / "model_repository").glob("*/config.pbtxt"))
    folders, _ = _dockerfile_engine_cache()
    checked = 0
    for cfg in configs:
        text = cfg.read_text()
        paths = re.findall(r'key:\s*"trt_(?:engine|timing)_cache_path"\s*value:\s*"([^"]+)"', text)
        for path in paths:
            assert path == f"/engine_cache/{cfg.parent.name}", f"{cfg}: {path}"
            assert path in folders, f"docker/Dockerfile does not create {path}"
            checked += 1
    assert checked == 4  # engine + timing cache of the encoder and of the decoder
    # the TensorRT video graphs of `sam2-triton export --video` too
    video = repository.config_files(video=True)
    video_paths = {
        path
        for rel, text in video.items()
        if rel.endswith("/config.pbtxt")
        for path in re.findall(
            r'key:\s*"trt_(?:engine|timing)_cache_path"\s*value:\s*"([^"]+)"', text
        )
    }
    assert len(video_paths) == 5 and video_paths <= folders, video_paths - folders
    # and the detector graphs of `sam2-triton export --detector`
    text = repository.config_files(detector=True)
    text_paths = (
        {
            path
            for rel, body in text.items()
            if rel.endswith("/config.pbtxt")
            for path in re.findall(
                r'key:\s*"trt_(?:engine|timing)_cache_path"\s*value:\s*"([^"]+)"', body
            )
        }
        - video_paths
        - {"/engine_cache/sam2_encoder", "/engine_cache/sam2_decoder"}
    )
    assert len(text_paths) == 2 and text_paths <= folders, text_paths - folders


def test_healthcheck_waits_for_engine_builds(triton_service):
    hc = triton_service["healthcheck"]
    assert "http://localhost:8000/v2/health/ready" in hc["test"]
    assert "curl" in hc["test"]
    assert _seconds(hc["start_period"]) >= 10 * 60


def test_gpu_reservation(triton_service, tmp_path):
    (dev,) = triton_service["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia"
    assert "gpu" in dev["capabilities"]
    assert dev["device_ids"] == ["0"]
    if COMPOSE is not None:
        svc = _render({"SAM2_TRITON_ADMIN_KEY": TEST_KEY, "SAM2_TRITON_GPUS": "1,2"}, tmp_path)
        devs = svc["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
        assert devs[0]["device_ids"] == ["1,2"]


def test_ports_default_to_loopback(triton_service):
    ports = {target: (ip, published) for ip, published, target in _ports(triton_service)}
    assert set(ports) == {8000, 8001, 8002}
    assert all(ip == "127.0.0.1" for ip, _ in ports.values())
    assert {t: p for t, (_, p) in ports.items()} == {8000: 8000, 8001: 8001, 8002: 8002}


@needs_compose
def test_bind_address_override_keeps_metrics_local(tmp_path):
    cfg = _render({"SAM2_TRITON_ADMIN_KEY": TEST_KEY, "SAM2_TRITON_BIND": "0.0.0.0"}, tmp_path)
    ports = {t: ip for ip, _, t in _ports(cfg["services"]["triton"])}
    assert ports == {8000: "0.0.0.0", 8001: "0.0.0.0", 8002: "127.0.0.1"}


def test_shm_and_ulimits(triton_service):
    assert str(triton_service["shm_size"]).lower() in {"2gb", "2g", str(2 * 1024**3)}
    ul = triton_service["ulimits"]

    def soft_hard(v):
        return (v["soft"], v["hard"]) if isinstance(v, dict) else (v, v)

    assert soft_hard(ul["memlock"]) == (-1, -1)
    assert soft_hard(ul["stack"]) == (67108864, 67108864)


def test_monitoring_services(rendered):
    svcs = rendered["services"]
    for name in ("prometheus", "grafana"):
        assert svcs[name]["profiles"] == ["monitoring"]
        for ip, _, _ in _ports(svcs[name]):
            assert ip == "127.0.0.1"
    prom_mounts = {m["target"]: m for m in _volumes(svcs["prometheus"])}
    prom_cfg = prom_mounts["/etc/prometheus/prometheus.yml"]
    assert prom_cfg["read_only"] and Path(prom_cfg["source"]) == PROMETHEUS_YML
    assert "--config.file=/etc/prometheus/prometheus.yml" in svcs["prometheus"]["command"]
    graf_mounts = {m["target"]: m for m in _volumes(svcs["grafana"])}
    assert Path(graf_mounts["/etc/grafana/provisioning"]["source"]) == GRAFANA_DIR / "provisioning"
    assert Path(graf_mounts["/etc/grafana/dashboards"]["source"]) == GRAFANA_DIR / "dashboards"
    assert graf_mounts["/etc/grafana/provisioning"]["read_only"]
    assert graf_mounts["/etc/grafana/dashboards"]["read_only"]


def test_env_example_documents_every_variable():
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    assert env["SAM2_TRITON_ADMIN_KEY"] == "", ".env.example must not carry a real key"
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    assert used, "compose file uses no variables?"
    assert used <= set(env), f"not in .env.example: {sorted(used - set(env))}"


# --------------------------------------------------------------------------------------------
# the derived server image: docker/Dockerfile, .dockerignore and the wheels it installs

IMAGE_PACKAGES = {
    "sam2-triton-client",
    "sam2-triton-server",
    "pillow",
    "pycocotools",
    "tokenizers",
}
FORBIDDEN_IN_IMAGE = ("torch", "onnxruntime", "tritonclient", "numpy")  # name prefixes


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker also drops comment lines inside a continuation
        if stripped.endswith("\\"):
            buf += stripped[:-1].rstrip() + " "
            continue
        word, _, rest = (buf + stripped).partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation"
    return out


def _dockerfile_args() -> dict[str, str]:
    """Default values of the ARGs declared before the first FROM (the pinned versions)."""
    args = {}
    for word, rest in _dockerfile():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip().strip('"')
    return args


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _dockerfile():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages


def _pip_commands(kind: str) -> list[list[str]]:
    """Arguments after `pip <kind>` of every RUN, with the ARG defaults substituted."""
    args = _dockerfile_args()
    found = []
    for word, rest in _dockerfile():
        if word != "RUN":
            continue
        text = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        tokens = shlex.split(text)
        commands, current = [], []
        for tok in tokens:
            if tok in ("&&", "||", ";"):
                commands.append(current)
                current = []
            else:
                current.append(tok)
        commands.append(current)
        for cmd in commands:
            if "pip" in cmd and cmd[cmd.index("pip") + 1 : cmd.index("pip") + 2] == [kind]:
                found.append(cmd[cmd.index("pip") + 2 :])
    return found


def _positionals(cmd: list[str], with_value=("--target", "-t", "--wheel-dir", "-w")) -> list[str]:
    out, skip = [], False
    for tok in cmd:
        if skip:
            skip = False
        elif tok in with_value:
            skip = True
        elif not tok.startswith("-"):
            out.append(tok)
    return out


def _dist_name(requirement: str) -> str:
    if requirement.endswith(".whl"):  # a wheel file: its name is the distribution's
        requirement = Path(requirement).name.split("-", 1)[0]
    return _req_name(requirement)


def test_compose_builds_and_tags_the_derived_image(triton_service):
    build = triton_service["build"]
    assert Path(build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    image = triton_service["image"]
    version = re.search(
        r'^version = "([^"]+)"', (ROOT / "server" / "pyproject.toml").read_text(), re.M
    )
    release = NGC_IMAGE.fullmatch(build["args"]["TRITON_IMAGE"]).group(1)
    # <server package version>-<NGC release>: a new base or a new release is a new tag
    assert image == f"sam2-triton-server:{version.group(1)}-{release}", image
    assert image in SETUP_MD.read_text(), "SETUP.md does not name the image compose builds"


def test_dockerfile_base_is_the_compose_pin():
    """The one ARG that names the NGC image defaults to the image compose pins (the
    `x-triton-image` anchor, which compose also passes as that build argument)."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())  # anchors resolved, no compose needed
    pinned = compose["x-triton-image"]
    assert NGC_IMAGE.fullmatch(pinned), pinned
    assert _dockerfile_args()["TRITON_IMAGE"] == pinned
    triton = compose["services"]["triton"]
    assert triton["build"]["args"]["TRITON_IMAGE"] == pinned
    stages = _stages()
    assert len(stages) == 2, "expected a builder stage and the final stage"
    assert stages[-1][0][1] == "${TRITON_IMAGE}"  # the final stage is the pinned NGC image
    # the builder's Python is the NGC image's (3.12): cp312 wheels and 3.12 byte code
    assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?", _dockerfile_args()["BUILDER_IMAGE"])
    assert stages[0][0][1].split()[0] == "${BUILDER_IMAGE}"


def test_dockerfile_installs_exactly_the_server_packages():
    args = _dockerfile_args()
    (wheel_cmd,) = _pip_commands("wheel")
    assert "--no-deps" in wheel_cmd
    assert _positionals(wheel_cmd) == ["./client", "./server"]
    (install,) = _pip_commands("install")  # one pip install, in the builder stage
    assert "--no-deps" in install and "--only-binary=:all:" in install
    assert install[install.index("--target") + 1] == "/opt/sam2-triton"
    reqs = _positionals(install)
    assert {_dist_name(r) for r in reqs} == IMAGE_PACKAGES
    for req in reqs:
        name = _dist_name(req)
        assert not name.startswith(FORBIDDEN_IN_IMAGE), f"the image must not install {req}"
        if req.endswith(".whl"):
            assert req.startswith("/wheels/"), req  # the wheels built just before
        else:
            assert re.fullmatch(r"[\w-]+==\d+(\.\d+)+", req), f"{req} is not pinned with =="
    pins = {_dist_name(r): r.split("==")[1] for r in reqs if "==" in r}
    assert pins == {
        "pillow": args["PILLOW_VERSION"],
        "pycocotools": args["PYCOCOTOOLS_VERSION"],
        "tokenizers": args["TOKENIZERS_VERSION"],
    }
    # the pins satisfy what sam2-triton-server declares (pillow>=10, pycocotools>=2.0.8, ...)
    from packaging.requirements import Requirement

    server_reqs = re.search(
        r"^dependencies = \[(.*?)^\]", (ROOT / "server" / "pyproject.toml").read_text(), re.M | re.S
    ).group(1)
    for line in re.findall(r'"([^"]+)"', server_reqs):
        req = Requirement(line)
        if req.name in pins:
            assert req.specifier.contains(pins[req.name]), f"{req} vs {pins[req.name]}"
    # nothing else installs packages; the final stage only copies the builder's directory
    text = DOCKERFILE.read_text()
    assert not re.search(r"\b(apt-get|apt|conda|mamba|uv)\s+install\b", text)
    final = _stages()[-1]
    assert ("COPY", "--from=builder /opt/sam2-triton /opt/sam2-triton") in final
    runs = [rest for word, rest in final if word == "RUN"]
    (check,) = [r for r in runs if "sam2-triton.pth" in r]
    assert "python3 -I" in check
    for module in ("sam2_triton_server.segment", "sam2_triton_server.session"):
        assert module in check, f"the image build does not check that {module} imports"
    # the other RUN (the engine cache folders) installs nothing
    assert not [r for r in runs if r is not check and re.search(r"\bpip\b|install", r)]


def test_dockerfile_keeps_a_non_root_user():
    final = _stages()[-1]
    users = [(i, rest) for i, (word, rest) in enumerate(final) if word == "USER"]
    assert users, "the final stage sets no USER"
    last_index, last_user = users[-1]
    assert last_user.split(":")[0] not in {"root", "0"}, last_user
    assert last_user in {"1000:1000", "triton-server"}  # the image's own user, as in compose
    last_run = max(i for i, (word, _) in enumerate(final) if word == "RUN")
    assert last_index > last_run, "the final USER must come after the last RUN"


def _dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as (is_exception, regex), Docker's syntax: *, ?, **, leading !."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/")
        rx, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(rx)))
    return rules


def _dockerignored(path: str, rules) -> bool:
    """Docker's rule: a pattern matches a path or one of its parent folders; the last
    matching line wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small():
    rules = _dockerignore_rules()
    for path in (
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".env",
        ".git/HEAD",
        "model_repository/sam2_encoder/1/model.onnx",
        "model_repository/sam2_decoder/1/model.onnx.data",
        "model_repository/sam2_encoder/config.pbtxt",
        "outputs/mask.png",
        "tests/test_deploy.py",
        "docs/sessions.md",
        "export/sam2_triton_export/__init__.py",
        "client/sam2_triton/__pycache__/spec.cpython-312.pyc",
        "client/build/lib/sam2_triton/spec.py",
        "server/sam2_triton_server.egg-info/PKG-INFO",
        "client/.venv/bin/python",
        "server/sam2_triton_server/model.onnx",
    ):
        assert _dockerignored(path, rules), f"{path} would be sent to the Docker daemon"
    # everything the Dockerfile copies (client/, server/) is in the context
    sources = [
        p.relative_to(ROOT).as_posix()
        for top in ("client", "server")
        for p in (ROOT / top).rglob("*")
        if p.is_file()
        and not {"__pycache__", "build", "dist"} & set(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.parts)
    ]
    assert "client/pyproject.toml" in sources and "server/sam2_triton_server/segment.py" in sources
    kept_out = [p for p in sources if _dockerignored(p, rules)]
    assert not kept_out, f"needed by the image build but ignored: {kept_out}"


def test_dockerignore_matcher():
    rules = [(False, re.compile("[^/]*")), (True, re.compile("client"))]
    assert _dockerignored("docs/a.md", rules)
    assert not _dockerignored("client/sam2_triton/spec.py", rules)
    rules.append((False, re.compile(r"(?:.*/)?__pycache__")))
    assert _dockerignored("client/sam2_triton/__pycache__/x.pyc", rules)


@pytest.fixture(scope="module")
def server_wheels(tmp_path_factory) -> dict[str, Path]:
    """The two wheels the Dockerfile builds, built the same way (pip wheel --no-deps) from a
    copy of client/ and server/ (so that setuptools' build/ and egg-info stay out of the tree),
    without build isolation so that no index is needed."""
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("setuptools (the packages' build backend) is not installed")
    work = tmp_path_factory.mktemp("wheels")
    ignore = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    for top in ("client", "server"):
        shutil.copytree(ROOT / top, work / top, ignore=ignore)
    out = work / "dist"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--wheel-dir", str(out), "./client", "./server"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = {w.name.split("-", 1)[0]: w for w in out.glob("*.whl")}
    assert set(wheels) == {"sam2_triton_client", "sam2_triton_server"}, sorted(out.iterdir())
    return wheels


def test_wheels_contain_only_their_package(server_wheels):
    for dist, package in (
        ("sam2_triton_client", "sam2_triton"),
        ("sam2_triton_server", "sam2_triton_server"),
    ):
        with zipfile.ZipFile(server_wheels[dist]) as zf:
            names = zf.namelist()
            tops = {n.split("/", 1)[0] for n in names}
            meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
            requires = re.findall(r"^Requires-Dist: (.+)$", zf.read(meta).decode(), re.M)
        info = {t for t in tops if t.endswith(".dist-info")}
        assert len(info) == 1 and tops - info == {package}, sorted(tops)
        assert not [n for n in names if n.endswith((".onnx", ".pt", ".pyc"))], names
        if dist == "sam2_triton_server":
            client_version = server_wheels["sam2_triton_client"].name.split("-")[1]
            assert f"sam2-triton-client=={client_version}" in requires, requires


def test_server_modules_import_without_tritonclient(server_wheels, tmp_path):
    """What the derived image holds: the two wheels installed with --no-deps into one folder,
    imported by an isolated interpreter (-I, as Triton's python-backend stub runs it) in which
    tritonclient, onnxruntime and torch cannot be imported."""
    target = tmp_path / "opt-sam2-triton"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"),
            *("--target", str(target), *map(str, server_wheels.values())),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code = f"""
import sys
sys.path.insert(0, {str(target)!r})
for blocked in ("tritonclient", "onnxruntime", "torch", "triton_python_backend_utils"):
    sys.modules[blocked] = None  # importing them raises ImportError
import sam2_triton_server.segment, sam2_triton_server.session, sam2_triton_server.onnx_model
import sam2_triton_server.everything, sam2_triton_server.video, sam2_triton_server.video_stream
import sam2_triton.spec, sam2_triton.transforms, sam2_triton.prompts
import sam2_triton.errors, sam2_triton.types
for name, module in sorted(sys.modules.items()):
    if name.startswith("sam2_triton") and module is not None:
        assert module.__file__.startswith({str(target)!r}), (name, module.__file__)
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# Prometheus


@needs_promtool
def test_promtool_check_config():
    proc = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_triton():
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = [t for sc in jobs["triton"]["static_configs"] for t in sc["targets"]]
    assert targets == ["triton:8002"]  # compose service name and Triton's --metrics-port
    assert jobs["triton"].get("metrics_path", "/metrics") == "/metrics"


# --------------------------------------------------------------------------------------------
# Grafana


def _datasource_uids() -> set[str]:
    uids = set()
    for f in DATASOURCES.glob("*.y*ml"):
        doc = yaml.safe_load(f.read_text())
        uids |= {d["uid"] for d in doc["datasources"]}
    return uids


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _targets(dash: dict):
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield panel, target
        for sub in panel.get("panels", []):  # collapsed rows
            for target in sub.get("targets", []):
                yield sub, target


_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (selectors), ignoring functions, aggregation
    operators, label matchers, ranges and grouping clauses."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", s):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def test_promql_metric_name_extraction():
    expr = (
        'sum by (model) (rate(nv_inference_count{model=~"$model"}[$__rate_interval])) / '
        "sum by (model) (rate(nv_inference_exec_count[5m])) > bool 0"
    )
    assert promql_metric_names(expr) == {"nv_inference_count", "nv_inference_exec_count"}
    assert promql_metric_names('up{job="triton"}') == {"up"}


def test_provisioning_files_parse():
    ds_files = list(DATASOURCES.glob("*.y*ml"))
    prov_files = list(DASHBOARD_PROVIDERS.glob("*.y*ml"))
    assert ds_files and prov_files
    for f in ds_files:
        doc = yaml.safe_load(f.read_text())
        assert doc["apiVersion"] == 1
        for ds in doc["datasources"]:
            assert ds["type"] == "prometheus"
            assert ds["url"] == "http://prometheus:9090"  # compose service name
    for f in prov_files:
        doc = yaml.safe_load(f.read_text())
        assert doc["apiVersion"] == 1
        for p in doc["providers"]:
            assert p["type"] == "file"
            assert p["options"]["path"] == "/etc/grafana/dashboards"  # compose mount target


def test_dashboard_parses_and_uses_provisioned_datasource():
    dash = _dashboard()
    assert dash["uid"] and dash["title"]
    uids = _datasource_uids()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    targets = list(_targets(dash))
    assert len(targets) >= 10
    for panel, target in targets:
        for ds in (panel.get("datasource"), target.get("datasource")):
            if ds is not None:
                assert ds["uid"] in uids, f"panel {panel['title']!r}: unknown datasource {ds}"
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            assert var["datasource"]["uid"] in uids


def test_dashboard_uses_only_triton_metric_names():
    dash = _dashboard()
    used = set()
    for panel, target in _targets(dash):
        names = promql_metric_names(target["expr"])
        assert names, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
        unknown = names - ALLOWED_METRICS
        assert not unknown, f"panel {panel['title']!r}: unknown metrics {unknown}"
        used |= names
    # the panels the deployment promises
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_request_summary_us",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_cache_num_hits_per_model",
        "nv_cache_num_misses_per_model",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
        "sam2_session_bytes",
        "sam2_session_budget_bytes",
        "sam2_session_images",
        "sam2_session_hits_total",
        "sam2_session_misses_total",
        "sam2_session_evictions_total",
    ):
        assert name in used, f"no panel uses {name}"
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            assert re.search(r"label_values\((\w+),\s*model\)", q).group(1) in TRITON_METRICS


def test_dashboard_latency_quantiles_exist():
    """p50/p99 come from Triton's summaries: quantiles 0.5 and 0.99 are among its defaults."""
    exprs = [t["expr"] for _, t in _targets(_dashboard())]
    summary = [e for e in exprs if "nv_inference_request_summary_us" in e]
    assert any('quantile="0.5"' in e for e in summary)
    assert any('quantile="0.99"' in e for e in summary)


@needs_promtool
def test_dashboard_promql_parses(tmp_path):
    """Every panel query is valid PromQL (Grafana variables substituted), checked by promtool
    as recording rules."""
    rules = []
    for i, (_panel, target) in enumerate(_targets(_dashboard())):
        expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
        assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
        rules.append({"record": f"sam2:dashboard_query_{i}", "expr": expr})
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# pixi.toml


needs_tomllib = pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11+")


def _pixi() -> dict:
    return tomllib.loads(PIXI_TOML.read_text())


def _task_cmd(task) -> str:
    return task if isinstance(task, str) else task.get("cmd", "")


@needs_tomllib
def test_pixi_manifest_parses():
    pixi = _pixi()
    ws = pixi.get("workspace") or pixi.get("project")
    assert ws["name"] == "sam2-triton"
    assert "linux-64" in ws["platforms"]
    assert pixi["dependencies"]["python"].startswith("3.11")
    pypi = pixi["pypi-dependencies"]
    assert pypi["torch"] == "==2.14.1"
    assert pypi["torchvision"] == "==0.29.1"
    assert pypi["numpy"].endswith("<2")


@needs_tomllib
def test_pixi_required_tasks():
    tasks = _pixi()["tasks"]
    required = {
        "download-tiny",
        "download-small",
        "download-base",
        "download-large",
        "export",
        "setup",
        "serve",
        "demo",
        "test",
        "lint",
        "format",
    }
    assert required <= set(tasks)
    variants = {
        "download-tiny": "tiny",
        "download-small": "small",
        "download-base": "base_plus",
        "download-large": "large",
    }
    for name, variant in variants.items():
        cmd = _task_cmd(tasks[name]).split()
        assert cmd[:3] == ["sam2-triton", "export", "--download"]
        assert cmd[cmd.index("--variant") + 1] == variant
        assert cmd[cmd.index("--output") + 1] == "model_repository"
    assert _task_cmd(tasks["test"]).split()[0] == "pytest"
    assert _task_cmd(tasks["lint"]) == "ruff check ."
    assert _task_cmd(tasks["format"]) == "ruff format ."
    setup = tasks["setup"]
    assert "--no-build-isolation" in setup["cmd"] and "sam2==1.1.0" in setup["cmd"]
    assert setup["env"]["SAM2_BUILD_CUDA"] == "0"


@needs_tomllib
def test_pixi_tasks_reference_existing_commands():
    pyproject = tomllib.loads(PYPROJECT.read_text())
    assert "sam2-triton" in pyproject["project"]["scripts"]
    known_programs = {"sam2-triton", "python", "pytest", "ruff", "docker"}
    subcommands = {"export", "serve", "demo", "segment"}
    tasks = _pixi()["tasks"]
    for name, task in tasks.items():
        for deps in task.get("depends-on", []) if isinstance(task, dict) else []:
            assert deps in tasks, f"task {name} depends on unknown task {deps}"
        for part in re.split(r"&&|\|\||;", _task_cmd(task)):
            words = part.split()
            assert words, f"task {name}: empty command"
            assert words[0] in known_programs, f"task {name}: unknown program {words[0]}"
            if words[0] == "sam2-triton":
                assert words[1] in subcommands, f"task {name}: unknown subcommand {words[1]}"
            if "--variant" in words:
                assert words[words.index("--variant") + 1] in SPEC_VARIANTS


def _req_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


@needs_tomllib
def test_pixi_locks_every_project_dependency():
    """`setup` installs this checkout's distributions (the root, client/, server/) with
    --no-deps, so pixi must provide every dependency of theirs (root base + dev extras, which
    include export and serve; the extras they request of each other) and of sam2."""
    local = {
        tomllib.loads((d / "pyproject.toml").read_text())["project"]["name"]: d
        for d in (ROOT, ROOT / "client", ROOT / "server")
    }
    projects = {
        name: tomllib.loads((d / "pyproject.toml").read_text())["project"]
        for name, d in local.items()
    }
    wanted: set[str] = set()
    seen: set[tuple[str, str]] = set()

    def add(reqs):
        for r in reqs:
            name = _req_name(r)
            if name not in local:
                wanted.add(name)
                continue
            extras = re.search(r"\[(.*)\]", r)
            for part in ["", *(extras.group(1).split(",") if extras else [])]:
                if (name, part.strip()) in seen:
                    continue
                seen.add((name, part.strip()))
                project = projects[name]
                add(
                    project["dependencies"]
                    if not part
                    else project["optional-dependencies"][part.strip()]
                )

    add(["sam2-triton[dev]"])
    wanted.discard("sam2")  # installed by the setup task
    pixi_names = {n.lower().replace("_", "-") for n in _pixi()["pypi-dependencies"]}
    assert wanted <= pixi_names, f"missing from pixi.toml: {sorted(wanted - pixi_names)}"
    setup = _pixi()["tasks"]["setup"]["cmd"]
    for d in ("client", "server"):
        assert re.search(rf"(^|\s)(\./)?{d}/?(\s|$)", setup), (
            f"the setup task does not install ./{d}"
        )
    assert {"hydra-core", "iopath"} <= pixi_names  # sam2's own runtime dependencies


# --------------------------------------------------------------------------------------------
# the real tritonserver (CPU build from nvidia-pytriton) with the compose file's flags

_IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
"""


def _identity_config(name: str, cache: bool) -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 8
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }}]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
response_cache {{ enable: {"true" if cache else "false"} }}
instance_group [{{ kind: KIND_CPU count: 1 }}]
parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{sys.prefix}" }} }}
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _http(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.triton
def test_compose_flags_on_real_tritonserver(triton_service, tmp_path):
    try:
        import pytriton  # noqa: F401
    except ImportError:
        pytest.skip("nvidia-pytriton (bundled tritonserver) not installed")
    site = Path(pytriton.__file__).resolve().parents[1]
    server_dir = site / "pytriton" / "tritonserver"
    stub = server_dir / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = stub / "triton_python_backend_stub"
    if not (server_dir / "bin" / "tritonserver").exists() or not stub.exists():
        pytest.skip("tritonserver binary or python-backend stub missing from nvidia-pytriton")

    # backend directory: the python backend plus the stub for this Python
    backend = tmp_path / "backends" / "python"
    backend.mkdir(parents=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (backend / f).symlink_to(server_dir / "backends" / "python" / f)
    shutil.copy2(stub, backend / "triton_python_backend_stub")
    repo = tmp_path / "repo"
    for name, cache in (("cached", True), ("uncached", False)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(_identity_config(name, cache))
        (repo / name / "1" / "model.py").write_text(_IDENTITY_MODEL)

    http_port, grpc_port, metrics_port = _free_ports(3)
    cmd = [str(server_dir / "bin" / "tritonserver")]
    for arg in triton_service["command"][1:]:
        if arg.startswith(("--model-repository=", "--metrics-port=")):
            continue
        cmd.append(arg)
    cmd += [
        f"--model-repository={repo}",
        f"--backend-directory={tmp_path / 'backends'}",
        f"--cache-directory={server_dir / 'caches'}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
    ]
    env = dict(os.environ)
    libs = site / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = f"{libs}:{env.get('LD_LIBRARY_PATH', '')}"
    log = tmp_path / "tritonserver.log"
    base = f"http://127.0.0.1:{http_port}"
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if _http(f"{base}/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready after 120 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)

        body = json.dumps(
            {
                "inputs": [
                    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                ]
            }
        ).encode()
        for model in ("cached", "uncached"):
            for _ in range(3):  # cached: 1 miss + 2 hits
                status, _ = _http(
                    f"{base}/v2/models/{model}/infer", body, {"Content-Type": "application/json"}
                )
                assert status == 200  # inference stays open
        assert _http(f"{base}/v2/models/cached")[0] == 200  # metadata stays open

        # admin APIs: 403 without the header, allowed with it
        admin = {"admin-key": TEST_KEY}
        assert _http(f"{base}/v2/models/stats")[0] == 403
        assert _http(f"{base}/v2/models/stats", headers=admin)[0] == 200
        assert _http(f"{base}/v2/models/cached/config")[0] == 403
        assert _http(f"{base}/v2/models/cached/config", headers=admin)[0] == 200
        assert _http(f"{base}/v2/repository/index", b"{}")[0] == 403
        assert _http(f"{base}/v2/systemsharedmemory/status")[0] == 403
        assert _http(f"{base}/v2/logging")[0] == 403
        assert _http(f"{base}/v2/logging", headers=admin)[0] == 200

        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready()
        with pytest.raises(InferenceServerException):
            client.get_inference_statistics("cached")
        stats = client.get_inference_statistics(
            "cached", headers={"triton-grpc-protocol-admin-key": TEST_KEY}
        )
        assert stats.model_stats
        client.close()

        # every non-GPU metric name the dashboard uses exists on the real endpoint
        time.sleep(1)
        _, metrics = _http(f"http://127.0.0.1:{metrics_port}/metrics")
        exposed = set(re.findall(r"^(nv_\w+)[{ ]", metrics.decode(), re.M))
        dashboard_names = set()
        for _, target in _targets(_dashboard()):
            dashboard_names |= promql_metric_names(target["expr"])
        expected = dashboard_names & TRITON_METRICS
        assert expected <= exposed, f"not exposed by tritonserver: {sorted(expected - exposed)}"
        # documented Triton behaviour the dashboard relies on: no request summary for models
        # with response cache, but one for the others
        text = metrics.decode()
        assert 'nv_inference_request_summary_us{model="uncached"' in text
        assert 'nv_inference_request_summary_us{model="cached"' not in text
        assert 'nv_cache_num_hits_per_model{model="cached",version="1"} 2' in text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
