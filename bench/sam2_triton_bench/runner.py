"""The measurements of ``sam2-triton bench``: one ``Bench`` holds the server, the clients and the
baselines; each section method measures one thing and returns a JSON-ready dict. The click
sections live in ``clicks``, ``batching`` in ``batching``, the client profile in ``profiling``.

Timing rules, everywhere: every variant runs once before measuring (warm-up, excluded); compared
variants are interleaved in rounds (ABC, BCA, CAB, ...) so that the load other processes put on
the machine hits them alike; results are medians and p95/p99 of all rounds, and ratios.
"""

from __future__ import annotations

import inspect
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import spec
from sam2_triton.types import Prompt

from . import batching, clicks, machine, profiling, targets
from .metrics import metric, try_metrics_text
from .plan import (
    GAP_S,
    SECTIONS,
    SKIPPABLE,
    TIMEOUT_S,
    Images,
    Plan,
    Progress,
    grid_prompts,
    iou,
    prompt_at,
)
from .stats import Rounds, paired_ratio, summarize, timed

__all__ = [
    "GAP_S",
    "SECTIONS",
    "SKIPPABLE",
    "TIMEOUT_S",
    "Bench",
    "Images",
    "Plan",
    "Progress",
    "Rounds",
    "describe_machine",
    "grid_prompts",
    "iou",
    "metric",
    "prompt_at",
    "run_section",
]


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
                    self.log(
                        f"{self.fp32_repo} has no exported models: in-process baselines "
                        "are not measured"
                    )
                    self.fp32_repo = None
                else:
                    raise targets.BenchSetupError(
                        f"{self.fp32_repo} has no exported models (sam2_encoder/1/model.onnx)"
                    )
        elif not args.url:
            self.fp32_repo = targets.ensure_export(
                work, args.variant, "fp32", checkpoint, args.seed, self.log
            )
        if self.fp32_repo is not None:
            self.manifest = targets.read_manifest(self.fp32_repo)
            if self.manifest and self.manifest.get("feature_dtype") != "float32":
                raise targets.BenchSetupError(
                    f"{self.fp32_repo} was exported with {self.manifest.get('feature_dtype')} "
                    "features; --model-repository needs the default FP32 export"
                )
        if not args.url and "fp16" not in self.skip:
            self.fp16_repo = (
                Path(args.fp16_repository)
                if args.fp16_repository
                else targets.ensure_export(
                    work, args.variant, "fp16", checkpoint, args.seed, self.log
                )
            )
        if args.url:
            self.ep = targets.remote_endpoints(
                args.url,
                args.protocol,
                args.http_url,
                args.grpc_url,
                args.metrics_url,
                args.admin_key,
            )
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
        self.info["endpoints"] = {
            "grpc": self.ep.grpc_url,
            "http": self.ep.http_url,
            "metrics": self.ep.metrics_url,
            "description": self.ep.description,
        }
        self.info["models"] = self.models.__dict__.copy()
        main = self.client(self.primary)
        main.wait_until_ready(600)
        if self.fp32_repo is not None:
            from .baselines import InProcessORT

            self.log("loading the in-process onnxruntime baseline (same ONNX files)")
            self.ort = InProcessORT(self.fp32_repo)
            self.info["onnxruntime_providers"] = self.ort.providers
        self.log(
            f"encoding the {self.images.hw[0]}x{self.images.hw[1]} benchmark image "
            "(also warms the encoder)"
        )
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

    def client(
        self,
        protocol: str,
        *,
        shm: bool = False,
        fp16: bool = False,
        session: bool = False,
        cache: bool = False,
        url: str | None = None,
    ):
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
        """The server's Prometheus text, or None (no metrics endpoint, or unreadable)."""
        return try_metrics_text(self.ep.metrics_url)

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
    def run_rounds(
        self,
        section: str,
        variants: dict[str, Callable[[], Any]],
        rounds: Rounds,
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
                self.images.distinct()
            )
        variants["client embedding cache hit"] = lambda: cached_client.encode(self.images.base)
        before = self.metrics()
        rounds = self._rounds("encoder", self.plan.repeats, 2)
        samples = self.run_rounds("encoder", variants, rounds)
        after = self.metrics()
        out = {
            "variants": self._summaries(samples),
            "samples": samples,
            "rounds": rounds.done,
            "stopped_early": rounds.stopped_early,
            "failed": self._failed,
            "protocol": proto,
        }
        if "onnxruntime in-process" in samples:
            out["paired_vs_onnxruntime"] = {
                k: paired_ratio(samples[k], samples["onnxruntime in-process"])
                for k in samples
                if k.startswith("Triton") and "hit" not in k
            }
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
                self.log(
                    f"decoder: round {r + 1}/{rounds.rounds}, N={n}: one call "
                    f"{one[n][-1]:.2f} s, {n} calls {many[n][-1]:.2f} s"
                )
        return {
            "protocol": self.primary,
            "multimask_output": False,
            "rounds": rounds.done,
            "stopped_early": rounds.stopped_early,
            "ns": list(ns),
            "one_call": {str(n): summarize(one[n]) for n in ns if n in one},
            "separate_calls": {str(n): summarize(many[n]) for n in ns if n in many},
            "paired_one_vs_separate": {
                str(n): paired_ratio(one[n], many[n]) for n in ns if n in one and n in many
            },
        }

    def section_fp16(self) -> dict:
        """Masks from FP16 features vs FP32 features, same image, same prompts."""
        if not self.models.encoder_fp16:
            return {
                "status": "skipped",
                "reason": "no FP16 models on the server (local mode "
                "exports them; against --url serve sam2_encoder_fp16/sam2_decoder_fp16)",
            }
        c32, c16 = self.client(self.primary), self.client(self.primary, fp16=True)
        if self.emb16 is None:
            self.emb16 = c16.encode(self.images.base)
        h, w = self.images.hw
        prompts = grid_prompts(self.images.hw, 12) + [
            Prompt(box=[0.15 * w, 0.35 * h, 0.55 * w, 0.8 * h]),
            Prompt(box=[0.55 * w, 0.25 * h, 0.85 * w, 0.85 * h]),
            Prompt(box=[0.7 * w, 0.05 * h, 0.95 * w, 0.3 * h]),
            Prompt(
                box=[0.05 * w, 0.6 * h, 0.98 * w, 0.98 * h],
                point_coords=[[0.35 * w, 0.6 * h]],
                point_labels=[0],
            ),
        ]
        p32 = c32.decode(self.emb32, prompts, multimask_output=True)
        p16 = c16.decode(self.emb16, prompts, multimask_output=True)
        ious = [iou(a, b) for x, y in zip(p32, p16) for a, b in zip(x.masks, y.masks)]
        logit_diff = max(
            float(np.max(np.abs(x.low_res_logits - y.low_res_logits))) for x, y in zip(p32, p16)
        )
        feat_diff = max(
            float(
                np.max(
                    np.abs(
                        self.emb32.features()[n].astype(np.float32)
                        - self.emb16.features()[n].astype(np.float32)
                    )
                )
            )
            for n in spec.FEATURE_NAMES
        )
        return {
            "prompts": len(prompts),
            "masks": len(ious),
            "min_iou": min(ious),
            "mean_iou": float(np.mean(ious)),
            "max_abs_diff_low_res_logits": logit_diff,
            "max_abs_diff_features": feat_diff,
            "feature_bytes": {"fp32": int(self.emb32.nbytes), "fp16": int(self.emb16.nbytes)},
        }

    # --- in other modules ------------------------------------------------------------------
    section_click = clicks.section_click
    section_batching = batching.section_batching
    section_bytes = clicks.section_bytes
    section_profile = profiling.section_profile


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
        result = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def describe_machine() -> dict:
    return machine.describe()
