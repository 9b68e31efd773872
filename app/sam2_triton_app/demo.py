"""``sam2-triton demo``: the whole pipeline on one machine, end to end.

Export (official checkpoint if one is available, else random weights with a warning), start
the local Triton server, segment a sample picture with one click and one box, write an overlay
picture, a mask and a JSON result, stop the server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sam2_triton import Prompt
from sam2_triton.samples import sample_image

from . import visualize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the demo options on ``parser``."""
    parser.add_argument(
        "--variant", default="tiny", choices=("tiny", "small", "base_plus", "large")
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="SAM 2.1 checkpoint; default: the official file in the download "
        "cache if present, else random weights (meaningless masks)",
    )
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs"),
        help="where sample.png, overlay.png, mask.png, result.json go",
    )
    parser.add_argument(
        "--image",
        type=Path,
        default=None,
        help="segment this image instead of the generated sample",
    )
    parser.add_argument(
        "--reexport",
        action="store_true",
        help="export even if the repository already holds these weights",
    )


def _weights(args: argparse.Namespace) -> list[str]:
    from sam2_triton_export import checkpoints

    if args.checkpoint is not None:
        return ["--checkpoint", str(args.checkpoint)]
    cached = checkpoints.default_cache_dir() / checkpoints.checkpoint_info(args.variant).file
    if cached.is_file():
        return ["--checkpoint", str(cached)]
    return ["--random-weights", "--seed", "0"]


def _needs_export(repo: Path, variant: str, weights: list[str]) -> bool:
    from sam2_triton_serve import repository

    manifest_path = repo / repository.MANIFEST_FILENAME
    if not manifest_path.is_file():
        return True
    manifest = json.loads(manifest_path.read_text())
    w = manifest.get("weights", {})
    same = (w.get("random") and weights[0] == "--random-weights" and w.get("seed") == 0) or (
        not w.get("random") and weights[0] == "--checkpoint" and w.get("path") == weights[1]
    )
    return not (
        same and manifest.get("variant") == variant and manifest.get("image_dtype") == "float32"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    from sam2_triton import SAM2Client
    from sam2_triton.errors import SAM2TritonError
    from sam2_triton_export import main as export_main
    from sam2_triton_serve.launcher import LocalTritonServer

    weights = _weights(args)
    random = weights[0] == "--random-weights"
    step = 1
    if args.reexport or _needs_export(args.model_repository, args.variant, weights):
        print(f"[{step}/4] exporting SAM 2.1 {args.variant} ({' '.join(weights)})", flush=True)
        ex = argparse.ArgumentParser()
        export_main.add_arguments(ex)
        code = export_main.run(
            ex.parse_args(
                ["--variant", args.variant, *weights, "--output", str(args.model_repository)]
            )
        )
        if code:
            return code
    else:
        print(
            f"[{step}/4] {args.model_repository} already holds this export; skipping "
            "(--reexport to redo)",
            flush=True,
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.image is not None:
        from sam2_triton.transforms import load_image

        image = np.round(load_image(args.image) * 255).astype(np.uint8)
    else:
        image = sample_image()
        Image.fromarray(image).save(args.output_dir / "sample.png")
    h, w = image.shape[:2]
    click = np.array([[0.35 * w, 0.6 * h]])
    box = np.array([0.58 * w, 0.27 * h, 0.82 * w, 0.82 * h])
    print("[2/4] starting the local Triton server (CPU flavour)", flush=True)
    try:
        with LocalTritonServer(
            args.model_repository, http_port=0, grpc_port=0, metrics_port=0
        ) as server:  # starts and waits for readiness
            print(
                f"      ready in {server.start_seconds:.1f} s: gRPC {server.grpc_url}, "
                f"HTTP {server.http_url}, metrics {server.metrics_url}",
                flush=True,
            )
            print("[3/4] segmenting: one click (multimask, best of 3) and one box", flush=True)
            with SAM2Client(server.grpc_url, "grpc", timeout_s=300) as client:
                embedding = client.encode(image)
                by_click = client.decode(
                    embedding, Prompt(point_coords=click, point_labels=[1]), multimask_output=True
                )
                by_box = client.decode(embedding, Prompt(box=box), multimask_output=False)
    except SAM2TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("[4/4] server stopped; writing results", flush=True)
    masks = [p.masks[int(np.argmax(p.scores))] for p in (by_click, by_box)]
    visualize.overlay(image, masks, points=click, labels=np.array([1]), boxes=box[None]).save(
        args.output_dir / "overlay.png"
    )
    visualize.label_image(masks, (h, w)).save(args.output_dir / "mask.png")
    result = {
        "image_size": [h, w],
        "weights": "random (seed 0)" if random else weights[1],
        "objects": [
            {"prompt": name, "score": float(p.scores.max()), "area": int(m.sum())}
            for name, p, m in (("click", by_click, masks[0]), ("box", by_box, masks[1]))
        ],
    }
    (args.output_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    for obj in result["objects"]:
        print(f"      {obj['prompt']}: score {obj['score']:.3f}, area {obj['area']} px")
    print(f"Wrote {args.output_dir / 'overlay.png'}, mask.png, result.json")
    if random:
        print(
            "WARNING: these masks come from RANDOM WEIGHTS and mean nothing. For real masks: "
            f"sam2-triton export --download --variant {args.variant} (needs internet), then run "
            "the demo again.",
            file=sys.stderr,
        )
    return 0
