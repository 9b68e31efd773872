"""``sam2_session``'s feature store: a thread-safe LRU of image features bounded by bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from sam2_triton import spec

from ._triton import RequestError

PARAM_CACHE_BYTES = "SESSION_CACHE_BYTES"  # the model config parameter of the byte budget


class _Pending:
    """An encode in flight: waiters block on ``done`` and then read ``entry`` or ``error``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None
        self.error: RequestError | None = None


class Entry:
    """The held features of one image (pb_utils.Tensor objects, or numpy arrays in tests)."""

    __slots__ = ("tensors", "orig_hw", "fingerprint", "nbytes")

    def __init__(
        self,
        tensors: dict[str, Any],
        orig_hw: tuple[int, int],
        fingerprint: np.ndarray,
        nbytes: int,
    ) -> None:
        self.tensors = tensors
        self.orig_hw = orig_hw
        self.fingerprint = fingerprint
        self.nbytes = nbytes


class FeatureStore:
    """Thread-safe LRU ``image id -> Entry`` holding at most ``max_bytes`` of features.

    ``claim(id)`` returns ``("held", entry)``, ``("wait", pending)`` while another thread
    encodes that id, or ``("mine", pending)``: the caller must encode it and call ``finish``.
    ``on_change(event, **values)`` is called (under the lock) for metrics: "hit", "miss" (with
    ``op``), "evict", and "size" (with ``images``, ``nbytes``).
    """

    def __init__(self, max_bytes: int, on_change: Callable[..., None] | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the store's byte budget must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._nbytes = 0
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda event, **values: None)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, op: str) -> Entry | None:
        """The held entry (marked most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self._on_change("miss", op=op)
                return None
            self._items.move_to_end(key)
            self._on_change("hit", op=op)
            return entry

    def claim(self, key: str, op: str = spec.SESSION_OP_ENCODE) -> tuple[str, Any]:
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
                self._on_change("hit", op=op)
                return "held", entry
            pending = self._pending.get(key)
            if pending is not None:
                self._on_change("hit", op=op)  # coalesced: no encoder run of its own
                return "wait", pending
            pending = self._pending[key] = _Pending()
            self._on_change("miss", op=op)
            return "mine", pending

    def finish(self, key: str, entry: Entry | None, error: RequestError | None = None) -> None:
        """Store ``entry`` (evicting LRU entries to stay within budget) and wake the waiters."""
        with self._lock:
            pending = self._pending.pop(key)
            if entry is not None:
                if entry.nbytes > self.max_bytes:
                    error = RequestError(
                        f"one image's features take {entry.nbytes} bytes, more than the whole "
                        f"session store ({PARAM_CACHE_BYTES} = {self.max_bytes}); raise "
                        f"{PARAM_CACHE_BYTES} in sam2_session's config",
                        "INTERNAL",
                    )
                    entry = None
                else:
                    old = self._items.pop(key, None)
                    if old is not None:
                        self._nbytes -= old.nbytes
                    while self._items and self._nbytes + entry.nbytes > self.max_bytes:
                        _, evicted = self._items.popitem(last=False)
                        self._nbytes -= evicted.nbytes
                        self._on_change("evict")
                    self._items[key] = entry
                    self._nbytes += entry.nbytes
                    self._on_change("size", images=len(self._items), nbytes=self._nbytes)
            pending.entry, pending.error = entry, error
            pending.done.set()
