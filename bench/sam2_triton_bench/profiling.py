"""``profile`` section of ``sam2-triton bench``: where one click's time goes on the client
(cProfile), the encode-side preprocessing, mask upsampling in one thread vs row bands, and the
allocator experiment (the same clicks in child processes, ``clickloop``)."""

from __future__ import annotations

import cProfile
import hashlib
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sam2_triton import transforms

from .plan import prompt_at
from .stats import Rounds, summarize

if TYPE_CHECKING:
    from .runner import Bench


def section_profile(self: Bench) -> dict:
    """Where one click's time goes on the client (cProfile), and the encode preprocessing."""
    proto = self.primary
    main = self.client(proto)
    prompt = prompt_at(self.images.hw, 0.35, 0.6)
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
    pre = {
        "load_image (array -> float32 RGB)": [],
        "resize to 1024x1024 (3 x PIL)": [],
        "cache key (sha256 of the pixels)": [],
    }
    for _ in range(max(3, n // 4)):
        t0 = time.perf_counter()
        image01 = transforms.load_image(img)
        t1 = time.perf_counter()
        transforms.to_wire_image(image01, np.dtype(np.float32))
        t2 = time.perf_counter()
        _pixels_sha256(image01)
        t3 = time.perf_counter()
        pre["load_image (array -> float32 RGB)"].append(t1 - t0)
        pre["resize to 1024x1024 (3 x PIL)"].append(t2 - t1)
        pre["cache key (sha256 of the pixels)"].append(t3 - t2)
    upsample = _upsample_bands(self, main.decode(emb, prompt))
    out = {
        "protocol": proto,
        "clicks": n,
        "click_wall": summarize(wall),
        "upsample_one_thread_vs_bands": upsample,
        "click_client_cpu": summarize(cpu),
        "profiled_click_wall_s": profiled_wall,
        "breakdown_s": parts,
        "top_functions": top,
        "encode_preprocessing": {k: summarize(v) for k, v in pre.items()},
    }
    if self.plan.allocator_experiment and sys.platform.startswith("linux"):
        out["allocator"] = _allocator_experiment(self, proto)
    return out


def _upsample_bands(self: Bench, pred) -> dict | None:
    """``upsample_masks`` of this click's 3 masks: one thread vs the parallel row bands it
    uses for large outputs (interleaved; same results, checked)."""
    low = np.ascontiguousarray(pred.low_res_logits[None], dtype=np.float32)
    hw = self.images.hw

    def one_thread() -> np.ndarray:
        return transforms.upsample_masks(low, hw, 0.0, threads=1)

    if not np.array_equal(one_thread(), transforms.upsample_masks(low, hw, 0.0)):
        return {"error": "one-thread and banded results differ"}
    samples: dict[str, list[float]] = {"one thread": [], "parallel bands": []}
    cpu: dict[str, list[float]] = {"one thread": [], "parallel bands": []}
    fns = {
        "one thread": one_thread,
        "parallel bands": lambda: transforms.upsample_masks(low, hw, 0.0),
    }
    for r in range(max(10, self.plan.profile_clicks)):
        for name in Rounds.order(list(fns), r):
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            samples[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {
        "threads": min(os.cpu_count() or 1, 4),
        **{k: {"wall": summarize(v), "cpu": summarize(cpu[k])} for k, v in samples.items()},
    }


def _allocator_experiment(self: Bench, proto: str) -> dict:
    """The same click loop in child processes, glibc malloc as is vs with thresholds that
    keep freed 17 MB buffers in the heap (ABAB)."""
    env_tuned = {
        "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=268435456:"
        "glibc.malloc.trim_threshold=536870912"
    }
    runs: dict[str, list[dict]] = {"glibc defaults": [], "tuned thresholds": []}
    for rep in range(2):
        for name, extra in (("glibc defaults", {}), ("tuned thresholds", env_tuned)):
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
            env.update(extra)
            cmd = [
                sys.executable,
                "-m",
                "sam2_triton_bench.clickloop",
                "--url",
                self.ep.url(proto),
                "--protocol",
                proto,
                "--image-size",
                f"{self.images.hw[0]}x{self.images.hw[1]}",
                "--clicks",
                "15",
            ]
            for k, v in (self.ep.headers.get(proto) or {}).items():
                cmd += ["--header", f"{k}={v}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if proc.returncode != 0:
                return {"error": proc.stderr[-2000:]}
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            self.log(
                f"profile: allocator experiment {rep + 1}/2, {name}: median click "
                f"{np.median(runs[name][-1]['wall']) * 1e3:.0f} ms, client CPU "
                f"{np.median(runs[name][-1]['cpu']) * 1e3:.0f} ms"
            )
    return {
        "env_tuned": env_tuned,
        **{
            name: {
                "wall": summarize([x for r in rs for x in r["wall"]]),
                "client_cpu": summarize([x for r in rs for x in r["cpu"]]),
                "minor_faults_per_click": float(np.mean([r["faults"] for r in rs])),
            }
            for name, rs in runs.items()
        },
    }


def _pixels_sha256(image01: np.ndarray) -> bytes:
    """What the client's embedding-cache key costs: sha256 over the decoded pixels and their
    shape (the SDK's key function is private; this is the same computation)."""
    pixels = np.ascontiguousarray(image01)
    digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(memoryview(pixels).cast("B"))
    return digest.digest()


def _click_breakdown(stats: pstats.Stats, n: int, proto: str) -> dict[str, float]:
    """Seconds per click in the parts of the client's click path (cumulative times)."""

    def cum(file_part: str, func: str) -> float:
        total = 0.0
        for (filename, _, name), (_, _, _, ct, _) in stats.stats.items():
            if name == func and file_part in filename.replace("\\", "/"):
                total += ct
        return total / n

    def builtin(func_part: str) -> float:
        return (
            sum(
                ct
                for (filename, _, name), (_, _, _, ct, _) in stats.stats.items()
                if filename == "~" and func_part in name
            )
            / n
        )

    total = cum("sam2_triton/client.py", "decode")
    parts: dict[str, float] = {}
    if proto == "grpc":
        serialise = builtin("SerializeToString")
        prepare = cum("grpc/_channel.py", "_prepare")
        parts["tensors to bytes (InferInput.set_data_from_numpy)"] = cum(
            "tritonclient/grpc/_infer_input.py", "set_data_from_numpy"
        )
        parts["request message (tritonclient _get_inference_request)"] = cum(
            "tritonclient/grpc/_utils.py", "_get_inference_request"
        )
        parts["protobuf serialisation (SerializeToString)"] = serialise
        parts["waiting for the reply (network + Triton + decoder)"] = (
            cum("grpc/_channel.py", "_blocking") - prepare
        )
        parts["response parsing (as_numpy)"] = cum("tritonclient/grpc/_infer_result.py", "as_numpy")
    else:
        parts["tensors to bytes (InferInput.set_data_from_numpy)"] = cum(
            "tritonclient/http/_infer_input.py", "set_data_from_numpy"
        )
        parts["request body (tritonclient _get_inference_request)"] = cum(
            "tritonclient/http/_utils.py", "_get_inference_request"
        )
        parts["sending, waiting, receiving (geventhttpclient)"] = cum(
            "tritonclient/http/_client.py", "_post"
        )
        parts["response parsing (InferResult)"] = cum(
            "tritonclient/http/_infer_result.py", "__init__"
        )
    parts["prompt validation"] = cum("sam2_triton/prompts.py", "validate_prompt")
    parts["mask selection (select_masks)"] = cum("sam2_triton/transforms.py", "select_masks")
    parts["mask upsampling to image size (upsample_masks)"] = cum(
        "sam2_triton/transforms.py", "upsample_masks"
    )
    parts = {k: max(0.0, v) for k, v in parts.items()}
    parts["everything else"] = max(0.0, total - sum(parts.values()))
    parts["total (profiled)"] = total
    return parts


def _top_functions(stats: pstats.Stats, n: int, k: int) -> list[dict]:
    rows = []
    for (filename, line, name), (_, ncalls, tt, ct, _) in stats.stats.items():
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({name})" if filename != "~" else name,
                "tottime_s": tt / n,
                "cumtime_s": ct / n,
                "calls": ncalls / n,
            }
        )
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:k]
