"""The load test's report: figures of one run, pass/fail problems, the text summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .metrics import metrics_text, samples

MEMORY_KEYS = ("server_rss", "server_pss", "client_rss")
STAGES = ("start", "after_warmup", "peak_first_half", "peak_second_half", "peak", "end")


@dataclass
class LoadReport:
    """The figures of one run (``passed`` says whether every criterion held).

    ``memory_mb[key][stage]``: ``server_rss`` is the sum of ``VmRSS`` over tritonserver and its
    python-backend stubs (the shared-memory pool they share counts once per process),
    ``server_pss`` the same with shared pages divided among them (the real footprint),
    ``client_rss`` this process's ``VmRSS``; stages ``start`` (before any request),
    ``after_warmup``, ``peak_first_half`` / ``peak_second_half`` (highest sample, every 0.5 s,
    in each half of the time after warm-up), ``peak`` and ``end`` (all requests answered).
    Memory is flat when the second half's peak does not exceed the first half's by more than
    ``max_rss_growth_mb``: buffers and pools reach their size under load, a leak keeps growing.
    ``latency_s`` has ``all``, ``main`` (after warm-up), ``encode`` and ``decode``.
    """

    options: dict[str, Any]
    planned: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    mismatched: int = 0
    distinct_requests: int = 0
    duration_s: float = 0.0
    reference_s: float = 0.0
    throughput_rps: float = 0.0
    latency_s: dict[str, dict[str, float]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    client_cache: dict[str, int] = field(default_factory=dict)
    memory_mb: dict[str, dict[str, float | None]] = field(default_factory=dict)
    server_processes_mb: dict[str, dict[str, float | None]] = field(default_factory=dict)
    memory_timeline: list[dict[str, float | None]] = field(default_factory=list)
    server_failures: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        o = self.options
        lines = [
            f"load test: {o['clients']} clients x {o['requests']} requests = {self.planned} "
            f"({self.distinct_requests} distinct; reference run {self.reference_s:.1f} s)",
            f"  completed {self.completed}, failed {self.failed}, lost {self.lost}, "
            f"different from serial {self.mismatched}",
            f"  duration {self.duration_s:.1f} s, {self.throughput_rps:.2f} requests/s",
        ]
        for kind, s in self.latency_s.items():
            lines.append(
                f"    latency {kind:7s} n={int(s['n']):5d}  p50 {s['p50']:.3f} s  "
                f"p99 {s['p99']:.3f} s  max {s['max']:.3f} s"
            )
        retried = ", ".join(f"{n} after {k}" for k, n in sorted(self.retries.items()))
        lines.append(f"  client retries: {retried or 'none'}; client cache {self.client_cache}")
        for key, stages in self.memory_mb.items():
            text = ", ".join(f"{k} {'?' if v is None else f'{v:.0f}'}" for k, v in stages.items())
            lines.append(f"  {key} MB: {text}")
        for name, m in self.server_processes_mb.items():
            lines.append(f"    at the end: {name} RSS {m['rss_mb']} MB, PSS {m['pss_mb']} MB")
        failures = {k: v for k, v in self.server_failures.items() if v}
        lines.append(f"  server-side failed inferences: {failures or 'none'}")
        lines += [f"  error: {e}" for e in self.errors[:10]]
        lines.append("PASSED" if self.passed else "FAILED: " + "; ".join(self.problems))
        return "\n".join(lines)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "n": float(a.size),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def server_failures(metrics_url: str | None) -> dict[str, float]:
    """``{"<model>:<reason>": count}`` of the server's ``nv_inference_request_failure``."""
    if not metrics_url:
        return {}
    out: dict[str, float] = {}
    for labels, value in samples(metrics_text(metrics_url), "nv_inference_request_failure"):
        key = f"{labels.get('model')}:{labels.get('reason', 'all')}"
        out[key] = out.get(key, 0.0) + value
    return out
