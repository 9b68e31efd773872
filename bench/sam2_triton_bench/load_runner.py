"""Running the load test: client threads (one per client, every client kind in turn), the serial
reference run, memory sampling, and the pass criteria (see ``loadtest``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sam2_triton import AsyncSAM2Client, ImageEmbedding, SAM2Client
from sam2_triton.errors import SAM2TritonError

from .load_report import MEMORY_KEYS, STAGES, LoadReport, percentiles, server_failures
from .load_workload import (
    CLIENT_CACHE_BYTES,
    LoadOptions,
    RequestSpec,
    Workload,
    embedding_digest,
    prediction_digest,
)
from .procmem import (
    check_loopback,
    listening_pids,
    mb,
    memory_by_process,
    pin_malloc_threshold,
    rss_bytes,
    tree_memory,
)


@dataclass
class Outcome:
    client: int
    index: int
    spec: RequestSpec
    seconds: float
    digest: str | None = None
    error: str | None = None


def _sync_request(client: SAM2Client, work: Workload, spec: RequestSpec) -> str:
    emb = client.encode(work.images[spec.image])
    if spec.kind == "encode":  # a RemoteEmbedding's features are compared too
        return embedding_digest(
            emb if isinstance(emb, ImageEmbedding) else client.fetch_embedding(emb)
        )
    preds = client.decode(
        emb, work.prompts[spec.image][spec.prompt_set], multimask_output=spec.multimask
    )
    return prediction_digest(preds)


async def _async_request(client: AsyncSAM2Client, work: Workload, spec: RequestSpec) -> str:
    emb = await client.encode(work.images[spec.image])
    if spec.kind == "encode":
        return embedding_digest(
            emb if isinstance(emb, ImageEmbedding) else await client.fetch_embedding(emb)
        )
    preds = await client.decode(
        emb, work.prompts[spec.image][spec.prompt_set], multimask_output=spec.multimask
    )
    return prediction_digest(preds)


def reference_digests(work: Workload, grpc_url: str, timeout_s: float) -> dict[RequestSpec, str]:
    """Every distinct request of the plan, run serially by one client (features path; its
    embedding cache holds every image, so each is encoded once)."""
    out = {}
    with SAM2Client(
        grpc_url, "grpc", timeout_s=timeout_s, embedding_cache_bytes=2**30, use_sessions=False
    ) as client:
        client.wait_until_ready(timeout_s)
        for spec in work.distinct():
            out[spec] = _sync_request(client, work, spec)
    return out


class _RetryCounter(logging.Handler):
    """Counts the client's retry log lines by the error retried (INFO records of the SDK's
    loggers, ``sam2_triton`` and below, whose message says ``"; retry "``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if "; retry " in str(record.msg) and record.args:
            kind = type(record.args[0]).__name__  # ServerBusyError, RequestTimeoutError, ...
            with self._lock2:
                self.counts[kind] += 1


class _Runner:
    """Threads, one per client. Two barriers after warm-up: the memory baseline is taken while
    every client waits, then all start the main phase together."""

    def __init__(self, work: Workload, grpc_url: str | None, http_url: str | None) -> None:
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
        client = SAM2Client(
            self.urls[protocol],
            protocol,
            timeout_s=self.opts.timeout_s,
            embedding_cache_bytes=CLIENT_CACHE_BYTES,
            retries=self.opts.retries,
            use_shared_memory=kind == "grpc+shm",
            use_sessions=None if kind.endswith("+sessions") else False,
        )
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
            client = AsyncSAM2Client(
                self.urls["grpc"],
                "grpc",
                timeout_s=self.opts.timeout_s,
                embedding_cache_bytes=CLIENT_CACHE_BYTES,
                retries=self.opts.retries,
                use_sessions=False,
            )
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
        threads = [
            threading.Thread(target=self._worker, args=(c,), name=f"loadtest-{c}", daemon=True)
            for c in range(self.opts.clients)
        ]
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
    work = Workload(opts)
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
    sdk_logger = logging.getLogger("sam2_triton")  # the SDK's loggers propagate to it
    old_level = sdk_logger.level
    sdk_logger.addHandler(counter)
    if sdk_logger.getEffectiveLevel() > logging.INFO:
        sdk_logger.setLevel(logging.INFO)
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
                out(
                    f"  {times[-1]:6.0f} s: {len(runner.outcomes)}/{report.planned} answered; "
                    f"server RSS {mb(m['server_rss'])} MB (PSS {mb(m['server_pss'])} MB), "
                    f"client RSS {mb(m['client_rss'])} MB"
                )

    runner = _Runner(work, grpc_url, http_url)
    stages = {"start": _memory(server_pids)}
    out(
        f"load: {opts.clients} clients ({', '.join(runner.kinds)}) x {opts.requests} requests, "
        f"warm-up {opts.warmup} each ..."
    )
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
        out(
            f"  warm-up done after {t_main - t0:.1f} s; server RSS "
            f"{mb(stages['after_warmup']['server_rss'])} MB (PSS "
            f"{mb(stages['after_warmup']['server_pss'])} MB), client RSS "
            f"{mb(stages['after_warmup']['client_rss'])} MB"
        )
        with contextlib.suppress(threading.BrokenBarrierError):  # start the main phase
            runner.go.wait(timeout=opts.max_duration_s)
        for t in threads:
            t.join(max(0.0, runner.deadline - time.monotonic()) + opts.timeout_s)
    finally:
        stop_sampling.set()
        sampler.join()
        sdk_logger.removeHandler(counter)
        sdk_logger.setLevel(old_level)
    report.duration_s = round(time.monotonic() - t0, 1)
    stages["end"] = _memory(server_pids)
    report.server_processes_mb = memory_by_process(server_pids)
    middle = (main_start + report.duration_s) / 2

    def peak(keep: Callable[[float], bool]) -> dict[str, int | None]:
        return {
            k: max(
                (s[k] for s, t in zip(samples, times) if s[k] is not None and keep(t)), default=None
            )
            for k in MEMORY_KEYS
        }

    stages["peak"] = peak(lambda t: True)
    stages["peak_first_half"] = peak(lambda t: main_start <= t < middle)
    stages["peak_second_half"] = peak(lambda t: t >= middle)
    report.memory_mb = {k: {st: mb(stages[st][k]) for st in STAGES} for k in MEMORY_KEYS}
    step = max(1, len(samples) // 24)
    report.memory_timeline = [
        {"t_s": round(times[i], 1), **{k: mb(samples[i][k]) for k in MEMORY_KEYS}}
        for i in range(0, len(samples), step)
    ]

    outcomes = sorted(runner.outcomes, key=lambda o: (o.client, o.index))
    report.completed = sum(o.error is None for o in outcomes)
    report.failed = sum(o.error is not None for o in outcomes)
    report.lost = report.planned - len(outcomes)
    report.mismatched = sum(
        o.digest is not None and o.digest != reference.get(o.spec) for o in outcomes
    )
    report.errors = sorted({o.error for o in outcomes if o.error})
    report.throughput_rps = round(len(outcomes) / max(report.duration_s, 1e-9), 2)
    report.latency_s = {
        "all": percentiles([o.seconds for o in outcomes]),
        "main": percentiles([o.seconds for o in outcomes if o.index >= opts.warmup]),
        **{
            kind: percentiles([o.seconds for o in outcomes if o.spec.kind == kind])
            for kind in ("encode", "decode")
        },
    }
    report.retries = dict(counter.counts)
    report.client_cache = dict(runner.cache)
    report.server_failures = server_failures(metrics_url)

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
                f"(limit {limit:g} MB)"
            )
    # Rejections (a full queue, the queue timeout) are retried by the clients; any other
    # failure counts.
    real = {k: v for k, v in report.server_failures.items() if v and "REJECTED" not in k}
    if real:
        report.problems.append(f"the server counted failed inferences: {real}")
    return report


@contextlib.contextmanager
def _local_server(
    repository: Path, cache_size: int | None, log: Callable[[str], None]
) -> Iterator[Any]:
    from sam2_triton_serve.launcher import DEFAULT_CACHE_SIZE, LocalTritonServer

    server = LocalTritonServer(
        repository,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        cache_size=DEFAULT_CACHE_SIZE if cache_size is None else cache_size,
    )
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
    work = Workload(opts)
    out("reference server (response cache off):")
    t0 = time.monotonic()
    with _local_server(repo, 0, out) as ref:
        reference = reference_digests(work, ref.grpc_url, opts.timeout_s)
    reference_s = round(time.monotonic() - t0, 1)
    out(f"  {len(reference)} distinct requests in {reference_s} s")
    out("load server:")
    with _local_server(repo, None, out) as server:
        report = run_against(
            opts,
            server.grpc_url,
            server.http_url,
            [server.pid],
            server.metrics_url,
            reference=reference,
            out=out,
        )
    report.reference_s = reference_s
    return report
