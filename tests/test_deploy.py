"""Checks of the GPU deployment: docker-compose.yml, Prometheus/Grafana files, pixi.toml.

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
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11+
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
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
# serve/sam2_triton_serve/session_model.py), on Triton's metrics port; tests/test_sessions.py
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
    assert {"triton", "engine-cache-init", "prometheus", "grafana"} <= services


def test_admin_key_is_never_in_the_file():
    text = COMPOSE_FILE.read_text()
    # both restricted flags take the key from the environment, with no default value
    assert text.count("admin-key=${SAM2_TRITON_ADMIN_KEY:?") == 2
    uses = re.findall(r"\$\{SAM2_TRITON_ADMIN_KEY([^}]*)\}", text)
    assert len(uses) == 2 and all(u.startswith(":?") for u in uses), uses


def test_triton_image_is_pinned(rendered):
    images = {name: svc["image"] for name, svc in rendered["services"].items()}
    assert re.fullmatch(
        r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3(@sha256:[0-9a-f]{64})?", images["triton"]
    ), images["triton"]
    # the init job uses the same (already pulled) image
    assert images["engine-cache-init"] == images["triton"]
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
    # the init job makes the fresh (root-owned) volume writable for uid/gid 1000 first
    init = rendered["services"]["engine-cache-init"]
    assert "chown -R 1000:1000 /engine_cache" in " ".join(init["command"])
    assert {m["target"] for m in _volumes(init)} == {"/engine_cache"}
    dep = triton_service["depends_on"]["engine-cache-init"]
    assert dep["condition"] == "service_completed_successfully"


def test_model_configs_cache_engines_in_the_volume(rendered):
    """The GPU configs' TensorRT engine/timing cache paths lie in the engine-cache volume, in the
    per-model folders that engine-cache-init creates for uid 1000."""
    configs = sorted((ROOT / "model_repository").glob("*/config.pbtxt"))
    if not configs:
        pytest.skip("no model configs in model_repository yet")
    init_cmd = " ".join(rendered["services"]["engine-cache-init"]["command"])
    checked = 0
    for cfg in configs:
        text = cfg.read_text()
        paths = re.findall(r'key:\s*"trt_(?:engine|timing)_cache_path"\s*value:\s*"([^"]+)"', text)
        for path in paths:
            assert path == f"/engine_cache/{cfg.parent.name}", f"{cfg}: {path}"
            assert path in init_cmd, f"engine-cache-init does not create {path}"
            checked += 1
    if not checked:
        pytest.skip("no TensorRT cache paths in the model configs")


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
    """`setup` installs the project with --no-deps, so pixi must provide every dependency of
    pyproject.toml (base + dev extras, which include export and serve) and of sam2."""
    pyproject = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = pyproject["optional-dependencies"]
    wanted: set[str] = set()

    def add(reqs):
        for r in reqs:
            name = _req_name(r)
            if name == "sam2-triton":  # self-reference: sam2-triton[rle,export,serve]
                for extra in re.search(r"\[(.*)\]", r).group(1).split(","):
                    add(extras[extra.strip()])
            else:
                wanted.add(name)

    add(pyproject["dependencies"])
    add(extras["dev"])
    wanted.discard("sam2")  # installed by the setup task
    pixi_names = {n.lower().replace("_", "-") for n in _pixi()["pypi-dependencies"]}
    assert wanted <= pixi_names, f"missing from pixi.toml: {sorted(wanted - pixi_names)}"
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
