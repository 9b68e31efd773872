"""``batching`` section of ``sam2-triton bench``: encoder latency and throughput at concurrency
1/2/4/8, Triton's dynamic batching on vs off (raw tritonclient requests)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from sam2_triton import spec, transforms

from . import tensors
from .metrics import metric
from .plan import GAP_S, TIMEOUT_S
from .stats import Rounds, summarize

if TYPE_CHECKING:
    from .runner import Bench


def section_batching(self: Bench) -> dict:
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
    wire = transforms.to_wire_image(transforms.load_image(self.images.base), np.float32)
    if self.models.encoder_nobatch:  # warm up the second encoder instance
        infer_encoder(
            self, mod, None, self.models.encoder_nobatch, self.images.distinct_wire(wire), headers
        )
    latencies: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
    throughput: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
    batches: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
    rounds = self._rounds("batching", self.plan.batching_rounds, 1)
    levels = self.plan.concurrency
    for r in rounds:
        for c in Rounds.order(levels, r):
            for mode in list(modes) if (r + levels.index(c)) % 2 == 0 else list(reversed(modes)):
                lat, wall, avg_batch = _concurrent(self, mod, proto, modes[mode], c, wire, headers)
                latencies[mode].setdefault(c, []).extend(lat)
                throughput[mode].setdefault(c, []).append(c / wall)
                if avg_batch is not None:
                    batches[mode].setdefault(c, []).append(avg_batch)
                self.log(
                    f"batching: round {r + 1}/{rounds.rounds}, concurrency {c}, "
                    f"batching {mode}: {c / wall:.2f} images/s, median latency "
                    f"{np.median(lat):.2f} s"
                    + (f", batches of {avg_batch:.2f}" if avg_batch else "")
                )
                time.sleep(GAP_S)
    out: dict[str, Any] = {
        "modes": {},
        "rounds": rounds.done,
        "stopped_early": rounds.stopped_early,
        "protocol": proto,
        "concurrency": list(levels),
        "off_means": (
            "a second encoder model whose config has no "
            "dynamic_batching block (max_batch_size 4 kept): "
            "Triton runs each request alone, in arrival order"
            if "off" in modes
            else None
        ),
    }
    for mode in modes:
        out["modes"][mode] = {
            str(c): {
                "latency": summarize(latencies[mode].get(c, [])),
                "throughput_median": float(np.median(throughput[mode][c]))
                if throughput[mode].get(c)
                else None,
                "throughput_samples": throughput[mode].get(c, []),
                "avg_batch": float(np.mean(batches[mode][c])) if batches[mode].get(c) else None,
            }
            for c in levels
        }
    return out


def infer_encoder(self: Bench, mod, client, model: str, pixels: np.ndarray, headers) -> None:
    own = client is None
    if own:
        client = mod.InferenceServerClient(self.ep.url(self.primary))
    inp = mod.InferInput(spec.ENCODER_IMAGE, [1, *pixels.shape], "FP32")
    inp.set_data_from_numpy(pixels[None])
    outs = tensors.outputs(mod, tensors.ENCODER_OUTPUTS)
    kwargs = {"client_timeout": TIMEOUT_S} if mod.__name__.endswith("grpc") else {}
    client.infer(model, [inp], outputs=outs, headers=headers, **kwargs)
    if own:
        client.close()


def _concurrent(
    self: Bench,
    mod,
    proto: str,
    model: str,
    c: int,
    wire: np.ndarray,
    headers,
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
            infer_encoder(self, mod, client, model, pixels[i], headers)
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
            before, "nv_inference_exec_count", **labels
        )
        count = metric(after, "nv_inference_count", **labels) - metric(
            before, "nv_inference_count", **labels
        )
        avg_batch = count / execs if execs else None
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return [e - s for s, e in spans], wall, avg_batch
