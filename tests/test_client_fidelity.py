"""Fidelity of the client against SAM 2's own ``SAM2ImagePredictor``, through the REAL local Triton.

The same seeded tiny SAM 2.1 model (random weights, ``conftest.SEED``) runs twice: exported and
served by the local tritonserver (``triton_server`` fixture), and in PyTorch through
``sam2.sam2_image_predictor.SAM2ImagePredictor(sam2_model)``. For four images (640x480,
1920x1080, 333x517 RGB and a 400x300 grayscale picture) and every kind of prompt (one click,
positive + negative clicks, a box, box + clicks, three boxes at once, mask refinement) with
``multimask_output`` on and off, the client must give the reference's results: mask IoU
>= 0.999, IoU predictions and low-resolution logits within 1e-3; ``sam2_triton``'s predictor
also the reference's return types, shapes and dtypes.

Coverage: ``sam2_triton.SAM2ImagePredictor`` on gRPC (every image x prompt x multimask) and
HTTP (two images); ``SAM2Client.decode`` and ``AsyncSAM2Client.decode`` on gRPC and HTTP (every
image and prompt kind, both multimask settings, one test per image); ``set_image_batch`` +
``predict_batch``; ``get_image_embedding``.

Runtime is bounded by the CPU encoder (about 3 s per image in each implementation): each
reference image is embedded once per module and its results memoised, the sync clients are
shared per protocol, and Triton's response cache serves repeated encodings of the same picture.
Each async test makes its own ``AsyncSAM2Client`` inside its ``asyncio.run``: the client's
tritonclient is bound to the event loop it first ran in, so one cannot outlive the loop.
Run with ``-s`` to see the largest measured differences per client and protocol.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from PIL import Image

from sam2_triton import AsyncSAM2Client, Prediction, Prompt, SAM2Client, SAM2ImagePredictor
from sam2_triton_export.verify import synthetic_image

pytestmark = pytest.mark.triton

MIN_MASK_IOU = 0.999
SCORE_TOL = 1e-3
LOGIT_TOL = 1e-3
EMBED_TOL = 1e-4
PROTOCOLS = ("grpc", "http")

# name -> (H, W, seed, grayscale)
IMAGES: dict[str, tuple[int, int, int, bool]] = {
    "rgb640x480": (480, 640, 1, False),
    "rgb1920x1080": (1080, 1920, 2, False),
    "rgb333x517": (517, 333, 3, False),
    "gray400x300": (300, 400, 4, True),
}
CASES = ("point", "pos_neg", "box", "box_points", "boxes", "refine")


# --- images ---------------------------------------------------------------------------------
@functools.cache
def _rgb(name: str) -> np.ndarray:
    h, w, seed, _ = IMAGES[name]
    return synthetic_image(h, w, seed)


@functools.cache
def _gray(name: str) -> Image.Image:
    return Image.fromarray(_rgb(name)).convert("L")


def client_image(name: str, gray_as_array: bool = False) -> np.ndarray | Image.Image:
    """What the client gets: the RGB array, or the grayscale picture itself (PIL "L" or HxW)."""
    if not IMAGES[name][3]:
        return _rgb(name)
    return np.asarray(_gray(name)) if gray_as_array else _gray(name)


def reference_image(name: str) -> np.ndarray:
    """What SAM 2 gets: HxWx3 uint8 RGB; a grayscale picture with its channel replicated (the
    client's documented conversion of grayscale input)."""
    if not IMAGES[name][3]:
        return _rgb(name)
    return np.repeat(np.asarray(_gray(name))[:, :, None], 3, axis=2)


# --- prompts --------------------------------------------------------------------------------
# synthetic_image draws a red rectangle over [H/5:H/2, W/6:W/2] and a blue disk at (0.7W, 0.65H).
def case_args(case: str, h: int, w: int) -> dict[str, np.ndarray]:
    """``predict`` keyword arguments (pixel coordinates) of a prompt kind's (first) call."""
    on_rect, on_disk = [0.33 * w, 0.35 * h], [0.7 * w, 0.65 * h]
    if case == "point":
        return {"point_coords": np.array([on_rect]), "point_labels": np.array([1])}
    if case == "pos_neg":
        return {"point_coords": np.array([on_rect, on_disk]), "point_labels": np.array([1, 0])}
    if case == "box":
        return {"box": np.array([0.1 * w, 0.15 * h, 0.55 * w, 0.55 * h])}
    if case == "box_points":
        return {
            "box": np.array([0.5 * w, 0.4 * h, 0.95 * w, 0.9 * h]),
            "point_coords": np.array([on_disk, [0.2 * w, 0.2 * h]]),
            "point_labels": np.array([1, 0]),
        }
    if case == "boxes":  # B = 3 objects at once
        return {
            "box": np.array(
                [
                    [0.1 * w, 0.15 * h, 0.55 * w, 0.55 * h],
                    [0.5 * w, 0.4 * h, 0.95 * w, 0.9 * h],
                    [0.0, 0.0, 0.3 * w, 0.3 * h],
                ]
            )
        }
    if case == "refine":  # first click; the second call adds a click and the best logits
        return {"point_coords": np.array([on_disk]), "point_labels": np.array([1])}
    raise AssertionError(case)


def refine_args(h: int, w: int, first: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """The refinement call: both clicks plus the best low-res logits of the first call."""
    best = int(np.argmax(first[1]))
    return {
        "point_coords": np.array([[0.7 * w, 0.65 * h], [0.74 * w, 0.6 * h]]),
        "point_labels": np.array([1, 1]),
        "mask_input": first[2][best][None, :, :],
    }


Result = tuple[np.ndarray, np.ndarray, np.ndarray]


def run_case(
    predict: Callable[..., Result], case: str, hw: tuple[int, int], multimask: bool
) -> list[Result]:
    """The results of one prompt kind: one call, or two for mask refinement (the first with
    ``multimask_output=True``, the second fed the first's best logits)."""
    h, w = hw
    if case != "refine":
        return [predict(**case_args(case, h, w), multimask_output=multimask)]
    first = predict(**case_args(case, h, w), multimask_output=True)
    return [first, predict(**refine_args(h, w, first), multimask_output=multimask)]


async def arun_case(
    predict: Callable[..., Awaitable[Result]], case: str, hw: tuple[int, int], multimask: bool
) -> list[Result]:
    """``run_case`` with an async ``predict``."""
    h, w = hw
    if case != "refine":
        return [await predict(**case_args(case, h, w), multimask_output=multimask)]
    first = await predict(**case_args(case, h, w), multimask_output=True)
    return [first, await predict(**refine_args(h, w, first), multimask_output=multimask)]


def to_prompts(
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
) -> Prompt | list[Prompt]:
    """``predict`` arguments as client prompts: a ``(B, 4)`` box becomes B prompts."""
    if box is not None and np.ndim(box) == 2:
        assert point_coords is None and mask_input is None
        return [Prompt(box=b) for b in box]
    return Prompt(point_coords, point_labels, box, mask_input)


PREDICTION_FIELDS = ("masks", "scores", "low_res_logits")


def as_result(pred: Prediction | list[Prediction]) -> Result:
    """A client's ``Prediction`` (or list of them) as ``predict``'s (masks, scores, logits)."""
    if isinstance(pred, list):
        return tuple(np.stack([getattr(p, f) for p in pred]) for f in PREDICTION_FIELDS)
    return tuple(getattr(pred, f) for f in PREDICTION_FIELDS)


# --- comparison -----------------------------------------------------------------------------
STATS: dict[str, dict[str, float]] = defaultdict(
    lambda: {"logits": 0.0, "scores": 0.0, "min_iou": 1.0, "masks": 0, "nontrivial": 0}
)


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each pair of ``[..., H, W]`` masks (1.0 when both are empty)."""
    a = a.reshape(-1, *a.shape[-2:]) > 0.5
    b = b.reshape(-1, *b.shape[-2:]) > 0.5
    inter = np.logical_and(a, b).sum(axis=(1, 2))
    union = np.logical_or(a, b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def nontrivial(masks: np.ndarray) -> np.ndarray:
    """Per mask: neither (almost) empty nor (almost) full."""
    area = (masks.reshape(-1, *masks.shape[-2:]) > 0.5).mean(axis=(1, 2))
    return (area > 0.001) & (area < 0.999)


def compare(ours: Result, ref: Result, label: str, where: str, exact_types: bool) -> None:
    """Assert ``ours`` reproduces ``ref`` (SAM 2's predict output); record the differences.

    ``exact_types``: also the same types, dtypes and shapes (``sam2_triton.SAM2ImagePredictor``);
    else (client ``Prediction``) the same shapes, bool masks and float32 scores and logits.
    """
    masks, scores, logits = ours
    rmasks, rscores, rlogits = ref
    for name, a, r in (
        ("masks", masks, rmasks),
        ("scores", scores, rscores),
        ("low_res_logits", logits, rlogits),
    ):
        assert isinstance(a, np.ndarray), f"{where}: {name} is {type(a).__name__}"
        assert a.shape == r.shape, f"{where}: {name} shape {a.shape} != SAM 2's {r.shape}"
        want = r.dtype if exact_types or name != "masks" else np.dtype(bool)
        assert a.dtype == want, f"{where}: {name} dtype {a.dtype} != {want}"
    if exact_types:
        assert np.isin(masks, (0.0, 1.0)).all(), f"{where}: masks are not 0/1"
    d_logits = float(np.abs(logits - rlogits).max())
    d_scores = float(np.abs(scores - rscores).max())
    ious = mask_ious(masks, rmasks)
    st = STATS[label]
    st["logits"] = max(st["logits"], d_logits)
    st["scores"] = max(st["scores"], d_scores)
    st["min_iou"] = min(st["min_iou"], float(ious.min()))
    st["masks"] += ious.size
    st["nontrivial"] += int(nontrivial(rmasks).sum())
    assert d_logits <= LOGIT_TOL, f"{where}: low-res logits differ by {d_logits:.3g}"
    assert d_scores <= SCORE_TOL, f"{where}: scores differ by {d_scores:.3g}"
    assert ious.min() >= MIN_MASK_IOU, f"{where}: mask IoUs {np.round(ious, 5).tolist()}"


def compare_case(
    ours: list[Result], ref: list[Result], label: str, where: str, exact_types: bool = False
) -> None:
    assert len(ours) == len(ref)
    for step, (o, r) in enumerate(zip(ours, ref)):
        compare(o, r, label, f"{where} call {step + 1}", exact_types)


@pytest.fixture(scope="module", autouse=True)
def _report_diffs():
    """Print the largest measured differences per client/protocol (visible with ``-s``)."""
    yield
    for label, st in sorted(STATS.items()):
        emb = f", max |embedding| diff {st['embedding']:.3g}" if "embedding" in st else ""
        print(
            f"\n[fidelity] {label}: max |logits| diff {st['logits']:.3g}, max |score| diff "
            f"{st['scores']:.3g}, min mask IoU {st['min_iou']:.6f} over {st['masks']} masks "
            f"({st['nontrivial']} non-trivial){emb}"
        )


# --- the reference: SAM 2 in PyTorch, each image embedded once -----------------------------
class Reference:
    """``sam2.sam2_image_predictor.SAM2ImagePredictor`` per image, results memoised."""

    def __init__(self, model) -> None:
        self.model = model
        self._predictors: dict[str, object] = {}
        self._results: dict[tuple[str, str, bool], list[Result]] = {}

    def predictor(self, name: str):
        if name not in self._predictors:
            from sam2.sam2_image_predictor import SAM2ImagePredictor as SAM2Predictor

            p = SAM2Predictor(self.model)
            p.set_image(reference_image(name))
            self._predictors[name] = p
        return self._predictors[name]

    def results(self, name: str, case: str, multimask: bool) -> list[Result]:
        key = (name, case, multimask)
        if key not in self._results:
            p = self.predictor(name)
            self._results[key] = run_case(p.predict, case, IMAGES[name][:2], multimask)
        return self._results[key]


@pytest.fixture(scope="module")
def reference(sam2_model) -> Reference:
    return Reference(sam2_model)


# --- Triton clients, one per protocol -------------------------------------------------------
def _url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.fixture(scope="module")
def sync_clients(triton_server):
    clients = {p: SAM2Client(_url(triton_server, p), p) for p in PROTOCOLS}
    try:
        for c in clients.values():
            c.wait_until_ready(timeout_s=120)
        yield clients
    finally:
        for c in clients.values():
            c.close()


@pytest.fixture(scope="module")
def predictors(sync_clients) -> dict[str, SAM2ImagePredictor]:
    """``sam2_triton.SAM2ImagePredictor`` per protocol, sharing the protocol's client."""
    return {p: SAM2ImagePredictor(client=c) for p, c in sync_clients.items()}


# --- tests ----------------------------------------------------------------------------------
# gRPC: every image x prompt kind x multimask; HTTP (the same predictor code over the other
# transport, whose decode results test_client_decode_matches_sam2 covers in full): two images.
HTTP_PREDICTOR_IMAGES = ("rgb333x517", "gray400x300")
PREDICTOR_PARAMS = [
    pytest.param(protocol, image, case, mm, id=f"{protocol}-{image}-{case}-{mm_id}")
    for protocol in PROTOCOLS
    for image in (IMAGES if protocol == "grpc" else HTTP_PREDICTOR_IMAGES)
    for case in CASES
    for mm, mm_id in ((True, "multimask"), (False, "single"))
]


@pytest.mark.parametrize(("protocol", "image", "case", "multimask"), PREDICTOR_PARAMS)
def test_predictor_matches_sam2(protocol, image, case, multimask, predictors, reference):
    """``sam2_triton.SAM2ImagePredictor.predict`` == SAM 2's, values, types, shapes and dtypes."""
    predictor = predictors[protocol]
    predictor.set_image(client_image(image))
    ref = reference.results(image, case, multimask)
    ours = run_case(predictor.predict, case, IMAGES[image][:2], multimask)
    compare_case(
        ours, ref, f"{protocol} SAM2ImagePredictor", f"{protocol}/{image}/{case}", exact_types=True
    )
    h, w = IMAGES[image][:2]
    c = 3 if multimask else 1
    lead = (3,) if case == "boxes" else ()
    masks, scores, logits = ours[-1]
    assert masks.shape == (*lead, c, h, w) and masks.dtype == np.float32
    assert scores.shape == (*lead, c) and scores.dtype == np.float32
    assert logits.shape == (*lead, c, 256, 256) and logits.dtype == np.float32


@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_decode_matches_sam2(protocol, image, sync_clients, reference):
    """``SAM2Client.encode`` + ``decode``: every prompt kind, multimask on and off."""
    client = sync_clients[protocol]
    emb = client.encode(client_image(image))
    assert emb.orig_hw == IMAGES[image][:2]

    def predict(multimask_output: bool, **kwargs) -> Result:
        return as_result(client.decode(emb, to_prompts(**kwargs), multimask_output))

    for case in CASES:
        for multimask in (True, False):
            ours = run_case(predict, case, emb.orig_hw, multimask)
            compare_case(
                ours,
                reference.results(image, case, multimask),
                f"{protocol} SAM2Client",
                f"{protocol}/{image}/{case}/mm={multimask}",
            )


@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client_decode_matches_sam2(protocol, image, triton_server, sync_clients, reference):
    """``AsyncSAM2Client.encode`` + ``decode``: every prompt kind, multimask on and off.

    The grayscale picture goes in as an ``HxW`` uint8 array here (a PIL "L" image elsewhere).
    ``sync_clients`` only orders this after the server is known ready.
    """

    async def main() -> list[tuple[str, bool, list[Result]]]:
        out = []
        async with AsyncSAM2Client(_url(triton_server, protocol), protocol) as client:
            emb = await client.encode(client_image(image, gray_as_array=True))
            assert emb.orig_hw == IMAGES[image][:2]

            async def predict(multimask_output: bool, **kwargs) -> Result:
                return as_result(await client.decode(emb, to_prompts(**kwargs), multimask_output))

            for case in CASES:
                for multimask in (True, False):
                    out.append(
                        (case, multimask, await arun_case(predict, case, emb.orig_hw, multimask))
                    )
        return out

    for case, multimask, ours in asyncio.run(main()):
        compare_case(
            ours,
            reference.results(image, case, multimask),
            f"{protocol} AsyncSAM2Client",
            f"{protocol}/{image}/{case}/mm={multimask}",
        )


@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_image_embedding_matches_sam2(protocol, image, predictors, reference):
    predictor = predictors[protocol]
    predictor.set_image(client_image(image))
    ours = predictor.get_image_embedding()
    ref = reference.predictor(image).get_image_embedding().numpy()
    assert isinstance(ours, np.ndarray)
    assert ours.shape == ref.shape == (1, 256, 64, 64) and ours.dtype == ref.dtype
    diff = float(np.abs(ours - ref).max())
    st = STATS[f"{protocol} SAM2ImagePredictor"]
    st["embedding"] = max(st.get("embedding", 0.0), diff)
    assert diff <= EMBED_TOL, f"{protocol}/{image}: embedding differs by {diff:.3g}"


def test_comparisons_are_meaningful(reference):
    """The gates above can fail: the reference's masks are mostly neither empty nor full, and
    the refinement's ``mask_input`` changes the result far beyond the tolerances (a client that
    dropped it would fail).

    Not reachable with random weights: ``multimask_output=False`` returning mask token 0 (its
    stability score never reaches 0.98 since all logits lie within about +-0.7); SAM 2 then
    returns the best of tokens 1..3, which is what these tests compare. The token-0 branch of
    ``transforms.select_masks`` is covered by the unit tests only.
    """
    for image in IMAGES:
        masks = [
            r[0]
            for case in CASES
            for mm in (True, False)
            for r in reference.results(image, case, mm)
        ]
        flags = np.concatenate([nontrivial(m) for m in masks])
        assert flags.mean() >= 0.5, f"{image}: only {flags.sum()}/{flags.size} masks non-trivial"

        h, w = IMAGES[image][:2]
        first, refined = reference.results(image, "refine", True)
        args = refine_args(h, w, first)
        del args["mask_input"]
        unrefined = reference.predictor(image).predict(**args, multimask_output=True)
        effect = float(np.abs(unrefined[2] - refined[2]).max())
        assert effect > 20 * LOGIT_TOL, f"{image}: mask_input changes logits by {effect:.3g}"
        assert mask_ious(unrefined[0], refined[0]).min() < MIN_MASK_IOU


BATCH_IMAGES = ("rgb640x480", "rgb333x517")


def test_predict_batch_matches_sam2(triton_server, sam2_model):
    """``set_image_batch`` (one batched encoder request) + ``predict_batch`` == SAM 2's."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor as SAM2Predictor

    ref = SAM2Predictor(sam2_model)
    ref.set_image_batch([reference_image(n) for n in BATCH_IMAGES])
    # no embedding cache: the two pictures really travel as one [2, 3, 1024, 1024] request
    with SAM2Client(triton_server.grpc_url, "grpc", embedding_cache_bytes=0) as client:
        ours = SAM2ImagePredictor(client=client)
        ours.set_image_batch([client_image(n) for n in BATCH_IMAGES])
        emb, ref_emb = ours.get_image_embedding(), ref.get_image_embedding().numpy()
        assert emb.shape == ref_emb.shape == (2, 256, 64, 64)
        assert float(np.abs(emb - ref_emb).max()) <= EMBED_TOL

        hws = [IMAGES[n][:2] for n in BATCH_IMAGES]
        calls = [
            {  # one click + a negative one per image, three masks each
                "point_coords_batch": [case_args("pos_neg", h, w)["point_coords"] for h, w in hws],
                "point_labels_batch": [case_args("pos_neg", h, w)["point_labels"] for h, w in hws],
                "multimask_output": True,
            },
            {  # one box on the first image, three on the second
                "box_batch": [case_args("box", *hws[0])["box"], case_args("boxes", *hws[1])["box"]],
                "multimask_output": False,
            },
        ]
        for k, kwargs in enumerate(calls):
            got, want = ours.predict_batch(**kwargs), ref.predict_batch(**kwargs)
            for lists in (got, want):
                assert isinstance(lists, tuple) and len(lists) == 3
                assert all(isinstance(x, list) and len(x) == 2 for x in lists)
            for i in range(2):
                compare(
                    (got[0][i], got[1][i], got[2][i]),
                    (want[0][i], want[1][i], want[2][i]),
                    "grpc predict_batch",
                    f"predict_batch call {k + 1} image {i}",
                    exact_types=True,
                )
