"""sam2-triton client: Meta's SAM 2.1 served by NVIDIA Triton, used from Python without torch.

    from sam2_triton import SAM2Client, Prompt

    with SAM2Client("localhost:8001") as client:
        emb = client.encode("photo.jpg")
        pred = client.decode(emb, Prompt(point_coords=[[500, 375]], point_labels=[1]))

``AsyncSAM2Client`` is the asyncio twin; ``SAM2ImagePredictor``, ``SAM2AutomaticMaskGenerator``
and ``SAM2VideoPredictor`` mirror SAM 2's predictors and automatic mask generator.
The clients (and tritonclient) are imported on first use, so ``import sam2_triton`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AccessDeniedError,
    ClientClosedError,
    EmbeddingMismatchError,
    ImageNotSetError,
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    InvalidPromptError,
    ModelNotReadyError,
    RequestTimeoutError,
    SAM2TritonError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
    UnknownImageError,
    UnknownVideoError,
    UsageError,
)
from .types import (
    CacheStats,
    DecodeOptions,
    ImageEmbedding,
    Prediction,
    Prompt,
    RemoteEmbedding,
)

if TYPE_CHECKING:
    from .aio import AsyncSAM2Client
    from .client import SAM2Client
    from .generator import AsyncSAM2AutomaticMaskGenerator, SAM2AutomaticMaskGenerator
    from .predictor import SAM2ImagePredictor
    from .text import AsyncLangSAM, LangSAM
    from .video import AsyncSAM2VideoPredictor, SAM2VideoPredictor

__version__ = "0.1.0"

_LAZY = {
    "SAM2Client": ".client",
    "AsyncSAM2Client": ".aio",
    "SAM2ImagePredictor": ".predictor",
    "SAM2AutomaticMaskGenerator": ".generator",
    "AsyncSAM2AutomaticMaskGenerator": ".generator",
    "SAM2VideoPredictor": ".video",
    "AsyncSAM2VideoPredictor": ".video",
    "LangSAM": ".text",
    "AsyncLangSAM": ".text",
}

__all__ = [
    "AccessDeniedError",
    "AsyncLangSAM",
    "AsyncSAM2AutomaticMaskGenerator",
    "AsyncSAM2Client",
    "AsyncSAM2VideoPredictor",
    "CacheStats",
    "ClientClosedError",
    "DecodeOptions",
    "EmbeddingMismatchError",
    "ImageEmbedding",
    "ImageNotSetError",
    "InferenceError",
    "InvalidImageError",
    "InvalidInputError",
    "InvalidPromptError",
    "LangSAM",
    "ModelNotReadyError",
    "Prediction",
    "Prompt",
    "RemoteEmbedding",
    "RequestTimeoutError",
    "SAM2AutomaticMaskGenerator",
    "SAM2Client",
    "SAM2ImagePredictor",
    "SAM2TritonError",
    "SAM2VideoPredictor",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "UnknownImageError",
    "UnknownVideoError",
    "UsageError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
