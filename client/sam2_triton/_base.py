"""What ``SAM2Client`` and ``AsyncSAM2Client`` share: their arguments, configuration, core."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from . import spec
from ._config import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_MAX_PROMPTS,
    DEFAULT_RETRY_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    ClientConfig,
    make_config,
)
from ._core import SAM2Core
from .types import CacheStats


def triton_module(protocol: str, aio: bool) -> ModuleType:
    if protocol == "grpc":
        if aio:
            import tritonclient.grpc.aio as mod
        else:
            import tritonclient.grpc as mod
    elif aio:
        import tritonclient.http.aio as mod
    else:
        import tritonclient.http as mod
    return mod


class ClientBase:
    """The constructor of both clients (arguments: see ``SAM2Client``); subclasses set
    ``_aio`` and connect lazily."""

    _aio = False

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        encoder_model: str = spec.ENCODER_MODEL,
        decoder_model: str = spec.DECODER_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        insecure: bool = False,
        headers: Mapping[str, str] | None = None,
        embedding_cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_prompts_per_request: int = DEFAULT_MAX_PROMPTS,
        use_shared_memory: bool = False,
        verbose: bool = False,
        retries: int = 0,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        use_sessions: bool | None = None,
        session_model: str = spec.SESSION_MODEL,
    ) -> None:
        self.config: ClientConfig = make_config(
            url,
            protocol,
            timeout_s=timeout_s,
            ssl=ssl,
            headers=headers,
            embedding_cache_bytes=embedding_cache_bytes,
            max_prompts_per_request=max_prompts_per_request,
            encoder_model=encoder_model,
            decoder_model=decoder_model,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            insecure=insecure,
            use_shared_memory=use_shared_memory,
            verbose=verbose,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            use_sessions=use_sessions,
            session_model=session_model,
        )
        self._mod = triton_module(self.config.protocol, aio=self._aio)
        self._core = SAM2Core(self.config, self._mod)
        self._setup()

    def _setup(self) -> None:
        """Per-transport state (connections are made on first use)."""

    def cache_stats(self) -> CacheStats:
        """Counters of the embedding cache."""
        return self._core.cache.stats()

    def clear_cache(self) -> None:
        """Empty the embedding cache."""
        self._core.cache.clear()

    def __repr__(self) -> str:
        c = self.config
        return f"{type(self).__name__}(url={c.url!r}, protocol={c.protocol!r})"
