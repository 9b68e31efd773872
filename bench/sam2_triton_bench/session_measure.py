"""Measure what a click costs with sessions, with features, and in-process (for docs/sessions.md).

``measure(...)`` runs the three side by side, interleaved click by click so that load from
other processes hits all of them alike, and returns medians:

- ``in_process``: the decoder ONNX file run by onnxruntime in this process on features already
  in memory (the compute a click cannot avoid); ``in_process_full`` adds the mask selection and
  upsampling to the image size that ``SAM2ImagePredictor.predict`` does after it (the
  in-process counterpart of the SDK's ``decode``);
- ``session``: a click through ``sam2_session`` (image id + prompt in, decoder outputs back);
- ``features``: a click through ``sam2_decoder`` carrying the image's 16.8 MB of features.

For both server paths it times the bare request (``infer`` round trip, gRPC) and the full SDK
call (``SAM2Client.decode``: validation, request, mask selection and upsampling to the image
size). Bytes per click are counted on the wire (request and response, HTTP/1.1 through a
counting TCP relay, headers included) in a separate pass, so the relay does not slow the
timed clicks.

``python -m sam2_triton_bench.session_measure --model-repository REPO`` starts the local Triton
on an exported repository and prints the result as JSON and as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import spec

from .wirebytes import CountingProxy

LOGGER = logging.getLogger(__name__)


@dataclass
class PathResult:
    """Medians of one path: seconds per click and bytes per click (None where not measured)."""

    request_s: float | None = None
    sdk_decode_s: float | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    samples_request_s: list[float] = field(default_factory=list)


@dataclass
class Measurement:
    clicks: int
    image_hw: tuple[int, int]
    in_process_s: float
    in_process_full_s: float
    session: PathResult
    features: PathResult
    host: str
    load_average: tuple[float, float, float]
    notes: str = ""

    def ratios(self) -> dict[str, float]:
        s, f = self.session, self.features
        return {
            "session_request_vs_in_process": s.request_s / self.in_process_s,
            "session_sdk_vs_in_process": s.sdk_decode_s / self.in_process_s,
            "session_sdk_vs_in_process_full": s.sdk_decode_s / self.in_process_full_s,
            "features_request_vs_in_process": f.request_s / self.in_process_s,
            "session_bytes_vs_features": (s.bytes_up + s.bytes_down) / (f.bytes_up + f.bytes_down),
            "session_request_bytes_vs_features": s.bytes_up / f.bytes_up,
        }

    def markdown(self) -> str:
        s, f, r = self.session, self.features, self.ratios()
        ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
        kb = lambda v: f"{v / 1000:,.1f} kB"  # noqa: E731
        rows = [
            f"| path (median of {self.clicks} clicks) | request round trip | SDK `decode` "
            "| bytes up | bytes down |",
            "|---|---|---|---|---|",
            f"| in-process decoder (onnxruntime) | {ms(self.in_process_s)} "
            f"| {ms(self.in_process_full_s)} | | |",
            f"| session (`sam2_session`, id + prompt) | {ms(s.request_s)} | {ms(s.sdk_decode_s)} "
            f"| {kb(s.bytes_up)} | {kb(s.bytes_down)} |",
            f"| features (`sam2_decoder`, 16.8 MB) | {ms(f.request_s)} | {ms(f.sdk_decode_s)} "
            f"| {kb(f.bytes_up)} | {kb(f.bytes_down)} |",
            "",
            f"session request / in-process: {r['session_request_vs_in_process']:.2f}x; "
            f"session SDK decode / in-process: {r['session_sdk_vs_in_process']:.2f}x "
            f"(/ in-process with the same mask post-processing: "
            f"{r['session_sdk_vs_in_process_full']:.2f}x); "
            f"features request / in-process: {r['features_request_vs_in_process']:.2f}x",
            f"bytes per click, session / features: {100 * r['session_bytes_vs_features']:.2f} % "
            f"(request only: {100 * r['session_request_bytes_vs_features']:.4f} %)",
        ]
        return "\n".join(rows)


def _picture(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([np.sin(xx / 17.0), np.cos(yy / 23.0), np.sin((xx + yy) / 31.0)], -1)
    noise = np.random.default_rng(0).normal(0, 10, (h, w, 3))
    return np.clip(127.5 * (1 + rgb) + noise, 0, 255).astype(np.uint8)


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def measure(
    grpc_url: str,
    http_url: str,
    decoder_onnx: str | os.PathLike[str],
    clicks: int = 20,
    image_hw: tuple[int, int] = (480, 640),
    byte_clicks: int = 3,
) -> Measurement:
    """Median click latency and bytes per click, session vs features vs in-process.

    ``grpc_url``/``http_url``: a server with ``sam2_session`` and ``sam2_decoder``;
    ``decoder_onnx``: that server's ``sam2_decoder/1/model.onnx``. Each click is one
    foreground point (a different one each time) with ``multimask_output=True``.
    """
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    from sam2_triton import Prompt, SAM2Client, transforms
    from sam2_triton.prompts import plan_decode, validate_prompt

    from . import tensors

    h, w = image_hw
    image = _picture(h, w)
    rng = np.random.default_rng(1)
    points = np.stack([rng.uniform(0, w, clicks + 2), rng.uniform(0, h, clicks + 2)], 1)
    prompts = [Prompt(point_coords=[p], point_labels=[1]) for p in points]

    session_client = SAM2Client(grpc_url, "grpc", use_sessions=True, timeout_s=600)
    features_client = SAM2Client(grpc_url, "grpc", use_sessions=False, timeout_s=600)
    raw = grpcclient.InferenceServerClient(grpc_url)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    decoder = ort.InferenceSession(str(decoder_onnx), options, providers=["CPUExecutionProvider"])
    try:
        remote = session_client.encode(image)
        local = features_client.encode(image)
        chunks = [plan_decode([validate_prompt(p, "p", (h, w))], 64)[0] for p in prompts]
        features = {n: np.ascontiguousarray(a, np.float32) for n, a in local.features().items()}
        feature_inputs = [tensors.tensor_input(grpcclient, n, a) for n, a in features.items()]
        outputs = tensors.outputs(grpcclient, tensors.DECODER_OUTPUTS)
        # as the SDK does: ask for the selected mask tokens only where the model can select them
        selects = spec.SESSION_MULTIMASK in tensors.model_input_names(raw, spec.SESSION_MODEL)
        multimask = True if selects else None

        def in_process(chunk: Any) -> list[np.ndarray]:
            return decoder.run(
                None,
                {
                    **features,
                    spec.POINT_COORDS: chunk.point_coords,
                    spec.POINT_LABELS: chunk.point_labels,
                    spec.MASK_INPUT: chunk.mask_input,
                    spec.HAS_MASK_INPUT: chunk.has_mask_input,
                },
            )

        def in_process_full(chunk: Any) -> None:  # + what SAM2ImagePredictor does after it
            low, iou = in_process(chunk)[:2]
            selected, _ = transforms.select_masks(low, iou, True)
            transforms.postprocess(selected, (h, w), return_logits=False)

        def session_request(chunk: Any) -> None:
            raw.infer(
                spec.SESSION_MODEL,
                tensors.session_decode_inputs(grpcclient, remote.image_id, chunk, multimask),
                outputs=outputs,
            )

        def features_request(chunk: Any) -> None:
            raw.infer(
                spec.DECODER_MODEL,
                [*feature_inputs, *tensors.chunk_inputs(grpcclient, chunk)],
                outputs=outputs,
            )

        timed: dict[str, Callable[[int], Any]] = {
            "in_process": lambda i: in_process(chunks[i]),
            "in_process_full": lambda i: in_process_full(chunks[i]),
            "session_request": lambda i: session_request(chunks[i]),
            "features_request": lambda i: features_request(chunks[i]),
            "session_sdk": lambda i: session_client.decode(remote, prompts[i]),
            "features_sdk": lambda i: features_client.decode(local, prompts[i]),
        }
        for fn in timed.values():  # warm-up: first calls load kernels and connections
            fn(clicks)
            fn(clicks + 1)
        samples: dict[str, list[float]] = {k: [] for k in timed}
        for i in range(clicks):
            for name, fn in timed.items():  # interleaved: background load hits all alike
                start = time.perf_counter()
                fn(i)
                samples[name].append(time.perf_counter() - start)

        session_bytes, features_bytes = _wire_bytes(http_url, remote, local, prompts, byte_clicks)
    finally:
        session_client.close()
        features_client.close()
        raw.close()
    return Measurement(
        clicks=clicks,
        image_hw=(h, w),
        in_process_s=_median(samples["in_process"]),
        in_process_full_s=_median(samples["in_process_full"]),
        session=PathResult(
            _median(samples["session_request"]),
            _median(samples["session_sdk"]),
            *session_bytes,
            samples_request_s=samples["session_request"],
        ),
        features=PathResult(
            _median(samples["features_request"]),
            _median(samples["features_sdk"]),
            *features_bytes,
            samples_request_s=samples["features_request"],
        ),
        host=f"{os.cpu_count()} CPUs, {socket.gethostname()}",
        load_average=os.getloadavg(),
    )


def _wire_bytes(
    http_url: str, remote: Any, local: Any, prompts: list[Any], n: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Median (up, down) bytes per click over HTTP for the session and the features path."""
    from sam2_triton import SAM2Client

    host, port = http_url.removeprefix("http://").rsplit(":", 1)
    with CountingProxy(host.strip("[]"), int(port)) as relay:
        out = []
        for use_sessions, emb in ((True, remote), (False, local)):
            with SAM2Client(
                relay.address, "http", use_sessions=use_sessions, timeout_s=600
            ) as client:
                client.decode(emb, prompts[0])  # connection set up, metadata read
                ups, downs = [], []
                for i in range(n):
                    relay.reset()
                    client.decode(emb, prompts[i])
                    time.sleep(0.05)  # let the relay threads finish counting
                    up, down = relay.counts()
                    ups.append(up)
                    downs.append(down)
            out.append((int(_median(ups)), int(_median(downs))))
        return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    """Start the local Triton on an exported repository, measure, print JSON and Markdown."""
    from sam2_triton_serve.launcher import LocalTritonServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    with LocalTritonServer(
        args.model_repository, http_port=0, grpc_port=0, metrics_port=0
    ) as server:
        result = measure(
            server.grpc_url,
            server.http_url,
            args.model_repository / spec.DECODER_MODEL / "1" / "model.onnx",
            clicks=args.clicks,
        )
    doc = {**asdict(result), "ratios": result.ratios()}
    text = json.dumps(doc, indent=2)
    print(text)
    print(result.markdown())
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
