"""``sam2-triton loadtest``: a bounded load test of the local Triton server, loopback only.

N concurrent clients each send M requests drawn (seeded) from a small pool: *encode* an image,
or *decode* 1-16 prompts on an image (which first calls ``encode``: a hit or a miss of the
client's two-image embedding cache, a hit or a miss of Triton's response cache). The clients
rotate through six kinds: gRPC, HTTP, gRPC + system shared memory and asyncio gRPC sending the
features with every decode, and gRPC and HTTP on the default path (the server-side session
model, when the repository has one).

Every result is compared with the same request run serially, one at a time, on a separate
reference server (same repository, response cache off). Pass criteria, all checked:

- no request fails and none is lost (every planned request returns, within ``--max-duration``);
- every result is bit-identical to the serial one (masks, scores, logits, embeddings);
- memory is flat after warm-up: the resident memory (``VmRSS`` from ``/proc``) of the server
  (``tritonserver`` plus its python-backend stubs; also their ``Pss``) and of this process does
  not grow by more than ``--max-rss-growth-mb`` from the first half of the main phase to the
  second (see ``LoadReport``);
- the server itself counted no failed inference (its ``nv_inference_request_failure``).

``ServerBusyError`` (a full queue), ``ServerUnavailableError`` and the server's queue timeout
are retried by the clients when ``--retries`` > 0; the retries are counted in the report, by
error type. The command stops by itself:
requests not sent within ``--max-duration`` count as lost.

By default the command starts its own servers on free loopback ports of ``--model-repository``.
``--grpc-url``/``--http-url`` target an already running server instead, which must listen on a
loopback address (the command refuses anything else); then the reference run happens first on
that same server, so the images are already in its response cache during the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import AsyncSAM2Client, ImageEmbedding, Prediction, Prompt, SAM2Client
from sam2_triton.errors import SAM2TritonError

LOGGER = logging.getLogger(__name__)

__all__ = [
    "ClientKind",
    "LoadOptions",
    "LoadReport",
    "RequestSpec",
    "add_arguments",
    "check_loopback",
    "listening_pids",
    "make_plan",
    "memory_by_process",
    "process_tree",
    "pss_bytes",
    "rss_bytes",
    "tree_memory",
    "run",
    "run_loadtest",
]

# One embedding is 16.8 MB in FP32: a two-image client cache makes misses part of the mix.
CLIENT_CACHE_BYTES = 2 * 17_000_000
IMAGE_SIZES = ((240, 320), (480, 640), (333, 500), (600, 400), (256, 256), (720, 540))
# Prompts per decode call, and how often each count is drawn (mean ~4.3 prompts).
PROMPT_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16)
PROMPT_WEIGHTS = (0.35, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05, 0.1)

# How each client talks to the server: protocol, then options. "+sessions" clients use the
# default (use_sessions=None: the server-side session model when the repository has one); the
# others send the features with every decode (use_sessions=False).
ClientKind = str
CLIENT_KINDS: tuple[ClientKind, ...] = (
    "grpc", "http", "grpc+shm", "grpc-aio", "grpc+sessions", "http+sessions",
)


# --- the workload ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadOptions:
    """What to run. ``warmup`` requests of each client run before the memory baseline."""

    clients: int = 32
    requests: int = 200
    images: int = 4
    prompt_sets: int = 6
    max_prompts: int = 16
    encode_fraction: float = 0.15
    warmup: int = 10
    seed: int = 0
    retries: int = 5
    timeout_s: float = 300.0
    max_duration_s: float = 3600.0
    max_rss_growth_mb: float = 256.0
    client_kinds: tuple[ClientKind, ...] = CLIENT_KINDS

    def __post_init__(self) -> None:
        checks = {
            "clients": self.clients >= 1,
            "requests": self.requests >= 1,
            "images": 1 <= self.images <= len(IMAGE_SIZES),
            "prompt_sets": self.prompt_sets >= 1,
            "max_prompts": self.max_prompts >= 1,
            "encode_fraction": 0.0 <= self.encode_fraction <= 1.0,
            "warmup": 0 <= self.warmup <= self.requests,
            "retries": self.retries >= 0,
            "timeout_s": self.timeout_s > 0,
            "max_duration_s": self.max_duration_s > 0,
            "max_rss_growth_mb": self.max_rss_growth_mb >= 0,
            "client_kinds": bool(self.client_kinds)
            and all(k in CLIENT_KINDS for k in self.client_kinds),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid load-test options: {', '.join(bad)} ({self})")


@dataclass(frozen=True)
class RequestSpec:
    """One request: ``encode`` image ``image``, or ``decode`` its prompt set ``prompt_set``."""

    kind: str
    image: int
    prompt_set: int = -1
    multimask: bool = True


def make_images(opts: LoadOptions) -> list[np.ndarray]:
    """``opts.images`` distinct seeded RGB uint8 pictures (smooth gradients plus noise)."""
    rng = np.random.default_rng(opts.seed)
    out = []
    for h, w in IMAGE_SIZES[: opts.images]:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200
        noise = rng.integers(0, 56, (h, w, 3))
        out.append((base + noise).clip(0, 255).astype(np.uint8))
    return out


def make_prompt_sets(images: Sequence[np.ndarray], opts: LoadOptions) -> list[list[list[Prompt]]]:
    """``[image][set]`` lists of prompts: clicks, click pairs, boxes, boxes with a click."""
    rng = np.random.default_rng(opts.seed + 1)
    counts = [n for n in PROMPT_COUNTS if n <= opts.max_prompts] or [1]
    weights = np.asarray(PROMPT_WEIGHTS[: len(counts)]) / sum(PROMPT_WEIGHTS[: len(counts)])
    sets: list[list[list[Prompt]]] = []
    for img in images:
        h, w = img.shape[:2]
        per_image = []
        for _ in range(opts.prompt_sets):
            n = int(rng.choice(counts, p=weights))
            prompts = []
            for _ in range(n):
                kind = int(rng.integers(0, 4))
                x, y = float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))
                if kind == 0:
                    prompts.append(Prompt(point_coords=[[x, y]], point_labels=[1]))
                elif kind == 1:
                    x2, y2 = float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))
                    prompts.append(Prompt(point_coords=[[x, y], [x2, y2]], point_labels=[1, 0]))
                else:
                    x0, y0 = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
                    box = [x0, y0, x0 + float(rng.uniform(8, w / 2)), y0 + float(rng.uniform(8, h / 2))]
                    if kind == 2:
                        prompts.append(Prompt(box=box))
                    else:
                        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                        prompts.append(Prompt(box=box, point_coords=[[cx, cy]], point_labels=[1]))
            per_image.append(prompts)
        sets.append(per_image)
    return sets


def make_plan(opts: LoadOptions) -> list[list[RequestSpec]]:
    """Per client, its ``opts.requests`` requests (seeded, reproducible)."""
    rng = np.random.default_rng(opts.seed + 2)
    plan = []
    for _ in range(opts.clients):
        reqs = []
        for _ in range(opts.requests):
            image = int(rng.integers(0, opts.images))
            if rng.random() < opts.encode_fraction:
                reqs.append(RequestSpec("encode", image))
            else:
                reqs.append(RequestSpec("decode", image, int(rng.integers(0, opts.prompt_sets)),
                                        bool(rng.random() < 0.7)))
        plan.append(reqs)
    return plan


# --- results -----------------------------------------------------------------------------------
def _digest(arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def embedding_digest(emb: ImageEmbedding) -> str:
    return _digest([*emb.features().values(), emb.fingerprint, np.asarray(emb.orig_hw)])


def prediction_digest(preds: Sequence[Prediction]) -> str:
    arrays: list[np.ndarray] = []
    for p in preds:
        arrays += [p.masks, p.scores, p.low_res_logits, np.asarray([p.object_score_logits], np.float32)]
    return _digest(arrays)


@dataclass
class Outcome:
    client: int
    index: int
    spec: RequestSpec
    seconds: float
    digest: str | None = None
    error: str | None = None


def pin_malloc_threshold(threshold: int = 1 << 20) -> bool:
    """Make glibc serve every allocation above ``threshold`` bytes with its own ``mmap``.

    By default glibc raises that threshold (up to 32 MiB) after large blocks are freed, so the
    17 MB request and response buffers of many client threads end up in per-thread heaps that
    keep their pages: the load generator's RSS then measures allocator retention rather than
    live memory. Called by the load test for its own process; returns False where the C
    library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, int(threshold)))


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


# --- /proc -------------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (e.g. tritonserver and its python-backend stubs)."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rss_bytes(pid: int) -> int | None:
    """``VmRSS`` of a process in bytes (None if it is gone or unreadable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (``Pss`` of ``/proc/<pid>/smaps_rollup``): resident memory with
    each shared page divided among the processes that map it, so that a sum over processes
    counts the python backend's shared-memory pool once."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _process_name(pid: int) -> str:
    """``tritonserver``, ``stub:<model>`` for a python-backend stub, else the command name."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    names = [a.decode(errors="replace") for a in args if a]
    for a in names[1:]:
        if a.endswith("model.py"):
            return f"stub:{Path(a).parent.parent.name}"
    return Path(names[0]).name if names else "?"


def memory_by_process(pids: Sequence[int]) -> dict[str, dict[str, float | None]]:
    """``{name: {"rss_mb", "pss_mb"}}`` for ``pids`` and their descendants."""
    out = {}
    for p in (q for root in pids for q in process_tree(root)):
        out[f"{_process_name(p)}[{p}]"] = {"rss_mb": _mb(rss_bytes(p)), "pss_mb": _mb(pss_bytes(p))}
    return out


def tree_memory(pids: Sequence[int]) -> tuple[int | None, int | None]:
    """``(sum of VmRSS, sum of Pss)`` over ``pids`` and their descendants (None if unreadable)."""
    procs = [p for root in pids for p in process_tree(root)]
    out = []
    for read in (rss_bytes, pss_bytes):
        known = [v for v in map(read, procs) if v is not None]
        out.append(sum(known) if known else None)
    return out[0], out[1]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def listening_sockets(pids: Sequence[int] | None = None) -> list[tuple[str, int, str]]:
    """``(address, port, inode)`` of every TCP socket in LISTEN state (``/proc/net/tcp{,6}``),
    restricted to sockets owned by ``pids`` when given. IPv4-mapped IPv6 addresses are given
    in their IPv4 form."""
    owned = set().union(*(_socket_inodes(p) for p in pids)) if pids is not None else None
    out = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = cols[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addr = socket.inet_ntop(family, raw)
            mapped = ipaddress.ip_address(addr)
            if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped:
                addr = str(mapped.ipv4_mapped)  # gRPC's dual-stack socket on ::ffff:127.0.0.1
            if owned is None or cols[9] in owned:
                out.append((addr, int(port_hex, 16), cols[9]))
    return out


def listening_pids(port: int) -> list[int]:
    """Processes of this user that listen on TCP ``port`` (any address)."""
    inodes = {inode for _, p, inode in listening_sockets() if p == port}
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and inodes & _socket_inodes(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def check_loopback(url: str) -> str:
    """Return ``url`` (``[scheme://]host:port``) if its host resolves only to loopback
    addresses; raise ValueError otherwise."""
    host, sep, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {url!r}")
    host = host.strip("[]")
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from exc
    remote = [a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if remote:
        raise ValueError(
            f"the load test only targets loopback servers; {host!r} resolves to {sorted(remote)}"
        )
    return url


# --- running requests --------------------------------------------------------------------------
class _Workload:
    def __init__(self, opts: LoadOptions) -> None:
        self.opts = opts
        self.images = make_images(opts)
        self.prompts = make_prompt_sets(self.images, opts)
        self.plan = make_plan(opts)

    def distinct(self) -> list[RequestSpec]:
        return sorted({s for reqs in self.plan for s in reqs},
                      key=lambda s: (s.kind, s.image, s.prompt_set, s.multimask))


def _sync_request(client: SAM2Client, work: _Workload, spec: RequestSpec) -> str:
    emb = client.encode(work.images[spec.image])
    if spec.kind == "encode":  # a RemoteEmbedding's features are compared too
        return embedding_digest(emb if isinstance(emb, ImageEmbedding)
                                else client.fetch_embedding(emb))
    preds = client.decode(emb, work.prompts[spec.image][spec.prompt_set],
                          multimask_output=spec.multimask)
    return prediction_digest(preds)


async def _async_request(client: AsyncSAM2Client, work: _Workload, spec: RequestSpec) -> str:
    emb = await client.encode(work.images[spec.image])
    if spec.kind == "encode":
        return embedding_digest(emb if isinstance(emb, ImageEmbedding)
                                else await client.fetch_embedding(emb))
    preds = await client.decode(emb, work.prompts[spec.image][spec.prompt_set],
                                multimask_output=spec.multimask)
    return prediction_digest(preds)


def reference_digests(work: _Workload, grpc_url: str, timeout_s: float) -> dict[RequestSpec, str]:
    """Every distinct request of the plan, run serially by one client (features path; its
    embedding cache holds every image, so each is encoded once)."""
    out = {}
    with SAM2Client(grpc_url, "grpc", timeout_s=timeout_s, embedding_cache_bytes=2**30,
                    use_sessions=False) as client:
        client.wait_until_ready(timeout_s)
        for spec in work.distinct():
            out[spec] = _sync_request(client, work, spec)
    return out


class _RetryCounter(logging.Handler):
    """Counts the client's retry log lines (``sam2_triton._core``) by the error retried."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if "; retry " in str(record.msg) and record.args:
            kind = type(record.args[0]).__name__  # ServerBusyError, RequestTimeoutError, ...
            with self._lock2:
                self.counts[kind] += 1


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
            lines.append(f"    latency {kind:7s} n={int(s['n']):5d}  p50 {s['p50']:.3f} s  "
                         f"p99 {s['p99']:.3f} s  max {s['max']:.3f} s")
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


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {"n": float(a.size), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _server_failures(metrics_url: str | None) -> dict[str, float]:
    if not metrics_url:
        return {}
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^nv_inference_request_failure\{([^}]*)\}\s+(\S+)', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = f"{labels.get('model')}:{labels.get('reason', 'all')}"
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


class _Runner:
    """Threads, one per client. Two barriers after warm-up: the memory baseline is taken while
    every client waits, then all start the main phase together."""

    def __init__(self, work: _Workload, grpc_url: str | None, http_url: str | None) -> None:
        self.work = work
        self.opts = work.opts
        self.urls = {"http": http_url, "grpc": grpc_url}
        self.kinds = [k for k in self.opts.client_kinds if self.urls[k.split("+")[0].split("-")[0]]]
        if not self.kinds:
            raise ValueError("no client kind can be used with the given URLs")
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self.warm = threading.Barrier(self.opts.clients + 1)
        self.go = threading.Barrier(self.opts.clients + 1)
        self.deadline = 0.0
        self.cache: Counter[str] = Counter()

    def _record(self, c: int, i: int, t0: float, digest: str | None, error: str | None) -> None:
        outcome = Outcome(c, i, self.work.plan[c][i], time.perf_counter() - t0, digest, error)
        with self._lock:
            self.outcomes.append(outcome)

    def _indices(self, phase: int) -> range:
        w = self.opts.warmup
        return range(0, w) if phase == 0 else range(w, self.opts.requests)

    def _between_phases(self) -> None:
        for barrier in (self.warm, self.go):
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=max(1.0, self.deadline - time.monotonic()))

    def _sync_worker(self, c: int, kind: str) -> None:
        protocol = kind.split("+")[0]
        client = SAM2Client(self.urls[protocol], protocol, timeout_s=self.opts.timeout_s,
                            embedding_cache_bytes=CLIENT_CACHE_BYTES, retries=self.opts.retries,
                            use_shared_memory=kind == "grpc+shm",
                            use_sessions=None if kind.endswith("+sessions") else False)
        try:
            for phase in (0, 1):
                for i in self._indices(phase):
                    if time.monotonic() > self.deadline:
                        break
                    t0 = time.perf_counter()
                    try:
                        digest = _sync_request(client, self.work, self.work.plan[c][i])
                        self._record(c, i, t0, digest, None)
                    except SAM2TritonError as exc:
                        self._record(c, i, t0, None, f"{type(exc).__name__}: {exc}")
                if phase == 0:
                    self._between_phases()
        finally:
            stats = client.cache_stats()
            with self._lock:
                self.cache.update(hits=stats.hits, misses=stats.misses)
            client.close()

    def _async_worker(self, c: int) -> None:
        async def main() -> None:
            client = AsyncSAM2Client(self.urls["grpc"], "grpc", timeout_s=self.opts.timeout_s,
                                     embedding_cache_bytes=CLIENT_CACHE_BYTES,
                                     retries=self.opts.retries, use_sessions=False)
            try:
                for phase in (0, 1):
                    for i in self._indices(phase):
                        if time.monotonic() > self.deadline:
                            break
                        t0 = time.perf_counter()
                        try:
                            digest = await _async_request(client, self.work, self.work.plan[c][i])
                            self._record(c, i, t0, digest, None)
                        except SAM2TritonError as exc:
                            self._record(c, i, t0, None, f"{type(exc).__name__}: {exc}")
                    if phase == 0:
                        await asyncio.to_thread(self._between_phases)
            finally:
                stats = client.cache_stats()
                with self._lock:
                    self.cache.update(hits=stats.hits, misses=stats.misses)
                await client.close()

        asyncio.run(main())

    def _worker(self, c: int) -> None:
        kind = self.kinds[c % len(self.kinds)]
        finished = False
        try:
            if kind == "grpc-aio":
                self._async_worker(c)
            else:
                self._sync_worker(c, kind)
            finished = True
        finally:
            if not finished:  # a crashed worker must not hold the others at a barrier
                self.warm.abort()
                self.go.abort()

    def start(self) -> list[threading.Thread]:
        self.deadline = time.monotonic() + self.opts.max_duration_s
        threads = [threading.Thread(target=self._worker, args=(c,), name=f"loadtest-{c}",
                                    daemon=True) for c in range(self.opts.clients)]
        for t in threads:
            t.start()
        return threads


def _memory(server_pids: Sequence[int]) -> dict[str, int | None]:
    rss, pss = tree_memory(server_pids) if server_pids else (None, None)
    return {"server_rss": rss, "server_pss": pss, "client_rss": rss_bytes(os.getpid())}


def run_against(
    opts: LoadOptions,
    grpc_url: str | None,
    http_url: str | None,
    server_pids: Sequence[int] = (),
    metrics_url: str | None = None,
    reference: dict[RequestSpec, str] | None = None,
    out: Callable[[str], None] = print,
    progress_s: float = 60.0,
) -> LoadReport:
    """Run the load against a running server. Without ``reference`` digests, the distinct
    requests are first run serially on the same server (gRPC URL needed). A progress line
    goes to ``out`` every ``progress_s`` seconds."""
    for url in (grpc_url, http_url):
        if url:
            check_loopback(url)
    pin_malloc_threshold()
    work = _Workload(opts)
    report = LoadReport(options=asdict(opts))
    report.planned = opts.clients * opts.requests
    report.distinct_requests = len(work.distinct())
    if reference is None:
        if grpc_url is None:
            raise ValueError("a gRPC URL is needed for the reference run")
        out(f"reference: {report.distinct_requests} distinct requests, serially ...")
        t0 = time.monotonic()
        reference = reference_digests(work, grpc_url, opts.timeout_s)
        report.reference_s = round(time.monotonic() - t0, 1)

    counter = _RetryCounter()
    core_logger = logging.getLogger("sam2_triton._core")
    old_level = core_logger.level
    core_logger.addHandler(counter)
    if core_logger.getEffectiveLevel() > logging.INFO:
        core_logger.setLevel(logging.INFO)
    samples: list[dict[str, int | None]] = []
    times: list[float] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        last = time.monotonic()
        while not stop_sampling.wait(0.5):
            samples.append(_memory(server_pids))
            times.append(time.monotonic() - t0)
            if time.monotonic() - last >= progress_s:
                last = time.monotonic()
                m = samples[-1]
                out(f"  {times[-1]:6.0f} s: {len(runner.outcomes)}/{report.planned} answered; "
                    f"server RSS {_mb(m['server_rss'])} MB (PSS {_mb(m['server_pss'])} MB), "
                    f"client RSS {_mb(m['client_rss'])} MB")

    runner = _Runner(work, grpc_url, http_url)
    stages = {"start": _memory(server_pids)}
    out(f"load: {opts.clients} clients ({', '.join(runner.kinds)}) x {opts.requests} requests, "
        f"warm-up {opts.warmup} each ...")
    t0 = time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        threads = runner.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # every client did its warm-up
            runner.warm.wait(timeout=opts.max_duration_s)
        stages["after_warmup"] = _memory(server_pids)
        t_main = time.monotonic()
        main_start = t_main - t0
        out(f"  warm-up done after {t_main - t0:.1f} s; server RSS "
            f"{_mb(stages['after_warmup']['server_rss'])} MB (PSS "
            f"{_mb(stages['after_warmup']['server_pss'])} MB), client RSS "
            f"{_mb(stages['after_warmup']['client_rss'])} MB")
        with contextlib.suppress(threading.BrokenBarrierError):  # start the main phase
            runner.go.wait(timeout=opts.max_duration_s)
        for t in threads:
            t.join(max(0.0, runner.deadline - time.monotonic()) + opts.timeout_s)
    finally:
        stop_sampling.set()
        sampler.join()
        core_logger.removeHandler(counter)
        core_logger.setLevel(old_level)
    report.duration_s = round(time.monotonic() - t0, 1)
    stages["end"] = _memory(server_pids)
    report.server_processes_mb = memory_by_process(server_pids)
    middle = (main_start + report.duration_s) / 2

    def peak(keep: Callable[[float], bool]) -> dict[str, int | None]:
        return {k: max((s[k] for s, t in zip(samples, times) if s[k] is not None and keep(t)),
                       default=None) for k in MEMORY_KEYS}

    stages["peak"] = peak(lambda t: True)
    stages["peak_first_half"] = peak(lambda t: main_start <= t < middle)
    stages["peak_second_half"] = peak(lambda t: t >= middle)
    report.memory_mb = {k: {st: _mb(stages[st][k]) for st in STAGES} for k in MEMORY_KEYS}
    step = max(1, len(samples) // 24)
    report.memory_timeline = [{"t_s": round(times[i], 1), **{k: _mb(samples[i][k])
                                                          for k in MEMORY_KEYS}}
                              for i in range(0, len(samples), step)]

    outcomes = sorted(runner.outcomes, key=lambda o: (o.client, o.index))
    report.completed = sum(o.error is None for o in outcomes)
    report.failed = sum(o.error is not None for o in outcomes)
    report.lost = report.planned - len(outcomes)
    report.mismatched = sum(o.digest is not None and o.digest != reference.get(o.spec)
                            for o in outcomes)
    report.errors = sorted({o.error for o in outcomes if o.error})
    report.throughput_rps = round(len(outcomes) / max(report.duration_s, 1e-9), 2)
    report.latency_s = {
        "all": _percentiles([o.seconds for o in outcomes]),
        "main": _percentiles([o.seconds for o in outcomes if o.index >= opts.warmup]),
        **{kind: _percentiles([o.seconds for o in outcomes if o.spec.kind == kind])
           for kind in ("encode", "decode")},
    }
    report.retries = dict(counter.counts)
    report.client_cache = dict(runner.cache)
    report.server_failures = _server_failures(metrics_url)

    if report.failed:
        report.problems.append(f"{report.failed} requests failed")
    if report.lost:
        report.problems.append(f"{report.lost} requests lost (not run or no answer)")
    if report.mismatched:
        report.problems.append(f"{report.mismatched} results differ from the serial run")
    limit = opts.max_rss_growth_mb
    for key in MEMORY_KEYS:
        m = report.memory_mb[key]
        first, second = m["peak_first_half"], m["peak_second_half"]
        if first is None or second is None:  # too short to sample both halves
            first, second = m["after_warmup"], m["end"]
        if first is not None and second is not None and second - first > limit:
            report.problems.append(
                f"{key} kept growing after warm-up: {first:.0f} MB -> {second:.0f} MB "
                f"(limit {limit:g} MB)")
    # Rejections (a full queue, the queue timeout) are retried by the clients; any other
    # failure counts.
    real = {k: v for k, v in report.server_failures.items() if v and "REJECTED" not in k}
    if real:
        report.problems.append(f"the server counted failed inferences: {real}")
    return report


@contextlib.contextmanager
def _local_server(repository: Path, cache_size: int | None, log: Callable[[str], None]
                  ) -> Iterator[Any]:
    from .launcher import DEFAULT_CACHE_SIZE, LocalTritonServer

    server = LocalTritonServer(repository, http_port=0, grpc_port=0, metrics_port=0,
                               cache_size=DEFAULT_CACHE_SIZE if cache_size is None else cache_size)
    with server:
        log(f"  tritonserver pid {server.pid} on {server.grpc_url} (gRPC), {server.http_url}")
        yield server


def run_loadtest(
    opts: LoadOptions,
    repository: str | os.PathLike[str] | None = None,
    grpc_url: str | None = None,
    http_url: str | None = None,
    out: Callable[[str], None] = print,
) -> LoadReport:
    """The whole load test: its own local servers on ``repository``, or the given URLs."""
    if grpc_url or http_url:
        pids: list[int] = []
        for url in (grpc_url, http_url):
            if url:
                pids += listening_pids(int(check_loopback(url).rpartition(":")[2]))
        return run_against(opts, grpc_url, http_url, sorted(set(pids)), out=out)
    if repository is None:
        raise ValueError("give a model repository or the URLs of a running server")
    repo = Path(repository)
    work = _Workload(opts)
    out("reference server (response cache off):")
    t0 = time.monotonic()
    with _local_server(repo, 0, out) as ref:
        reference = reference_digests(work, ref.grpc_url, opts.timeout_s)
    reference_s = round(time.monotonic() - t0, 1)
    out(f"  {len(reference)} distinct requests in {reference_s} s")
    out("load server:")
    with _local_server(repo, None, out) as server:
        report = run_against(opts, server.grpc_url, server.http_url, [server.pid],
                             server.metrics_url, reference=reference, out=out)
    report.reference_s = reference_s
    return report


# --- the command -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LoadOptions()
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                        help="repository to serve on local servers (default: model_repository)")
    parser.add_argument("--grpc-url", default=None,
                        help="use this running server (loopback only) instead of starting one")
    parser.add_argument("--http-url", default=None, help="its HTTP endpoint (loopback only)")
    parser.add_argument("--clients", type=int, default=d.clients,
                        help="concurrent clients, one thread each, every client kind in turn "
                             "(default %(default)s)")
    parser.add_argument("--requests", type=int, default=d.requests,
                        help="requests per client (default %(default)s)")
    parser.add_argument("--images", type=int, default=d.images, help="distinct images")
    parser.add_argument("--prompt-sets", type=int, default=d.prompt_sets,
                        help="distinct prompt sets (1-16 prompts) per image")
    parser.add_argument("--max-prompts", type=int, default=d.max_prompts,
                        help="most prompts per decode call (default 16)")
    parser.add_argument("--encode-fraction", type=float, default=d.encode_fraction,
                        help="share of requests that encode an image (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=d.warmup,
                        help="requests per client before the memory baseline")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="seed of the images and the request mix (default %(default)s)")
    parser.add_argument("--retries", type=int, default=d.retries,
                        help="client retries after ServerBusyError, ServerUnavailableError or the "
                             "server's queue timeout (default 5)")
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="per request, s")
    parser.add_argument("--max-duration", type=float, default=d.max_duration_s,
                        help="stop sending after this many seconds (unsent requests count as lost)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=d.max_rss_growth_mb,
                        help="allowed growth of the peak resident memory from the first to the "
                             "second half of the main phase (default %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")


def run(args: argparse.Namespace) -> int:
    """``sam2-triton loadtest``: 0 when every criterion held, 1 otherwise, 2 on bad options."""
    try:
        opts = LoadOptions(
            clients=args.clients, requests=args.requests, images=args.images,
            prompt_sets=args.prompt_sets, max_prompts=args.max_prompts,
            encode_fraction=args.encode_fraction,
            warmup=min(args.warmup, args.requests), seed=args.seed, retries=args.retries,
            timeout_s=args.timeout, max_duration_s=args.max_duration,
            max_rss_growth_mb=args.max_rss_growth_mb)
        for url in (args.grpc_url, args.http_url):
            if url:
                check_loopback(url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def out(line: str) -> None:
        print(line, flush=True)

    from .errors import LauncherError

    try:
        report = run_loadtest(opts, args.model_repository, args.grpc_url, args.http_url, out=out)
    except (LauncherError, SAM2TritonError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"report: {args.json}")
    return 0 if report.passed else 1
