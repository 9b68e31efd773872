"""System shared memory for the features mode: one region per embedding, reused by its clicks.

``FeatureRegion`` holds one embedding's three feature tensors in a POSIX shared-memory segment.
``RegionRegistry`` remembers which embedding owns which registered region, so every click on
an image reuses the region its first click registered. A region is released (unregistered on
the server, then unlinked) when its embedding is garbage-collected, when more than
``max_regions`` are live (least recently used first), or when the client closes. Releasing
needs a server call, so the registry only queues released regions; the next flow (or
``close``) unregisters them.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from . import spec

#: Regions a client keeps registered at once (16.8 MB of /dev/shm each in FP32).
DEFAULT_MAX_REGIONS = 4


class FeatureRegion:
    """A system shared-memory region holding one embedding's three feature tensors (and the
    decoder's all-zero "no mask" input).

    Created and filled locally; the caller registers ``name``/``key``/``byte_size`` with the
    server and passes ``inputs(mod)`` to the decoder; ``destroy()`` unlinks it (idempotent).
    """

    def __init__(self, features: Mapping[str, np.ndarray]) -> None:
        import tritonclient.utils.shared_memory as shm  # local: needs a POSIX host

        self._shm = shm
        self.name = f"sam2_triton_{os.getpid()}_{uuid.uuid4().hex[:16]}"
        self.key = "/" + self.name
        arrays = [np.ascontiguousarray(features[n]) for n in spec.FEATURE_NAMES]
        self.dtype = arrays[0].dtype
        self.offsets: dict[str, tuple[int, int, tuple[int, ...], np.dtype]] = {}
        offset = 0
        for n, a in zip(spec.FEATURE_NAMES, arrays):
            self.offsets[n] = (offset, a.nbytes, a.shape, a.dtype)
            offset += a.nbytes
        # and the decoder's all-zero "no mask" input, so that clicks need not send it
        no_mask = np.zeros((1, 1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE), np.float32)
        self._no_mask = (offset, no_mask.nbytes, no_mask.shape, no_mask.dtype)
        arrays.append(no_mask)
        offset += no_mask.nbytes
        self.byte_size = offset
        self._handle = shm.create_shared_memory_region(
            self.name, self.key, offset, create_only=True
        )
        try:
            shm.set_shared_memory_region(self._handle, arrays)
        except BaseException:
            self.destroy()
            raise

    def inputs(self, mod: ModuleType) -> list[Any]:
        """The decoder's three feature inputs, pointing into this region."""
        out = []
        for n, (offset, nbytes, shape, dtype) in self.offsets.items():
            inp = mod.InferInput(n, list(shape), np_to_triton_dtype(dtype))
            inp.set_shared_memory(self.name, nbytes, offset)
            out.append(inp)
        return out

    def no_mask_input(self, mod: ModuleType) -> Any:
        """The decoder's ``mask_input`` [1, 1, 256, 256] of zeros, in this region."""
        offset, nbytes, shape, dtype = self._no_mask
        inp = mod.InferInput(spec.MASK_INPUT, list(shape), np_to_triton_dtype(dtype))
        inp.set_shared_memory(self.name, nbytes, offset)
        return inp

    def destroy(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._shm.destroy_shared_memory_region(handle)


@dataclass
class _Entry:
    ref: weakref.ref
    region: FeatureRegion
    finalizer: weakref.finalize


class RegionRegistry:
    """Registered regions of one client, by embedding (thread-safe; see the module docstring)."""

    def __init__(self, max_regions: int = DEFAULT_MAX_REGIONS) -> None:
        self.max_regions = max(1, int(max_regions))
        self._live: OrderedDict[int, _Entry] = OrderedDict()
        self._released: list[FeatureRegion] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._live)

    def lookup(self, embedding: object, dtype: np.dtype) -> FeatureRegion | None:
        """The registered region of ``embedding`` holding features of ``dtype``, or None."""
        with self._lock:
            entry = self._live.get(id(embedding))
            if entry is None or entry.ref() is not embedding:
                return None
            if entry.region.dtype != dtype:  # the decoder's dtype changed: register anew
                self._release_locked(id(embedding))
                return None
            self._live.move_to_end(id(embedding))
            return entry.region

    def add(self, embedding: object, region: FeatureRegion) -> None:
        """Record ``region`` (registered) as ``embedding``'s; evict beyond ``max_regions``."""
        key = id(embedding)
        finalizer = weakref.finalize(embedding, self._collected, key)
        finalizer.atexit = False
        with self._lock:
            self._release_locked(key)
            self._live[key] = _Entry(weakref.ref(embedding), region, finalizer)
            while len(self._live) > self.max_regions:
                self._release_locked(next(iter(self._live)))

    def drop(self, embedding: object, region: FeatureRegion) -> None:
        """Forget ``region`` (e.g. the server no longer knows it) and queue it for release."""
        with self._lock:
            entry = self._live.get(id(embedding))
            if entry is not None and entry.region is region:
                self._release_locked(id(embedding))
            elif region not in self._released:
                self._released.append(region)

    def take_released(self) -> list[FeatureRegion]:
        """Regions to unregister on the server and destroy (the caller does both)."""
        with self._lock:
            out, self._released = self._released, []
            return out

    def release_all(self) -> list[FeatureRegion]:
        """Every region, live or queued, for ``close``."""
        with self._lock:
            for key in list(self._live):
                self._release_locked(key)
            out, self._released = self._released, []
            return out

    def _collected(self, key: int) -> None:
        with self._lock:
            entry = self._live.get(key)
            if entry is not None and entry.ref() is None:
                self._release_locked(key)

    def _release_locked(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            entry.finalizer.detach()
            self._released.append(entry.region)
