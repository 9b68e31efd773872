"""Small helpers for tests that talk to the real local tritonserver.

Prometheus text is read by the project's one parser, ``sam2_triton_bench.metrics``.
"""

from __future__ import annotations

from sam2_triton_bench.metrics import metric, metrics_text

__all__ = ["metric", "metrics_text"]
