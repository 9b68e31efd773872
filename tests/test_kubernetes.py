"""Checks of the Kubernetes manifests in deploy/k8s (Kustomize base, components, overlays).

There is no cluster here, so everything is static, on what `kubectl kustomize` renders for each
overlay (the exact objects `kubectl apply -k` would send):

- core kinds pass `kubernetes-validate` (strict: unknown fields are errors) for the oldest and
  the newest Kubernetes version the manifests claim;
- the custom resources (Gateway API, Envoy Gateway, Prometheus Operator, KEDA), for which that
  validator has no schema, pass hand-written structural schemas of exactly the fields used here
  (additionalProperties false, enums and required fields from the upstream API types);
- the policy scanner checkov passes with no finding beyond the four accepted ones, which are
  pinned below;
- project facts: image tag, Triton flags, ports, probe paths and budget, non-root and read-only
  root filesystem with the writable mounts Triton needs, the routing header, the autoscaling
  metric, the NetworkPolicy ports.

kubectl (with its built-in Kustomize) and checkov are required: checkov lives in its own
virtual environment, `<venv>/tools`, made by scripts/install.sh, because its pinned
dependencies conflict with this project's.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from sam2_triton import spec

from .test_deploy import TRITON_METRICS, promql_metric_names

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("pvc", "s3")
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCS = ROOT / "docs" / "kubernetes.md"

# The oldest Kubernetes the manifests use fields of (StatefulSet
# persistentVolumeClaimRetentionPolicy is GA in 1.32) and the newest the validator knows.
K8S_VERSIONS = ("1.32.0", "1.37.0")
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
# checkov findings accepted on purpose, with the reason in the StatefulSet's annotations.
ACCEPTED_CHECKOV_SKIPS = {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_40", "CKV_K8S_43"}
CHECKOV = Path(os.environ.get("SAM2_CHECKOV", Path(sys.prefix) / "tools" / "bin" / "checkov"))


# --------------------------------------------------------------------------------------------
# rendering


def _kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with built-in Kustomize) is needed to render deploy/k8s"
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {name: _kustomize(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request, renders) -> list[dict]:
    return renders[request.param]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _all(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _statefulset(docs: list[dict]) -> dict:
    return _one(docs, "StatefulSet", "sam2-triton")


def _pod(docs: list[dict]) -> dict:
    return _statefulset(docs)["spec"]["template"]


def _container(docs: list[dict], name: str = "triton") -> dict:
    (c,) = [c for c in _pod(docs)["spec"]["containers"] if c["name"] == name]
    return c


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _flags(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        assert a.startswith("--") and "=" in a, a
        k, v = a[2:].split("=", 1)
        assert k not in out, f"flag given twice: {k}"
        out[k] = v
    return out


def _quantity(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    assert m, q
    mult = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3}
    mult.update({"M": 10**6, "G": 10**9, "T": 10**12})
    return int(m.group(1)) * mult[m.group(2)]


def _docker_size(s: str) -> int:
    """Docker's sizes (shm_size): b/k/m/g are powers of 1024."""
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", s.lower())
    assert m, s
    return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]


def _compose_default(text: str) -> str:
    """Compose interpolation with an empty environment: ${VAR:-default} -> default; the
    required admin key ${SAM2_TRITON_ADMIN_KEY:?...} -> Kubernetes' $(SAM2_TRITON_ADMIN_KEY)."""
    text = re.sub(r"\$\{SAM2_TRITON_ADMIN_KEY:\?[^}]*\}", "$(SAM2_TRITON_ADMIN_KEY)", text)
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


@pytest.fixture(scope="module")
def compose_triton() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]["triton"]


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(v) * units[u] for v, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


# --------------------------------------------------------------------------------------------
# schema validation: core kinds (kubernetes-validate) and the custom resources (structural)

_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _obj(required: list[str], **props) -> dict:
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": props,
    }


def _cr(api_version: str, kind: str, spec_schema: dict) -> dict:
    return _obj(
        ["apiVersion", "kind", "metadata", "spec"],
        apiVersion={"const": api_version},
        kind={"const": kind},
        metadata=_META,
        spec=spec_schema,
    )


_STR = {"type": "string", "minLength": 1}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_PARENT_REFS = {
    "type": "array",
    "minItems": 1,
    "items": _obj(["name"], name=_STR, sectionName=_STR, namespace=_STR),
}
_BACKEND_REFS = {
    "type": "array",
    "minItems": 1,
    "items": _obj(["name", "port"], name=_STR, port=_PORT, weight={"type": "integer"}),
}
_LABEL_SELECTOR = _obj(
    ["matchLabels"], matchLabels={"type": "object", "additionalProperties": {"type": "string"}}
)
_BEHAVIOR_RULES = _obj(
    [],
    stabilizationWindowSeconds={"type": "integer", "minimum": 0, "maximum": 3600},
    selectPolicy={"enum": ["Max", "Min", "Disabled"]},
    policies={
        "type": "array",
        "items": _obj(
            ["type", "value", "periodSeconds"],
            type={"enum": ["Pods", "Percent"]},
            value={"type": "integer", "minimum": 1},
            periodSeconds={"type": "integer", "minimum": 1, "maximum": 1800},
        ),
    },
)

# Hand-written from the upstream API types (gateway-api apis/v1, envoyproxy/gateway
# api/v1alpha1 loadbalancer_types.go and backendtrafficpolicy_types.go, prometheus-operator
# monitoring/v1 servicemonitor_types.go, KEDA keda.sh/v1alpha1 scaledobject_types.go and the
# prometheus scaler's documented metadata): only the fields these manifests use, so a typo or a
# misplaced field fails here instead of at `kubectl apply`.
CRD_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "Gateway"): _cr(
        "gateway.networking.k8s.io/v1",
        "Gateway",
        _obj(
            ["gatewayClassName", "listeners"],
            gatewayClassName=_STR,
            listeners={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["name", "protocol", "port"],
                    name=_STR,
                    protocol={"enum": ["HTTP", "HTTPS", "TLS", "TCP", "UDP"]},
                    port=_PORT,
                    hostname=_STR,
                    allowedRoutes=_obj(
                        [], namespaces=_obj([], **{"from": {"enum": ["All", "Same", "Selector"]}})
                    ),
                ),
            },
        ),
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _cr(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        _obj(
            ["parentRefs", "rules"],
            parentRefs=_PARENT_REFS,
            hostnames={"type": "array", "items": _STR},
            rules={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["backendRefs"],
                    matches={
                        "type": "array",
                        "items": _obj(
                            ["path"],
                            path=_obj(
                                ["type", "value"],
                                type={"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                value={"type": "string", "pattern": "^/"},
                            ),
                        ),
                    },
                    backendRefs=_BACKEND_REFS,
                ),
            },
        ),
    ),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): _cr(
        "gateway.networking.k8s.io/v1",
        "GRPCRoute",
        _obj(
            ["parentRefs", "rules"],
            parentRefs=_PARENT_REFS,
            rules={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["backendRefs"],
                    matches={
                        "type": "array",
                        "items": _obj(
                            ["method"],
                            method=_obj(
                                [],
                                type={"enum": ["Exact", "RegularExpression"]},
                                service=_STR,
                                method=_STR,
                            ),
                        ),
                    },
                    backendRefs=_BACKEND_REFS,
                ),
            },
        ),
    ),
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"): _cr(
        "gateway.envoyproxy.io/v1alpha1",
        "BackendTrafficPolicy",
        _obj(
            ["targetRefs"],
            targetRefs={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["group", "kind", "name"],
                    group={"const": "gateway.networking.k8s.io"},
                    kind={"enum": ["Gateway", "HTTPRoute", "GRPCRoute"]},
                    name=_STR,
                ),
            },
            loadBalancer=_obj(
                ["type"],
                type={"enum": ["ConsistentHash", "LeastRequest", "Random", "RoundRobin"]},
                consistentHash=_obj(
                    ["type"],
                    type={"enum": ["SourceIP", "Header", "Cookie"]},
                    header=_obj(["name"], name=_STR),
                    tableSize={"type": "integer", "minimum": 2, "maximum": 5000011},
                ),
            ),
        ),
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _cr(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _obj(
            ["selector", "endpoints"],
            selector=_LABEL_SELECTOR,
            endpoints={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["port"],
                    port=_STR,
                    path={"type": "string", "pattern": "^/"},
                    interval={"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                    scrapeTimeout={"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                    relabelings={
                        "type": "array",
                        "items": _obj(
                            [],
                            action={"enum": ["replace", "keep", "drop", "labelmap"]},
                            targetLabel=_STR,
                            replacement={"type": "string"},
                            sourceLabels={"type": "array", "items": _STR},
                        ),
                    },
                ),
            },
        ),
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): _cr(
        "keda.sh/v1alpha1",
        "ScaledObject",
        _obj(
            ["scaleTargetRef", "triggers"],
            scaleTargetRef=_obj(["name"], apiVersion=_STR, kind=_STR, name=_STR),
            pollingInterval={"type": "integer", "minimum": 1},
            cooldownPeriod={"type": "integer", "minimum": 0},
            minReplicaCount={"type": "integer", "minimum": 0},
            maxReplicaCount={"type": "integer", "minimum": 1},
            advanced=_obj(
                [],
                horizontalPodAutoscalerConfig=_obj(
                    [], behavior=_obj([], scaleUp=_BEHAVIOR_RULES, scaleDown=_BEHAVIOR_RULES)
                ),
            ),
            triggers={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["type", "metadata"],
                    type={"const": "prometheus"},
                    metricType={"enum": ["AverageValue", "Value", "Utilization"]},
                    metadata=_obj(
                        ["serverAddress", "query", "threshold"],
                        serverAddress={"type": "string", "pattern": "^https?://"},
                        query=_STR,
                        # KEDA reads trigger metadata as strings
                        threshold={"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                        activationThreshold={"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                        ignoreNullValues={"enum": ["true", "false"]},
                    ),
                ),
            },
        ),
    ),
}


def _validate(doc: dict) -> str:
    """Raise if `doc` is invalid: core kinds by kubernetes-validate (strict) for every supported
    version, custom resources by their structural schema. Returns which validator ran."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(doc)
        return "structural"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    return "kubernetes-validate"


def test_overlays_render_the_expected_objects(renders):
    for name, docs in renders.items():
        kinds = {d["kind"] for d in docs}
        assert {
            "Namespace",
            "ServiceAccount",
            "StatefulSet",
            "Service",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Gateway",
            "HTTPRoute",
            "GRPCRoute",
            "BackendTrafficPolicy",
            "ServiceMonitor",
            "ScaledObject",
        } <= kinds, name
        # everything but the Namespace lands in the sam2 namespace
        for d in docs:
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == "sam2", (name, d["kind"])


def test_every_manifest_passes_its_schema(docs):
    used = {}
    for doc in docs:
        try:
            used[(doc["kind"], doc["metadata"]["name"])] = _validate(doc)
        except SchemaNotFoundError as e:  # a kind nobody validates: not allowed
            pytest.fail(f"no schema for {doc['apiVersion']} {doc['kind']}: {e.message}")
    assert "kubernetes-validate" in used.values() and "structural" in used.values()
    # the only kinds without an upstream schema are the custom resources listed above
    assert {k for k, v in used.items() if v == "structural"} == {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS
    }


def test_core_kinds_really_have_no_crd_fallback():
    """kubernetes-validate has no schema for the custom resources (hence the structural ones),
    and does have one for every core kind used."""
    with pytest.raises(SchemaNotFoundError):
        kubernetes_validate.validate(
            {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"}},
            K8S_VERSIONS[0],
            strict=True,
        )


def _break(doc: dict, path: list, value) -> dict:
    bad = copy.deepcopy(doc)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return bad


@pytest.mark.parametrize(
    "kind,path,value",
    [
        # a misspelt probe field (strict: unknown fields are errors)
        ("StatefulSet", ["spec", "template", "spec", "containers", 0, "readinesProbe"], {}),
        # a port as a string where an integer is required
        ("Service", ["spec", "ports", 0, "port"], "eight-thousand"),
        # a misspelt selector field in a NetworkPolicy
        ("NetworkPolicy", ["spec", "podSelector", "matchLabel"], {"app": "x"}),
        # consistent hashing on a header, without the header
        ("BackendTrafficPolicy", ["spec", "loadBalancer", "consistentHash", "headers"], []),
        # a misplaced KEDA field
        ("ScaledObject", ["spec", "triggers", 0, "metadata", "treshold"], "8"),
        # a ServiceMonitor interval that is not a duration
        ("ServiceMonitor", ["spec", "endpoints", 0, "interval"], "ten seconds"),
    ],
)
def test_validators_catch_a_broken_manifest(renders, kind, path, value):
    docs = renders["pvc"]
    (doc,) = [d for d in docs if d["kind"] == kind][:1]
    _validate(doc)  # the original passes
    with pytest.raises(jsonschema.ValidationError):
        _validate(_break(doc, path, value))


# --------------------------------------------------------------------------------------------
# policy scanner


@pytest.fixture(scope="module")
def checkov_results(renders, tmp_path_factory) -> dict[str, dict]:
    """One checkov run over both overlays' renders and one deliberately insecure copy."""
    assert CHECKOV.exists(), (
        f"checkov not found at {CHECKOV}: scripts/install.sh installs it into <venv>/tools "
        "(or point SAM2_CHECKOV at a checkov binary)"
    )
    out = tmp_path_factory.mktemp("checkov")
    for name, docs in renders.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    bad = copy.deepcopy(_statefulset(renders["pvc"]))
    pod = bad["spec"]["template"]["spec"]
    pod["securityContext"]["runAsNonRoot"] = False
    pod["securityContext"]["runAsUser"] = 0
    pod["automountServiceAccountToken"] = True
    sc = pod["containers"][0]["securityContext"]
    sc.update(privileged=True, allowPrivilegeEscalation=True, readOnlyRootFilesystem=False)
    sc.update(runAsNonRoot=False, runAsUser=0)
    sc["capabilities"] = {"add": ["SYS_ADMIN"]}
    del pod["containers"][0]["livenessProbe"]
    (out / "insecure.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(out),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=out,
    )
    assert proc.stdout.strip(), f"checkov printed nothing:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    (k8s,) = [r for r in reports if r["check_type"] == "kubernetes"]
    by_file: dict[str, dict] = {}
    for status in ("passed_checks", "failed_checks", "skipped_checks"):
        for check in k8s["results"][status]:
            name = Path(check["file_path"]).stem
            by_file.setdefault(name, {"passed": [], "failed": [], "skipped": []})
            by_file[name][status.split("_")[0]].append(check)
    assert not k8s["results"]["parsing_errors"], k8s["results"]["parsing_errors"]
    return by_file


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policy_scanner_passes(checkov_results, overlay):
    res = checkov_results[overlay]
    failed = sorted({(c["check_id"], c["resource"], c["check_name"]) for c in res["failed"]})
    assert not failed, failed
    assert len(res["passed"]) > 50  # it really looked at the workload
    skipped = {c["check_id"] for c in res["skipped"]}
    assert skipped == ACCEPTED_CHECKOV_SKIPS, skipped


def test_policy_scanner_catches_an_insecure_pod(checkov_results):
    failed = {c["check_id"] for c in checkov_results["insecure"]["failed"]}
    # privileged, privilege escalation, writable root fs, root user, SYS_ADMIN, token, liveness
    expected = {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_39"}
    expected |= {"CKV_K8S_38", "CKV_K8S_8"}
    assert expected <= failed, sorted(failed)


def test_accepted_skips_carry_a_reason(renders):
    ann = _statefulset(renders["pvc"])["metadata"]["annotations"]
    skips = {}
    for key, value in ann.items():
        if key.startswith("checkov.io/skip"):
            check, _, reason = value.partition("=")
            skips[check] = reason
    assert set(skips) == ACCEPTED_CHECKOV_SKIPS
    assert all(len(reason) > 20 for reason in skips.values())


# --------------------------------------------------------------------------------------------
# project facts


def test_image_is_the_one_compose_builds(docs, compose_triton):
    compose_image = compose_triton["image"]
    name, tag = compose_image.rsplit(":", 1)
    images = {c["image"] for c in _pod(docs)["spec"]["containers"]}
    images |= {c["image"] for c in _pod(docs)["spec"]["initContainers"]}
    assert len(images) == 1
    (image,) = images
    repo, _, k8s_tag = image.rpartition(":")
    assert k8s_tag == tag
    assert repo.rsplit("/", 1)[-1] == name
    # and the base, before an overlay renames the registry, uses exactly compose's image
    base = _kustomize(K8S / "base")
    assert _container(base)["image"] == compose_image


def test_triton_flags_are_compose_flags(docs, compose_triton):
    c = _container(docs)
    assert c["command"] == ["tritonserver"]
    k8s = _flags(c["args"])
    compose_cmd = [_compose_default(a) for a in compose_triton["command"]]
    assert compose_cmd[0] == "tritonserver"
    compose = _flags(compose_cmd[1:])
    assert k8s.pop("model-repository") == "$(SAM2_MODEL_REPOSITORY)"
    assert compose.pop("model-repository") == "/models"
    assert k8s == compose
    # the admin key is expanded from a Secret, never written into the manifest
    key = _env(c)["SAM2_TRITON_ADMIN_KEY"]
    assert set(key) == {"name", "valueFrom"}
    assert key["valueFrom"]["secretKeyRef"] == {"name": "sam2-triton-admin", "key": "admin-key"}


def test_model_repository_comes_from_a_volume_or_object_storage(renders):
    for name, docs in renders.items():
        c = _container(docs)
        repo = _env(c)["SAM2_MODEL_REPOSITORY"]["value"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        if name == "pvc":
            assert mounts[repo].get("readOnly") is True
            vols = {v["name"]: v for v in _pod(docs)["spec"]["volumes"]}
            claim = vols[mounts[repo]["name"]]["persistentVolumeClaim"]
            pvc = _one(docs, "PersistentVolumeClaim", claim["claimName"])
            assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
        else:
            assert re.fullmatch(r"s3://\S+", repo)
            env = _env(c)
            assert env["TRITON_AWS_MOUNT_DIRECTORY"]["value"] in mounts
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "value" not in env[var]
                assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "sam2-model-store"


def test_no_secret_values_in_manifests(renders):
    for docs in renders.values():
        assert not _all(docs, "Secret")
        for doc in docs:
            text = json.dumps(doc)
            assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
            assert "admin-key=" not in text.replace("admin-key=$(SAM2_TRITON_ADMIN_KEY)", "")


def test_ports_and_probes_are_tritons(docs):
    c = _container(docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == TRITON_PORTS
    assert all(p["protocol"] == "TCP" for p in c["ports"])
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = c[probe]["httpGet"]["port"]
        assert TRITON_PORTS.get(port, port) == 8000, probe
    # the metrics port in the flags is the one declared and served
    assert _flags(c["args"])["metrics-port"] == str(TRITON_PORTS["metrics"])
    for svc in _all(docs, "Service"):
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert {n: p["port"] for n, p in ports.items()} == TRITON_PORTS
        assert all(p["targetPort"] in TRITON_PORTS for p in ports.values())
        assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
        assert svc["spec"]["selector"] == _statefulset(docs)["spec"]["selector"]["matchLabels"]


def _startup_budget_s(probe: dict) -> int:
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
        "failureThreshold", 3
    )


def test_startup_probe_allows_the_engine_build(docs, compose_triton):
    """The first start builds TensorRT engines before Triton opens its ports. The documented
    allowance for that is compose's start_period; the startup probe must allow at least as much,
    and liveness must not be able to kill a pod that is still starting."""
    c = _container(docs)
    budget = _startup_budget_s(c["startupProbe"])
    assert budget >= _seconds(compose_triton["healthcheck"]["start_period"])
    assert c["livenessProbe"].get("initialDelaySeconds", 0) == 0  # gated by the startup probe
    # docs/kubernetes.md states the same budget
    assert f"{budget // 60} minutes" in DOCS.read_text()


def test_non_root_and_read_only_root_filesystem(docs, compose_triton):
    pod = _pod(docs)["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert f"{psc['runAsUser']}:{psc['runAsGroup']}" == compose_triton["user"]
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert psc["fsGroup"] == psc["runAsGroup"]
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert not sc.get("privileged", False)
        assert "resources" in c and c["resources"]["limits"]
    # Pod Security Admission enforces "restricted" in the namespace
    ns = _one(docs, "Namespace", "sam2")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_writable_mounts_tmp_shm_and_engine_cache(docs, compose_triton):
    pod = _pod(docs)["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"]: t for t in _statefulset(docs)["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m for m in _container(docs)["volumeMounts"]}
    for path in ("/tmp", "/dev/shm", "/engine_cache"):
        assert path in mounts and not mounts[path].get("readOnly", False), path
    assert "emptyDir" in vols[mounts["/tmp"]["name"]]
    shm = vols[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    shm_default = _compose_default(compose_triton["shm_size"])
    assert _quantity(shm["sizeLimit"]) == _docker_size(shm_default)
    # /dev/shm is memory: it must fit in the container's memory limit
    limits = _container(docs)["resources"]["limits"]
    assert _quantity(limits["memory"]) > _quantity(shm["sizeLimit"])
    # the engine cache is a per-replica PersistentVolumeClaim, not an emptyDir
    cache = mounts["/engine_cache"]["name"]
    assert cache in claims and cache not in vols
    assert claims[cache]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert _statefulset(docs)["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == (
        "Retain"
    )
    # every other writable mount is an emptyDir (nothing writes into the image)
    for path, m in mounts.items():
        if not m.get("readOnly") and path != "/engine_cache":
            assert "emptyDir" in vols[m["name"]], path


def test_engine_cache_folders_match_the_image_and_model_configs(docs):
    """The init container creates the folders docker/Dockerfile creates in the image, which
    are the folders the GPU model configs' TensorRT cache paths point to."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (run,) = [line for line in text.splitlines() if line.startswith("RUN mkdir -p /engine_cache")]
    image_dirs = set(re.findall(r"(/engine_cache/\w+)", run))
    (init,) = _pod(docs)["spec"]["initContainers"]
    assert init["command"][:2] == ["mkdir", "-p"]
    assert set(init["command"][2:]) == image_dirs
    assert {m["mountPath"] for m in init["volumeMounts"]} == {"/engine_cache"}
    config_dirs = set()
    for cfg in (ROOT / "model_repository").glob("*/config.pbtxt"):
        config_dirs |= set(
            re.findall(
                r'key:\s*"trt_(?:engine|timing)_cache_path"\s*value:\s*"([^"]+)"', cfg.read_text()
            )
        )
    assert config_dirs and config_dirs <= image_dirs


def test_routing_hashes_on_the_sdk_session_header(docs):
    policy = _one(docs, "BackendTrafficPolicy")
    lb = policy["spec"]["loadBalancer"]
    assert lb["type"] == "ConsistentHash"
    assert lb["consistentHash"]["type"] == "Header"
    assert lb["consistentHash"]["header"]["name"] == spec.SESSION_ROUTING_HEADER
    # it applies to both routes, HTTP and gRPC, that exist in the render
    targets = {(t["kind"], t["name"]) for t in policy["spec"]["targetRefs"]}
    routes = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"].endswith("Route")}
    assert targets == routes
    assert {k for k, _ in routes} == {"HTTPRoute", "GRPCRoute"}
    gateway = _one(docs, "Gateway")
    listeners = {lst["name"] for lst in gateway["spec"]["listeners"]}
    svc = _one(docs, "Service", "sam2-triton")
    for kind, name in routes:
        route = _one(docs, kind, name)
        for ref in route["spec"]["parentRefs"]:
            assert ref["name"] == gateway["metadata"]["name"] and ref["sectionName"] in listeners
        backends = {
            (b["name"], b["port"]) for rule in route["spec"]["rules"] for b in rule["backendRefs"]
        }
        port = TRITON_PORTS["http" if kind == "HTTPRoute" else "grpc"]
        assert backends == {(svc["metadata"]["name"], port)}  # never the metrics port
    grpc = _one(docs, "GRPCRoute")
    services = {m["method"]["service"] for r in grpc["spec"]["rules"] for m in r["matches"]}
    assert services == {"inference.GRPCInferenceService"}


def test_gateway_only_routes_inference_health_and_metadata(docs):
    http = _one(docs, "HTTPRoute")
    paths = {
        (m["path"]["type"], m["path"]["value"]) for r in http["spec"]["rules"] for m in r["matches"]
    }
    assert paths == {("Exact", "/v2"), ("PathPrefix", "/v2/health"), ("PathPrefix", "/v2/models")}


def test_autoscaler_scales_the_statefulset_on_a_triton_queue_metric(docs):
    so = _one(docs, "ScaledObject")
    target = so["spec"]["scaleTargetRef"]
    sts = _statefulset(docs)
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        sts["apiVersion"],
        sts["kind"],
        sts["metadata"]["name"],
    )
    (trigger,) = so["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    names = promql_metric_names(query)
    assert names == {"nv_inference_pending_request_count"}
    assert names <= TRITON_METRICS  # names read from a running tritonserver (test_deploy.py)
    # it counts the GPU models' queues in this namespace
    models = re.search(r'model=~"([^"]+)"', query).group(1).split("|")
    assert set(models) == {spec.ENCODER_MODEL, spec.DECODER_MODEL}
    assert f'namespace="{sts["metadata"]["namespace"]}"' in query
    assert trigger["metricType"] == "AverageValue" and float(trigger["metadata"]["threshold"]) > 0
    # at least two replicas, so that the PodDisruptionBudget can let one go
    assert so["spec"]["minReplicaCount"] >= 2
    assert so["spec"]["maxReplicaCount"] > so["spec"]["minReplicaCount"]
    down = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600  # a scale-in drops a session store


def test_prometheus_scrapes_each_replica_once(docs):
    sm = _one(docs, "ServiceMonitor")
    selected = [
        s
        for s in _all(docs, "Service")
        if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["sam2-triton"]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    # the Grafana dashboard's up{job="triton"} keeps working
    assert {"action": "replace", "targetLabel": "job", "replacement": "triton"} in ep["relabelings"]
    dashboard = (ROOT / "deploy" / "grafana" / "dashboards" / "sam2-triton.json").read_text()
    assert 'up{job=\\"triton\\"}' in dashboard


def test_network_policy_allows_exactly_tritons_ports(docs):
    pod_labels = _pod(docs)["metadata"]["labels"]
    policies = [
        p
        for p in _all(docs, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ]
    assert policies
    ingress_ports = set()
    metrics_sources = []
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            ports = {(pt["port"], pt["protocol"]) for pt in rule["ports"]}
            ingress_ports |= ports
            if (8002, "TCP") in ports:
                assert ports == {(8002, "TCP")}, "metrics share a rule with other ports"
                metrics_sources += rule["from"]
    assert ingress_ports == {(8000, "TCP"), (8001, "TCP"), (8002, "TCP")}
    # metrics: only from the monitoring namespace
    assert metrics_sources == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    main = _one(docs, "NetworkPolicy", "sam2-triton")
    assert set(main["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_disruption_budget_and_replicas(docs):
    pdb = _one(docs, "PodDisruptionBudget")
    sts = _statefulset(docs)
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert sts["spec"]["replicas"] >= 2
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in _all(docs, "Service")}
    (headless,) = [s for s in _all(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    assert headless["metadata"]["name"] == sts["spec"]["serviceName"]
    c = _container(docs)
    for res in ("requests", "limits"):
        assert int(c["resources"][res]["nvidia.com/gpu"]) == 1
    # terminationGracePeriodSeconds covers Triton's own exit timeout (compose: 45 s / 30 s)
    exit_timeout = int(_flags(c["args"])["exit-timeout-secs"])
    assert _pod(docs)["spec"]["terminationGracePeriodSeconds"] > exit_timeout


def test_docs_give_the_commands(renders):
    text = DOCS.read_text()
    for overlay in OVERLAYS:
        assert f"kubectl apply -k deploy/k8s/overlays/{overlay}" in text
    assert "kubectl -n sam2 create secret generic sam2-triton-admin" in text
    assert "kubectl -n sam2 create secret generic sam2-model-store" in text
    assert spec.SESSION_ROUTING_HEADER in text
    assert "kubectl -n sam2 scale statefulset/sam2-triton" in text
    assert "nv_inference_pending_request_count" in text
