"""The measurements of ``sam2-triton bench``: one ``Bench`` holds the server, the clients and the
baselines; each section method measures one thing and returns a JSON-ready dict.

Timing rules, everywhere: every variant runs once before measuring (warm-up, excluded); compared
variants are interleaved in rounds (ABC, BCA, CAB, ...) so that the load other processes put on
the machine hits them alike; results are medians and p95/p99 of all rounds, and ratios.
"""

from __future__ import annotations

import cProfile
import inspect
import json
import math
import os
import pstats
import re
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import _wire, spec
from sam2_triton.types import Prompt

from . import machine, targets
from .stats import Rounds, paired_ratio, summarize, timed
from .wirebytes import CountingProxy

# batching first: its batches of 4 are the run's memory peak, best met before the in-process
# baselines (onnxruntime arenas, the PyTorch model) and the FP16 encoder have grown
SECTIONS = ("batching", "encoder", "decoder", "click", "fp16", "bytes", "profile")
SKIPPABLE = (*SECTIONS, "sam2", "http")
TIMEOUT_S = 900.0  # per request: an encoder batch of 8 on a loaded 2-core machine is slow
GAP_S = 0.02  # pause between timed calls: lets onnxruntime's spinning threads settle


@dataclass
class Plan:
    """How much of everything to measure (``--repeats``, ``--quick``)."""

    quick: bool
    repeats: int
    concurrency: tuple[int, ...]
    batching_rounds: int
    decoder_ns: tuple[int, ...]
    decoder_rounds: int
    click_rounds: int
    profile_clicks: int
    allocator_experiment: bool
    # seconds after which a section stops adding rounds (it always completes min rounds)
    budgets: dict[str, float] = field(default_factory=dict)

    @classmethod
    def make(cls, quick: bool, repeats: int | None) -> Plan:
        if quick:
            r = repeats or 1
            return cls(True, r, (2,), 1, (1, 4, 16), 1, max(8, 4 * r), 8, False,
                       {"encoder": 40, "batching": 60, "decoder": 30, "click": 25})
        r = repeats or 5
        return cls(False, r, (1, 2, 4, 8), max(1, math.ceil(r / 3)), (1, 4, 16, 64),
                   max(2, math.ceil(r / 2)), 20 * r, 20, True,
                   {"encoder": 200, "batching": 240, "decoder": 120, "click": 150})


class Progress:
    """Progress lines on stderr: ``[ elapsed] message``."""

    def __init__(self, stream=None) -> None:
        self.start = time.monotonic()
        self.stream = stream or sys.stderr

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f} s] {message}", file=self.stream, flush=True)


class Images:
    """The benchmark picture (the demo's generated scene) and distinct variants of it.

    ``distinct()`` stamps a counter into a corner, so every encoder call is a response-cache
    miss unless a test wants a hit.
    """

    def __init__(self, h: int, w: int) -> None:
        from sam2_triton.demo import sample_image

        self.base = sample_image(h, w)
        self.hw = (h, w)
        self._count = 0
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def distinct(self) -> np.ndarray:
        k = self._next()
        img = self.base.copy()
        img[0, :4] = np.frombuffer(k.to_bytes(12, "little"), dtype=np.uint8).reshape(4, 3)
        return img

    def distinct_wire(self, wire: np.ndarray) -> np.ndarray:
        """A copy of an encoder input ``[3, 1024, 1024]`` made unique (not a cache hit)."""
        k = self._next()
        out = wire.copy()
        out[:, 0, 0] = np.asarray([k % 251, (k // 251) % 251, 7], dtype=out.dtype) / 255
        return out


def _prompt_at(hw: tuple[int, int], fx: float, fy: float) -> Prompt:
    h, w = hw
    return Prompt(point_coords=[[fx * w, fy * h]], point_labels=[1])


def grid_prompts(hw: tuple[int, int], n: int) -> list[Prompt]:
    """``n`` single-click prompts spread over the image."""
    side = math.ceil(math.sqrt(n))
    pts = [((i % side + 0.5) / side, (i // side + 0.5) / side) for i in range(n)]
    return [_prompt_at(hw, fx, fy) for fx, fy in pts]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


# --- Triton metrics ------------------------------------------------------------------------
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<v>\S+)')


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group("name") != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels") or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group("v"))
    return total


class Bench:
    def __init__(self, args: Any, plan: Plan, log: Progress) -> None:
        self.args = args
        self.plan = plan
        self.log = log
        self.skip = set(args.skip or ())
        self.local: targets.LocalServer | None = None
        self.ep: targets.Endpoints | None = None
        self.models = targets.Models()
        self.fp32_repo: Path | None = None
        self.fp16_repo: Path | None = None
        self.manifest: dict | None = None
        self.ort = None
        self.sam2 = None
        self.sam2_error: str | None = None
        self._clients: dict[tuple, Any] = {}
        self.images = Images(*args.image_size)
        self.emb32 = None
        self.emb16 = None
        self.remote = None  # RemoteEmbedding of the session client
        self.info: dict[str, Any] = {}

    # --- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        args = self.args
        work = Path(args.work_dir) if args.work_dir else targets.default_work_dir()
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        if args.model_repository:
            self.fp32_repo = Path(args.model_repository)
            if not targets.has_models(self.fp32_repo):
                if args.url:
                    self.log(f"{self.fp32_repo} has no exported models: in-process baselines "
                             "are not measured")
                    self.fp32_repo = None
                else:
                    raise targets.BenchSetupError(
                        f"{self.fp32_repo} has no exported models (sam2_encoder/1/model.onnx)")
        elif not args.url:
            self.fp32_repo = targets.ensure_export(work, args.variant, "fp32", checkpoint,
                                                   args.seed, self.log)
        if self.fp32_repo is not None:
            self.manifest = targets.read_manifest(self.fp32_repo)
            if self.manifest and self.manifest.get("feature_dtype") != "float32":
                raise targets.BenchSetupError(
                    f"{self.fp32_repo} was exported with {self.manifest.get('feature_dtype')} "
                    "features; --model-repository needs the default FP32 export")
        if not args.url and "fp16" not in self.skip:
            self.fp16_repo = (Path(args.fp16_repository) if args.fp16_repository else
                              targets.ensure_export(work, args.variant, "fp16", checkpoint,
                                                    args.seed, self.log))
        if args.url:
            self.ep = targets.remote_endpoints(args.url, args.protocol, args.http_url,
                                               args.grpc_url, args.metrics_url, args.admin_key)
            self._discover_remote_models()
        else:
            self.local = targets.LocalServer(self.fp32_repo, self.fp16_repo, self.log)
            self.ep = self.local.start()
            self.models = self.local.models
            self.info["server_start_s"] = self.local.start_seconds
            if self.local.session_error:
                self.info["session_model_error"] = self.local.session_error
        if "http" in self.skip:
            self.ep.http_url = None
        self.info["server"] = self._server_metadata()
        self.info["endpoints"] = {"grpc": self.ep.grpc_url, "http": self.ep.http_url,
                                  "metrics": self.ep.metrics_url,
                                  "description": self.ep.description}
        self.info["models"] = self.models.__dict__.copy()
        main = self.client(self.primary)
        main.wait_until_ready(600)
        if self.fp32_repo is not None:
            from .baselines import InProcessORT

            self.log("loading the in-process onnxruntime baseline (same ONNX files)")
            self.ort = InProcessORT(self.fp32_repo)
            self.info["onnxruntime_providers"] = self.ort.providers
        self.log(f"encoding the {self.images.hw[0]}x{self.images.hw[1]} benchmark image "
                 "(also warms the encoder)")
        self.emb32 = main.encode(self.images.base)

    @property
    def primary(self) -> str:
        """gRPC when the server offers it (the targets are stated for gRPC), else HTTP."""
        return "grpc" if self.ep.grpc_url else "http"

    def need_sam2(self) -> bool:
        wanted = {"encoder", "click"} - self.skip
        return bool(wanted) and "sam2" not in self.skip and self.manifest is not None

    def load_sam2(self):
        if self.sam2 is None and self.sam2_error is None and self.need_sam2():
            self.log("loading SAM2ImagePredictor (PyTorch) on the same weights")
            try:
                from .baselines import Sam2Predictor

                self.sam2 = Sam2Predictor(self.manifest)
                self.info["sam2_device"] = self.sam2.device
                self.info["torch_threads"] = self.sam2.threads
            except Exception as exc:  # noqa: BLE001 - the baseline is optional
                self.sam2_error = f"{type(exc).__name__}: {exc}"
                self.log(f"SAM2ImagePredictor is not available: {self.sam2_error}")
        return self.sam2

    def _discover_remote_models(self) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        protocol = "grpc" if self.ep.grpc_url else "http"
        mod = grpcclient if protocol == "grpc" else httpclient
        raw = mod.InferenceServerClient(self.ep.url(protocol))
        headers = self.ep.headers.get(protocol) or None

        def ready(name: str) -> bool:
            try:
                return bool(raw.is_model_ready(name, headers=headers))
            except Exception:  # noqa: BLE001 - absent model
                return False

        m = self.models
        m.encoder_nobatch = targets.ENCODER_NOBATCH if ready(targets.ENCODER_NOBATCH) else None
        if ready(targets.ENCODER_FP16) and ready(targets.DECODER_FP16):
            m.encoder_fp16, m.decoder_fp16 = targets.ENCODER_FP16, targets.DECODER_FP16
        session = getattr(spec, "SESSION_MODEL", None)
        m.session = session if session and ready(session) else None
        raw.close()

    def _server_metadata(self) -> dict:
        import tritonclient.http as httpclient

        if not self.ep.http_url:
            return {}
        try:
            raw = httpclient.InferenceServerClient(self.ep.http_url)
            meta = raw.get_server_metadata(headers=self.ep.headers.get("http") or None)
            raw.close()
            return {"name": meta.get("name"), "version": meta.get("version")}
        except Exception as exc:  # noqa: BLE001 - informational only
            return {"error": str(exc)}

    def client(self, protocol: str, *, shm: bool = False, fp16: bool = False,
               session: bool = False, cache: bool = False, url: str | None = None):
        """A ``SAM2Client`` (cached). Client embedding cache off unless ``cache``; sessions
        only for ``session`` (``use_sessions`` would otherwise pick them automatically)."""
        from sam2_triton import SAM2Client

        key = (protocol, shm, fp16, session, cache, url)
        if key not in self._clients:
            kwargs: dict[str, Any] = {
                "timeout_s": TIMEOUT_S,
                "headers": self.ep.headers.get(protocol) or None,
                "use_shared_memory": shm,
            }
            if not cache:
                kwargs["embedding_cache_bytes"] = 0
            if fp16:
                kwargs["encoder_model"] = self.models.encoder_fp16
                kwargs["decoder_model"] = self.models.decoder_fp16
            if "use_sessions" in inspect.signature(SAM2Client).parameters:
                kwargs["use_sessions"] = session
            elif session:
                raise RuntimeError("this sam2_triton client has no session support")
            self._clients[key] = SAM2Client(url or self.ep.url(protocol), protocol, **kwargs)
        return self._clients[key]

    def metrics(self) -> str | None:
        if not self.ep.metrics_url:
            return None
        url = self.ep.metrics_url.rstrip("/")
        url = url if url.endswith("/metrics") else f"{url}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read().decode()
        except OSError:
            return None

    def close(self) -> None:
        for c in self._clients.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        self._clients.clear()
        if self.local is not None:
            self.log("stopping the local tritonserver")
            self.local.stop()
            self.info["server_stop_s"] = self.local.stop_seconds
            if self.local.stop_log_tail:
                self.info["server_stop_log_tail"] = self.local.stop_log_tail

    # --- helpers ---------------------------------------------------------------------------
    def run_rounds(self, section: str, variants: dict[str, Callable[[], Any]], rounds: Rounds,
                   ) -> dict[str, list[float]]:
        """Warm up each variant once, then interleaved rounds; a variant may return a dict of
        ``{sample name: seconds}`` instead of being timed as a whole."""
        samples: dict[str, list[float]] = {}
        failed: dict[str, str] = {}
        for name, fn in list(variants.items()):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - report the variant as unavailable
                failed[name] = f"{type(exc).__name__}: {exc}"
                self.log(f"{section}: {name} failed in warm-up, left out: {failed[name]}")
                del variants[name]
            time.sleep(GAP_S)
        names = list(variants)
        for r in rounds:
            for name in Rounds.order(names, r):
                start = time.perf_counter()
                extra = variants[name]()
                elapsed = time.perf_counter() - start
                if isinstance(extra, dict):
                    for k, v in extra.items():
                        samples.setdefault(k, []).append(v)
                else:
                    samples.setdefault(name, []).append(elapsed)
                time.sleep(GAP_S)
            if (r + 1) % max(1, rounds.rounds // 5) == 0 or r + 1 == rounds.rounds:
                brief = ", ".join(f"{k} {np.median(v) * 1e3:.0f} ms" for k, v in samples.items())
                self.log(f"{section}: round {r + 1}/{rounds.rounds}: medians so far: {brief}")
        self._failed = failed
        return samples

    def _rounds(self, section: str, n: int, min_rounds: int = 1) -> Rounds:
        return Rounds(n, self.plan.budgets.get(section, math.inf), min(min_rounds, n))

    @staticmethod
    def _summaries(samples: dict[str, list[float]]) -> dict[str, dict]:
        return {k: summarize(v) for k, v in samples.items()}

    # --- sections --------------------------------------------------------------------------
    def section_encoder(self) -> dict:
        """Encoder latency: in-process onnxruntime vs Triton vs PyTorch; response-cache hit vs
        miss; the client's own embedding cache."""
        proto = self.primary
        main = self.client(proto)
        cached_client = self.client(proto, cache=True)
        cached_client.encode(self.images.base)  # primes the client-side embedding cache
        sam2 = self.load_sam2()
        variants: dict[str, Callable[[], Any]] = {}
        if self.ort is not None:
            variants["onnxruntime in-process"] = lambda: self.ort.encode(self.images.distinct())

        def served() -> dict[str, float]:
            img = self.images.distinct()
            miss = timed(lambda: main.encode(img))
            time.sleep(GAP_S)
            hit = timed(lambda: main.encode(img))
            return {f"Triton {proto}": miss, f"Triton {proto}, response-cache hit": hit}

        variants[f"Triton {proto}"] = served
        other = "http" if proto == "grpc" else "grpc"
        if self.ep.url(other) and not self.plan.quick:
            oc = self.client(other)
            variants[f"Triton {other}"] = lambda: oc.encode(self.images.distinct())
        if sam2 is not None and not self.plan.quick:
            variants["SAM2ImagePredictor (PyTorch)"] = lambda: sam2.set_image(
                self.images.distinct())
        variants["client embedding cache hit"] = lambda: cached_client.encode(self.images.base)
        before = self.metrics()
        rounds = self._rounds("encoder", self.plan.repeats, 2)
        samples = self.run_rounds("encoder", variants, rounds)
        after = self.metrics()
        out = {"variants": self._summaries(samples), "samples": samples,
               "rounds": rounds.done, "stopped_early": rounds.stopped_early,
               "failed": self._failed, "protocol": proto}
        if "onnxruntime in-process" in samples:
            out["paired_vs_onnxruntime"] = {
                k: paired_ratio(samples[k], samples["onnxruntime in-process"])
                for k in samples if k.startswith("Triton") and "hit" not in k}
        hit_name, miss_name = f"Triton {proto}, response-cache hit", f"Triton {proto}"
        if hit_name in samples:
            out["paired_hit_vs_miss"] = paired_ratio(samples[hit_name], samples[miss_name])
        if before and after:
            enc = {"model": self.models.encoder}
            out["cache_metrics"] = {
                "hits": metric(after, "nv_cache_num_hits_per_model", **enc)
                - metric(before, "nv_cache_num_hits_per_model", **enc),
                "misses": metric(after, "nv_cache_num_misses_per_model", **enc)
                - metric(before, "nv_cache_num_misses_per_model", **enc),
                "expected_hits": len(samples.get(hit_name, [])) + 1,
            }
        return out

    def section_batching(self) -> dict:
        """Encoder latency and throughput at concurrency 1/2/4/8, dynamic batching on vs off.

        Raw tritonclient requests with ready-made encoder inputs (client preprocessing
        excluded), each request's image distinct (no cache hits), all started together.
        """
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        proto = self.primary
        mod = grpcclient if proto == "grpc" else httpclient
        headers = self.ep.headers.get(proto) or None
        modes = {"on": self.models.encoder}
        if self.models.encoder_nobatch:
            modes["off"] = self.models.encoder_nobatch
        wire = _wire.to_wire_image(_wire.load_image01(self.images.base), np.dtype(np.float32))
        if self.models.encoder_nobatch:  # warm up the second encoder instance
            self._infer_encoder(mod, None, self.models.encoder_nobatch,
                                self.images.distinct_wire(wire), headers)
        latencies: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
        throughput: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
        batches: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
        rounds = self._rounds("batching", self.plan.batching_rounds, 1)
        levels = self.plan.concurrency
        for r in rounds:
            for c in Rounds.order(levels, r):
                for mode in (list(modes) if (r + levels.index(c)) % 2 == 0 else
                             list(reversed(modes))):
                    lat, wall, avg_batch = self._concurrent(mod, proto, modes[mode], c, wire,
                                                            headers)
                    latencies[mode].setdefault(c, []).extend(lat)
                    throughput[mode].setdefault(c, []).append(c / wall)
                    if avg_batch is not None:
                        batches[mode].setdefault(c, []).append(avg_batch)
                    self.log(f"batching: round {r + 1}/{rounds.rounds}, concurrency {c}, "
                             f"batching {mode}: {c / wall:.2f} images/s, median latency "
                             f"{np.median(lat):.2f} s"
                             + (f", batches of {avg_batch:.2f}" if avg_batch else ""))
                    time.sleep(GAP_S)
        out: dict[str, Any] = {"modes": {}, "rounds": rounds.done,
                               "stopped_early": rounds.stopped_early, "protocol": proto,
                               "concurrency": list(levels),
                               "off_means": ("a second encoder model whose config has no "
                                             "dynamic_batching block (max_batch_size 4 kept): "
                                             "Triton runs each request alone, in arrival order"
                                             if "off" in modes else None)}
        for mode in modes:
            out["modes"][mode] = {
                str(c): {"latency": summarize(latencies[mode].get(c, [])),
                         "throughput_median": float(np.median(throughput[mode][c]))
                         if throughput[mode].get(c) else None,
                         "throughput_samples": throughput[mode].get(c, []),
                         "avg_batch": float(np.mean(batches[mode][c]))
                         if batches[mode].get(c) else None}
                for c in levels}
        return out

    def _infer_encoder(self, mod, client, model: str, pixels: np.ndarray, headers) -> None:
        own = client is None
        if own:
            client = mod.InferenceServerClient(self.ep.url(self.primary))
        inp = mod.InferInput(spec.ENCODER_IMAGE, [1, *pixels.shape], "FP32")
        inp.set_data_from_numpy(pixels[None])
        outs = [mod.InferRequestedOutput(n) for n in _wire.ENCODER_OUTPUTS]
        kwargs = {"client_timeout": TIMEOUT_S} if mod.__name__.endswith("grpc") else {}
        client.infer(model, [inp], outputs=outs, headers=headers, **kwargs)
        if own:
            client.close()

    def _concurrent(self, mod, proto: str, model: str, c: int, wire: np.ndarray, headers,
                    ) -> tuple[list[float], float, float | None]:
        pixels = [self.images.distinct_wire(wire) for _ in range(c)]
        url = self.ep.url(proto)
        # gRPC clients are thread-safe (one channel for all); tritonclient.http (gevent) must be
        # created and used in the same thread: one per thread, made before the barrier
        shared = mod.InferenceServerClient(url) if proto == "grpc" else None
        made: list[Any] = []
        barrier = threading.Barrier(c)
        spans: list[tuple[float, float]] = [(0.0, 0.0)] * c
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                client = shared or mod.InferenceServerClient(url)
                if shared is None:
                    made.append(client)
                barrier.wait()
                start = time.perf_counter()
                self._infer_encoder(mod, client, model, pixels[i], headers)
                spans[i] = (start, time.perf_counter())
                if shared is None:
                    client.close()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
                barrier.abort()

        before = self.metrics()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = self.metrics()
        if shared is not None:
            shared.close()
        if errors:
            raise errors[0]
        avg_batch = None
        if before and after:
            labels = {"model": model}
            execs = metric(after, "nv_inference_exec_count", **labels) - metric(
                before, "nv_inference_exec_count", **labels)
            count = metric(after, "nv_inference_count", **labels) - metric(
                before, "nv_inference_count", **labels)
            avg_batch = count / execs if execs else None
        wall = max(e for _, e in spans) - min(s for s, _ in spans)
        return [e - s for s, e in spans], wall, avg_batch

    def section_decoder(self) -> dict:
        """N prompts on one image: one call with N prompts vs N calls with one prompt each."""
        main = self.client(self.primary)
        emb = self.emb32
        ns = self.plan.decoder_ns
        prompts = {n: grid_prompts(self.images.hw, n) for n in ns}
        main.decode(emb, prompts[ns[0]], multimask_output=False)  # warm-up
        main.decode(emb, prompts[ns[0]][0], multimask_output=False)
        one: dict[int, list[float]] = {}
        many: dict[int, list[float]] = {}
        rounds = self._rounds("decoder", self.plan.decoder_rounds, 1)
        for r in rounds:
            for n in Rounds.order(ns, r):
                def single_call(n=n):
                    main.decode(emb, prompts[n], multimask_output=False)

                def separate(n=n):
                    for p in prompts[n]:
                        main.decode(emb, p, multimask_output=False)

                order = [("one", single_call), ("many", separate)]
                if (r + ns.index(n)) % 2:
                    order.reverse()
                for kind, fn in order:
                    (one if kind == "one" else many).setdefault(n, []).append(timed(fn))
                    time.sleep(GAP_S)
                self.log(f"decoder: round {r + 1}/{rounds.rounds}, N={n}: one call "
                         f"{one[n][-1]:.2f} s, {n} calls {many[n][-1]:.2f} s")
        return {"protocol": self.primary, "multimask_output": False, "rounds": rounds.done,
                "stopped_early": rounds.stopped_early, "ns": list(ns),
                "one_call": {str(n): summarize(one[n]) for n in ns if n in one},
                "separate_calls": {str(n): summarize(many[n]) for n in ns if n in many},
                "paired_one_vs_separate": {str(n): paired_ratio(one[n], many[n])
                                           for n in ns if n in one and n in many}}

    def _click_variants(self, prompt: Prompt) -> tuple[dict[str, Callable[[], Any]], dict]:
        """Every way of answering one click; also the masks each gives (for an agreement check)."""
        variants: dict[str, Callable[[], Any]] = {}
        makers: dict[str, Callable[[], np.ndarray]] = {}
        emb = self.emb32
        point = tuple(np.asarray(prompt.point_coords, dtype=np.float64)[0])
        if self.ort is not None:
            def ort_click() -> dict[str, float]:
                start = time.perf_counter()
                _, run_s = self.ort.decode(emb, prompt)
                return {"onnxruntime in-process (decoder + masks)": time.perf_counter() - start,
                        "onnxruntime in-process, decoder run only": run_s}

            variants["onnxruntime in-process (decoder + masks)"] = ort_click
            makers["onnxruntime in-process (decoder + masks)"] = lambda: self.ort.decode(
                emb, prompt)[0].masks
        sam2 = self.load_sam2()
        if sam2 is not None:
            sam2.set_image(self.images.base)
            variants["SAM2ImagePredictor.predict (PyTorch)"] = lambda: sam2.predict(point)
            makers["SAM2ImagePredictor.predict (PyTorch)"] = lambda: sam2.predict(point)
        for proto in ("grpc", "http"):
            if not self.ep.url(proto):
                continue
            shm_options = (False, True) if self.ep.same_host else (False,)
            for shm in shm_options:
                c = self.client(proto, shm=shm)
                name = f"Triton {proto}" + (" + system shm" if shm else "")
                variants[name] = lambda c=c: c.decode(emb, prompt)
                makers[name] = lambda c=c: c.decode(emb, prompt).masks
        if self.models.encoder_fp16 and self.emb16 is None:
            self.emb16 = self.client(self.primary, fp16=True).encode(self.images.base)
        if self.emb16 is not None:
            c16 = self.client(self.primary, fp16=True)
            name = f"Triton {self.primary}, FP16 features"
            variants[name] = lambda: c16.decode(self.emb16, prompt)
            makers[name] = lambda: c16.decode(self.emb16, prompt).masks
        session = self._session_variant(prompt)
        if session is not None:
            name, fn = session
            variants[name] = fn
            makers[name] = lambda: fn().masks
        return variants, makers

    def _session_variant(self, prompt: Prompt):
        """HOOK (sessions): a click through ``sam2_session`` (features kept on the server)."""
        if not self.models.session:
            return None
        try:
            c = self.client(self.primary, session=True)
            if self.remote is None:
                self.remote = c.encode(self.images.base)
        except Exception as exc:  # noqa: BLE001 - optional variant
            self.info["session_error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"click: the session model is not usable: {self.info['session_error']}")
            return None
        return (f"Triton {self.primary}, session (features kept on the server)",
                lambda: c.decode(self.remote, prompt))

    def section_click(self) -> dict:
        """Click latency: features already encoded, one new click -> 3 masks at image size."""
        prompt = _prompt_at(self.images.hw, 0.35, 0.6)
        variants, makers = self._click_variants(prompt)
        agreement = {}
        reference = makers.get("onnxruntime in-process (decoder + masks)")
        if reference is not None:
            ref = np.asarray(reference(), bool)
            for name, make in makers.items():
                try:
                    masks = np.asarray(make(), bool)
                    agreement[name] = min(iou(a, b) for a, b in zip(masks, ref))
                except Exception as exc:  # noqa: BLE001 - the variant is dropped in warm-up
                    agreement[name] = f"{type(exc).__name__}: {exc}"
        rounds = self._rounds("click", self.plan.click_rounds, 10)
        samples = self.run_rounds("click", variants, rounds)
        base = "onnxruntime in-process (decoder + masks)"
        out = {"variants": self._summaries(samples), "samples": samples,
               "rounds": rounds.done, "stopped_early": rounds.stopped_early,
               "failed": self._failed, "image_hw": list(self.images.hw),
               "multimask_output": True, "masks_vs_onnxruntime_min_iou": agreement}
        if base in samples:
            out["paired_vs_inprocess"] = {k: paired_ratio(v, samples[base])
                                          for k, v in samples.items() if k.startswith("Triton")}
        return out

    def section_fp16(self) -> dict:
        """Masks from FP16 features vs FP32 features, same image, same prompts."""
        if not self.models.encoder_fp16:
            return {"status": "skipped", "reason": "no FP16 models on the server (local mode "
                    "exports them; against --url serve sam2_encoder_fp16/sam2_decoder_fp16)"}
        c32, c16 = self.client(self.primary), self.client(self.primary, fp16=True)
        if self.emb16 is None:
            self.emb16 = c16.encode(self.images.base)
        h, w = self.images.hw
        prompts = grid_prompts(self.images.hw, 12) + [
            Prompt(box=[0.15 * w, 0.35 * h, 0.55 * w, 0.8 * h]),
            Prompt(box=[0.55 * w, 0.25 * h, 0.85 * w, 0.85 * h]),
            Prompt(box=[0.7 * w, 0.05 * h, 0.95 * w, 0.3 * h]),
            Prompt(box=[0.05 * w, 0.6 * h, 0.98 * w, 0.98 * h],
                   point_coords=[[0.35 * w, 0.6 * h]], point_labels=[0])]
        p32 = c32.decode(self.emb32, prompts, multimask_output=True)
        p16 = c16.decode(self.emb16, prompts, multimask_output=True)
        ious = [iou(a, b) for x, y in zip(p32, p16) for a, b in zip(x.masks, y.masks)]
        logit_diff = max(float(np.max(np.abs(x.low_res_logits - y.low_res_logits)))
                         for x, y in zip(p32, p16))
        feat_diff = max(float(np.max(np.abs(self.emb32.features()[n].astype(np.float32)
                                            - self.emb16.features()[n].astype(np.float32))))
                        for n in spec.FEATURE_NAMES)
        return {"prompts": len(prompts), "masks": len(ious), "min_iou": min(ious),
                "mean_iou": float(np.mean(ious)), "max_abs_diff_low_res_logits": logit_diff,
                "max_abs_diff_features": feat_diff,
                "feature_bytes": {"fp32": int(self.emb32.nbytes), "fp16": int(self.emb16.nbytes)}}

    def section_bytes(self) -> dict:
        """Bytes on the wire per call (TCP payload both ways, framing included), via a relay."""
        out: dict[str, Any] = {}
        prompt = _prompt_at(self.images.hw, 0.35, 0.6)
        prompts64 = grid_prompts(self.images.hw, 64)
        for proto in ("grpc", "http"):
            url = self.ep.url(proto)
            if not url:
                continue
            host, port = targets._split(url)
            with CountingProxy(host.strip("[]"), port) as proxy:
                cases: list[tuple[str, dict, Callable]] = [
                    ("encode (one image)", {}, lambda c: c.encode(self.images.base)),
                    ("decode, 1 click (features FP32)", {}, lambda c: c.decode(self.emb32, prompt)),
                ]
                if not self.plan.quick:
                    cases.append(("decode, 64 clicks in one call (features FP32)", {},
                                  lambda c: c.decode(self.emb32, prompts64,
                                                     multimask_output=False)))
                if self.ep.same_host:
                    cases.append(("decode, 1 click, features in system shm", {"shm": True},
                                  lambda c: c.decode(self.emb32, prompt)))
                if self.emb16 is not None:
                    cases.append(("decode, 1 click (features FP16)", {"fp16": True},
                                  lambda c: c.decode(self.emb16, prompt)))
                if self.remote is not None:
                    cases.append(("decode, 1 click, session (features kept on the server)",
                                  {"session": True}, lambda c: c.decode(self.remote, prompt)))
                for name, kw, call in cases:
                    try:
                        c = self.client(proto, url=proxy.address, **kw)
                        call(c)  # connection, model metadata, session upload: not counted
                        proxy.reset()
                        call(c)
                        time.sleep(0.2)  # let the relay finish counting
                        sent, received = proxy.counts()
                        out.setdefault(name, {})[proto] = {"sent": sent, "received": received}
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        out.setdefault(name, {})[proto] = {"error": f"{type(exc).__name__}: {exc}"}
                for key in [k for k in self._clients if k[-1] == proxy.address]:
                    self._clients.pop(key).close()
        f32 = 4 * sum(math.prod(s) for s in spec.FEATURE_SHAPES.values())
        payload = {
            "encode": {"sent": 4 * 3 * spec.IMAGE_SIZE ** 2, "received": f32 + 8},
            "decode_fp32_1_click": {"sent": f32 + 4 * spec.LOW_RES_SIZE ** 2 + 4 * 2 * 2 + 2 * 4 + 4,
                                    "received": 4 * (4 * spec.LOW_RES_SIZE ** 2 + 4 + 1) + 8},
        }
        return {"calls": out, "tensor_payload": payload}

    def section_profile(self) -> dict:
        """Where one click's time goes on the client (cProfile), and the encode preprocessing."""
        proto = self.primary
        main = self.client(proto)
        prompt = _prompt_at(self.images.hw, 0.35, 0.6)
        emb = self.emb32
        for _ in range(3):
            main.decode(emb, prompt)
        n = self.plan.profile_clicks
        wall, cpu = [], []
        for _ in range(n):  # unprofiled: the reference wall and client CPU time per click
            w0, c0 = time.perf_counter(), time.thread_time()
            main.decode(emb, prompt)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.thread_time() - c0)
        prof = cProfile.Profile()
        w0 = time.perf_counter()
        prof.enable()
        for _ in range(n):
            main.decode(emb, prompt)
        prof.disable()
        profiled_wall = (time.perf_counter() - w0) / n
        stats = pstats.Stats(prof)
        parts = _click_breakdown(stats, n, proto)
        top = _top_functions(stats, n, 12)
        # encode-side client work, timed directly
        img = self.images.base
        pre = {"load_image (array -> float32 RGB)": [], "resize to 1024x1024 (3 x PIL)": [],
               "cache key (sha256 of the pixels)": []}
        from sam2_triton._cache import image_key

        for _ in range(max(3, n // 4)):
            t0 = time.perf_counter()
            image01 = _wire.load_image01(img)
            t1 = time.perf_counter()
            _wire.to_wire_image(image01, np.dtype(np.float32))
            t2 = time.perf_counter()
            image_key(image01)
            t3 = time.perf_counter()
            pre["load_image (array -> float32 RGB)"].append(t1 - t0)
            pre["resize to 1024x1024 (3 x PIL)"].append(t2 - t1)
            pre["cache key (sha256 of the pixels)"].append(t3 - t2)
        upsample = self._upsample_bands(main.decode(emb, prompt))
        out = {"protocol": proto, "clicks": n, "click_wall": summarize(wall),
               "upsample_one_thread_vs_bands": upsample,
               "click_client_cpu": summarize(cpu), "profiled_click_wall_s": profiled_wall,
               "breakdown_s": parts, "top_functions": top,
               "encode_preprocessing": {k: summarize(v) for k, v in pre.items()}}
        if self.plan.allocator_experiment and sys.platform.startswith("linux"):
            out["allocator"] = self._allocator_experiment(proto)
        return out

    def _upsample_bands(self, pred) -> dict | None:
        """``upsample_masks`` of this click's 3 masks: one thread vs the parallel row bands it
        uses for large outputs (interleaved; same results, checked)."""
        from sam2_triton import transforms

        if not hasattr(transforms, "_upsample_rows"):
            return None
        low = np.ascontiguousarray(pred.low_res_logits[None], dtype=np.float32)
        hw = self.images.hw
        h, w = hw
        rows = transforms._linear_weights(low.shape[2], h)
        cols = transforms._linear_weights(low.shape[3], w)

        def one_thread() -> np.ndarray:
            out = np.empty((*low.shape[:2], h, w), dtype=bool)
            transforms._upsample_rows(low, out, rows, cols, 0.0, 0, h)
            return out

        if not np.array_equal(one_thread(), transforms.upsample_masks(low, hw, 0.0)):
            return {"error": "one-thread and banded results differ"}
        samples: dict[str, list[float]] = {"one thread": [], "parallel bands": []}
        cpu: dict[str, list[float]] = {"one thread": [], "parallel bands": []}
        fns = {"one thread": one_thread,
               "parallel bands": lambda: transforms.upsample_masks(low, hw, 0.0)}
        for r in range(max(10, self.plan.profile_clicks)):
            for name in Rounds.order(list(fns), r):
                w0, c0 = time.perf_counter(), time.process_time()
                fns[name]()
                samples[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
        return {"bands": len(transforms._row_bands(h, 3 * h * w)),
                **{k: {"wall": summarize(v), "cpu": summarize(cpu[k])}
                   for k, v in samples.items()}}

    def _allocator_experiment(self, proto: str) -> dict:
        """The same click loop in child processes, glibc malloc as is vs with thresholds that
        keep freed 17 MB buffers in the heap (ABAB)."""
        env_tuned = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=268435456:"
                                       "glibc.malloc.trim_threshold=536870912"}
        runs: dict[str, list[dict]] = {"glibc defaults": [], "tuned thresholds": []}
        for rep in range(2):
            for name, extra in (("glibc defaults", {}), ("tuned thresholds", env_tuned)):
                env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
                env.update(extra)
                cmd = [sys.executable, "-m", "sam2_triton_bench.clickloop", "--url",
                       self.ep.url(proto), "--protocol", proto, "--image-size",
                       f"{self.images.hw[0]}x{self.images.hw[1]}", "--clicks", "15"]
                for k, v in (self.ep.headers.get(proto) or {}).items():
                    cmd += ["--header", f"{k}={v}"]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
                if proc.returncode != 0:
                    return {"error": proc.stderr[-2000:]}
                runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                self.log(f"profile: allocator experiment {rep + 1}/2, {name}: median click "
                         f"{np.median(runs[name][-1]['wall']) * 1e3:.0f} ms, client CPU "
                         f"{np.median(runs[name][-1]['cpu']) * 1e3:.0f} ms")
        return {"env_tuned": env_tuned,
                **{name: {"wall": summarize([x for r in rs for x in r["wall"]]),
                          "client_cpu": summarize([x for r in rs for x in r["cpu"]]),
                          "minor_faults_per_click": float(np.mean([r["faults"] for r in rs]))}
                   for name, rs in runs.items()}}


def _click_breakdown(stats: pstats.Stats, n: int, proto: str) -> dict[str, float]:
    """Seconds per click in the parts of the client's click path (cumulative times)."""

    def cum(file_part: str, func: str) -> float:
        total = 0.0
        for (filename, _, name), (_, _, _, ct, _) in stats.stats.items():
            if name == func and file_part in filename.replace("\\", "/"):
                total += ct
        return total / n

    def builtin(func_part: str) -> float:
        return sum(ct for (filename, _, name), (_, _, _, ct, _) in stats.stats.items()
                   if filename == "~" and func_part in name) / n

    total = cum("sam2_triton/client.py", "decode")
    parts: dict[str, float] = {}
    if proto == "grpc":
        serialise = builtin("SerializeToString")
        prepare = cum("grpc/_channel.py", "_prepare")
        parts["tensors to bytes (InferInput.set_data_from_numpy)"] = cum(
            "tritonclient/grpc/_infer_input.py", "set_data_from_numpy")
        parts["request message (tritonclient _get_inference_request)"] = cum(
            "tritonclient/grpc/_utils.py", "_get_inference_request")
        parts["protobuf serialisation (SerializeToString)"] = serialise
        parts["waiting for the reply (network + Triton + decoder)"] = cum(
            "grpc/_channel.py", "_blocking") - prepare
        parts["response parsing (as_numpy)"] = cum("tritonclient/grpc/_infer_result.py",
                                                    "as_numpy")
    else:
        parts["tensors to bytes (InferInput.set_data_from_numpy)"] = cum(
            "tritonclient/http/_infer_input.py", "set_data_from_numpy")
        parts["request body (tritonclient _get_inference_request)"] = cum(
            "tritonclient/http/_utils.py", "_get_inference_request")
        parts["sending, waiting, receiving (geventhttpclient)"] = cum(
            "tritonclient/http/_client.py", "_post")
        parts["response parsing (InferResult)"] = cum("tritonclient/http/_infer_result.py",
                                                      "__init__")
    parts["prompt validation"] = cum("sam2_triton/_validate.py", "validate_prompt")
    parts["mask selection (select_masks)"] = cum("sam2_triton/transforms.py", "select_masks")
    parts["mask upsampling to image size (upsample_masks)"] = cum(
        "sam2_triton/transforms.py", "upsample_masks")
    parts = {k: max(0.0, v) for k, v in parts.items()}
    parts["everything else"] = max(0.0, total - sum(parts.values()))
    parts["total (profiled)"] = total
    return parts


def _top_functions(stats: pstats.Stats, n: int, k: int) -> list[dict]:
    rows = []
    for (filename, line, name), (_, ncalls, tt, ct, _) in stats.stats.items():
        rows.append({"function": f"{Path(filename).name}:{line}({name})" if filename != "~"
                     else name, "tottime_s": tt / n, "cumtime_s": ct / n, "calls": ncalls / n})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:k]


def run_section(bench: Bench, name: str) -> dict:
    """Run one section; a failure is recorded (with its traceback) instead of ending the run."""
    if name in bench.skip:
        return {"status": "skipped", "reason": "--skip"}
    bench.log(f"== {name} ==")
    start = time.monotonic()
    try:
        result = getattr(bench, f"section_{name}")()
        result.setdefault("status", "ok")
    except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
        bench.log(f"{name} failed: {type(exc).__name__}: {exc}")
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def describe_machine() -> dict:
    return machine.describe()
