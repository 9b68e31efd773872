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

The parts: ``load_workload`` (options, images, prompts, plans, digests), ``load_runner`` (client
threads, reference run, memory sampling, criteria), ``procmem`` (``/proc``: memory, process
trees, listening sockets, the loopback check), ``load_report`` (the report). This module is the
command (``add_arguments``/``run``) and re-exports their public names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sam2_triton.errors import SAM2TritonError

from .load_report import LoadReport
from .load_runner import reference_digests, run_against, run_loadtest
from .load_workload import (
    CLIENT_KINDS,
    ClientKind,
    LoadOptions,
    RequestSpec,
    embedding_digest,
    make_images,
    make_plan,
    make_prompt_sets,
    prediction_digest,
)
from .procmem import (
    check_loopback,
    listening_pids,
    listening_sockets,
    memory_by_process,
    process_tree,
    pss_bytes,
    rss_bytes,
    tree_memory,
)

__all__ = [
    "CLIENT_KINDS",
    "ClientKind",
    "LoadOptions",
    "LoadReport",
    "RequestSpec",
    "add_arguments",
    "check_loopback",
    "embedding_digest",
    "listening_pids",
    "listening_sockets",
    "make_images",
    "make_plan",
    "make_prompt_sets",
    "memory_by_process",
    "prediction_digest",
    "process_tree",
    "pss_bytes",
    "reference_digests",
    "rss_bytes",
    "run",
    "run_against",
    "run_loadtest",
    "tree_memory",
]


# --- the command -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LoadOptions()
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=Path("model_repository"),
        help="repository to serve on local servers (default: model_repository)",
    )
    parser.add_argument(
        "--grpc-url",
        default=None,
        help="use this running server (loopback only) instead of starting one",
    )
    parser.add_argument("--http-url", default=None, help="its HTTP endpoint (loopback only)")
    parser.add_argument(
        "--clients",
        type=int,
        default=d.clients,
        help="concurrent clients, one thread each, every client kind in turn (default %(default)s)",
    )
    parser.add_argument(
        "--requests", type=int, default=d.requests, help="requests per client (default %(default)s)"
    )
    parser.add_argument("--images", type=int, default=d.images, help="distinct images")
    parser.add_argument(
        "--prompt-sets",
        type=int,
        default=d.prompt_sets,
        help="distinct prompt sets (1-16 prompts) per image",
    )
    parser.add_argument(
        "--max-prompts",
        type=int,
        default=d.max_prompts,
        help="most prompts per decode call (default 16)",
    )
    parser.add_argument(
        "--encode-fraction",
        type=float,
        default=d.encode_fraction,
        help="share of requests that encode an image (default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=d.warmup,
        help="requests per client before the memory baseline",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the images and the request mix (default %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=d.retries,
        help="client retries after ServerBusyError, ServerUnavailableError or the "
        "server's queue timeout (default 5)",
    )
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="per request, s")
    parser.add_argument(
        "--max-duration",
        type=float,
        default=d.max_duration_s,
        help="stop sending after this many seconds (unsent requests count as lost)",
    )
    parser.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=d.max_rss_growth_mb,
        help="allowed growth of the peak resident memory from the first to the "
        "second half of the main phase (default %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the report here")


def run(args: argparse.Namespace) -> int:
    """``sam2-triton loadtest``: 0 when every criterion held, 1 otherwise, 2 on bad options."""
    try:
        opts = LoadOptions(
            clients=args.clients,
            requests=args.requests,
            images=args.images,
            prompt_sets=args.prompt_sets,
            max_prompts=args.max_prompts,
            encode_fraction=args.encode_fraction,
            warmup=min(args.warmup, args.requests),
            seed=args.seed,
            retries=args.retries,
            timeout_s=args.timeout,
            max_duration_s=args.max_duration,
            max_rss_growth_mb=args.max_rss_growth_mb,
        )
        for url in (args.grpc_url, args.http_url):
            if url:
                check_loopback(url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def out(line: str) -> None:
        print(line, flush=True)

    from sam2_triton_serve.errors import LauncherError

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
