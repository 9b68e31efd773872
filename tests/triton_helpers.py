"""Small helpers for tests that talk to the real local tritonserver."""

from __future__ import annotations

import re
import urllib.request

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')


def metrics_text(metrics_url: str) -> str:
    """The Prometheus exposition of the metrics port."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group("name") != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels") or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group("value"))
    return total
