"""A click loop in a process of its own (``python -m sam2_triton_bench.clickloop``).

Used by the benchmark's allocator experiment: the same clicks with different malloc settings
(environment variables only take effect at process start). Prints one JSON line: wall and
client-thread CPU seconds per click, and minor page faults per click.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--protocol", default="grpc")
    parser.add_argument("--image-size", default="1200x1800")
    parser.add_argument("--clicks", type=int, default=15)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()

    from sam2_triton import Prompt, SAM2Client
    from sam2_triton.samples import sample_image

    h, w = (int(v) for v in args.image_size.lower().split("x"))
    headers = dict(item.split("=", 1) for item in args.header) or None
    kwargs = {"embedding_cache_bytes": 0, "timeout_s": 900, "headers": headers}
    import inspect

    if "use_sessions" in inspect.signature(SAM2Client).parameters:
        kwargs["use_sessions"] = False
    prompt = Prompt(point_coords=[[0.35 * w, 0.6 * h]], point_labels=[1])
    with SAM2Client(args.url, args.protocol, **kwargs) as client:
        emb = client.encode(sample_image(h, w))  # the benchmark image: a response-cache hit
        for _ in range(3):
            client.decode(emb, prompt)
        wall, cpu = [], []
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(args.clicks):
            w0, c0 = time.perf_counter(), time.thread_time()
            client.decode(emb, prompt)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.thread_time() - c0)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.clicks
    print(json.dumps({"wall": wall, "cpu": cpu, "faults": faults}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
