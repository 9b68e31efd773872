"""Small helpers for tests that talk to the real local tritonserver.

Prometheus text is read by the project's one parser, ``sam2_triton_bench.metrics``.
"""

from __future__ import annotations

import time

import tritonclient.grpc

from sam2_triton_bench.metrics import metric, metrics_text

__all__ = ["Requests", "metric", "metrics_text", "model_stats"]


def model_stats(server) -> dict[str, dict[str, int]]:
    """Per model: requests that reached it (``requests`` = succeeded + failed, cache hits
    included), ``inferences`` (batch items executed) and ``executions`` (model runs)."""
    with tritonclient.grpc.InferenceServerClient(server.grpc_url) as triton:
        stats = triton.get_inference_statistics(as_json=True)["model_stats"]
    out = {}
    for s in stats:
        inf = s.get("inference_stats", {})
        out[s["name"]] = {
            "requests": sum(int(inf.get(k, {}).get("count", 0)) for k in ("success", "fail")),
            "inferences": int(s.get("inference_count", 0)),
            "executions": int(s.get("execution_count", 0)),
        }
    return out


class Requests:
    """Counts what reaches Triton from construction on: ``delta(model, key)``."""

    def __init__(self, server) -> None:
        self.server = server
        self.before = model_stats(server)

    def delta(self, model: str, key: str = "requests") -> int:
        return model_stats(self.server)[model][key] - self.before[model][key]

    def settled(
        self, model: str, key: str = "requests", expect: int | None = None, timeout: float = 10
    ) -> int:
        """``delta`` once it stops changing (statistics are reported just after the response),
        waiting up to ``timeout`` seconds for it to reach ``expect``."""
        deadline = time.monotonic() + timeout
        last = self.delta(model, key)
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.delta(model, key)
            if now == last and (expect is None or now == expect):
                return now
            last = now
        return last
