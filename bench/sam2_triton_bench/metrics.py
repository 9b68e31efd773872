"""The project's one reader of Prometheus text (Triton's metrics port), on ``prometheus_client``.

``metrics_text(url)`` fetches ``/metrics``; ``metric(text, name, **labels)`` sums the samples of
``name`` whose labels include ``labels``; ``samples(text, name)`` yields them one by one.

Triton names its counters without the ``_total`` suffix (``nv_inference_count``,
``nv_inference_request_failure``) and declares them ``# TYPE ... counter``.
``prometheus_client``'s parser reads that text without error but renames such counter samples
to ``<name>_total`` (its OpenMetrics representation). ``samples`` therefore also accepts a
counter sample ``<name>_total`` in the family ``<name>``: a query by the name as Triton writes
it finds it. (A counter written as ``x_total`` is found as ``x_total``, and also as ``x``.)
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "metric",
    "metrics_text",
    "metrics_url",
    "model_statistics",
    "samples",
    "try_metrics_text",
]


def metrics_url(url: str) -> str:
    """``http://host:port/metrics`` for ``host:port``, ``http://host:port`` or the full URL."""
    url = url.rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url if url.endswith("/metrics") else f"{url}/metrics"


def metrics_text(url: str, timeout_s: float = 10.0) -> str:
    """The Prometheus exposition of a metrics endpoint (see ``metrics_url`` for ``url``)."""
    with urllib.request.urlopen(metrics_url(url), timeout=timeout_s) as response:
        return response.read().decode()


def try_metrics_text(url: str | None, timeout_s: float = 10.0) -> str | None:
    """``metrics_text``, or None without a URL or when the endpoint cannot be read."""
    if not url:
        return None
    try:
        return metrics_text(url, timeout_s)
    except OSError:
        return None


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """``(labels, value)`` of every sample of ``name`` (Triton's counter names included)."""
    for family in text_string_to_metric_families(text):
        counter = family.type == "counter" and family.name == name
        for s in family.samples:
            if s.name == name or (counter and s.name == f"{name}_total"):
                yield s.labels, float(s.value)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        value
        for got, value in samples(text, name)
        if all(got.get(k) == str(v) for k, v in labels.items())
    )


def model_statistics(
    url: str, protocol: str, models: tuple[str, ...]
) -> dict[str, dict[str, int]] | None:
    """Triton's cumulative per-model statistics (the statistics API, not ``/metrics``) of
    ``models``: successful requests (``count``, ``success_ns``), ``queue_ns``,
    ``compute_infer_ns`` and ``executions``; None where the server does not give them."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as tc

            with tc.InferenceServerClient(url) as client:
                doc = client.get_inference_statistics("", as_json=True)
        else:
            import tritonclient.http as tc

            with tc.InferenceServerClient(url.removeprefix("http://")) as client:
                doc = client.get_inference_statistics("")
    except Exception:  # noqa: BLE001 - statistics are optional (a server may not allow them)
        return None
    out = {}
    for m in doc.get("model_stats", []):
        if m.get("name") not in models:
            continue
        s = m.get("inference_stats", {})
        out[m["name"]] = {
            "count": int(s.get("success", {}).get("count", 0)),
            "success_ns": int(s.get("success", {}).get("ns", 0)),
            "queue_ns": int(s.get("queue", {}).get("ns", 0)),
            "compute_infer_ns": int(s.get("compute_infer", {}).get("ns", 0)),
            "executions": int(m.get("execution_count", 0)),
        }
    return out
