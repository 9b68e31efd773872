"""A thread-safe LRU cache of image embeddings bounded by a byte budget."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

import numpy as np

from .types import CacheStats, ImageEmbedding, RemoteEmbedding

Embedding = ImageEmbedding | RemoteEmbedding

logger = logging.getLogger(__name__)


def image_key(image01: np.ndarray) -> bytes:
    """sha256 over the decoded pixels (float32 ``HxWx3`` from ``load_image``) and their shape.

    The same picture given as a path, bytes, a PIL image or an array hashes to the same key.
    """
    pixels = np.ascontiguousarray(image01)
    digest = hashlib.sha256()
    digest.update(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(memoryview(pixels).cast("B"))
    return digest.digest()


class EmbeddingCache:
    """Least-recently-used map ``key -> ImageEmbedding | RemoteEmbedding`` holding at most
    ``max_bytes`` (features, or the kept encoder input of a ``RemoteEmbedding``).

    ``max_bytes == 0`` disables the cache (``get`` always misses, ``put`` stores nothing). An
    embedding larger than the whole budget is not stored. All methods are thread-safe.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[bytes, Embedding] = OrderedDict()
        self._nbytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: bytes) -> Embedding | None:
        """The cached embedding (marked most recently used), or ``None``."""
        with self._lock:
            emb = self._items.get(key)
            if emb is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return emb

    def put(self, key: bytes, embedding: Embedding) -> None:
        """Store ``embedding``, evicting least recently used entries until the budget holds."""
        size = embedding.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            self._items[key] = embedding
            self._nbytes += size
            while self._nbytes > self.max_bytes:
                evicted_key, evicted = self._items.popitem(last=False)
                self._nbytes -= evicted.nbytes
                logger.debug("embedding cache: evicted %s", evicted_key.hex()[:12])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._nbytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                entries=len(self._items),
                nbytes=self._nbytes,
                max_bytes=self.max_bytes,
            )
