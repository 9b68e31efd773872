"""Client options, validated once and turned into tritonclient constructor arguments."""

from __future__ import annotations

import logging
import ssl as ssl_lib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import spec
from .errors import InvalidInputError

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_PROMPTS = 64


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client is configured with (see ``SAM2Client`` for the meaning)."""

    url: str
    protocol: str
    encoder_model: str = spec.ENCODER_MODEL
    decoder_model: str = spec.DECODER_MODEL
    timeout_s: float = DEFAULT_TIMEOUT_S
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    insecure: bool = False
    headers: Mapping[str, str] | None = None
    embedding_cache_bytes: int = DEFAULT_CACHE_BYTES
    max_prompts_per_request: int = DEFAULT_MAX_PROMPTS
    use_shared_memory: bool = False
    verbose: bool = False


def make_config(
    url: str | None,
    protocol: str,
    *,
    timeout_s: float,
    ssl: bool,
    embedding_cache_bytes: int,
    max_prompts_per_request: int,
    headers: Mapping[str, str] | None,
    **rest: Any,
) -> ClientConfig:
    """Validate the options; ``url`` may carry a scheme (``https://``/``grpcs://`` imply ssl)."""
    protocol = str(protocol).lower()
    if protocol not in DEFAULT_PORTS:
        raise InvalidInputError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    url = url or f"localhost:{DEFAULT_PORTS[protocol]}"
    for scheme in ("https://", "grpcs://", "http://", "grpc://"):
        if url.startswith(scheme):
            ssl = ssl or scheme in ("https://", "grpcs://")
            url = url[len(scheme) :]
    url = url.rstrip("/")
    if not url:
        raise InvalidInputError("url is empty; expected host:port")
    if not timeout_s or timeout_s <= 0:
        raise InvalidInputError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
    if int(max_prompts_per_request) < 1:
        raise InvalidInputError(
            f"max_prompts_per_request must be >= 1, got {max_prompts_per_request!r}"
        )
    if int(embedding_cache_bytes) < 0:
        raise InvalidInputError(
            f"embedding_cache_bytes must be >= 0 (0 disables), got {embedding_cache_bytes!r}"
        )
    if headers is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in dict(headers).items()
    ):
        raise InvalidInputError("headers must map str to str")
    return ClientConfig(
        url=url,
        protocol=protocol,
        timeout_s=float(timeout_s),
        ssl=bool(ssl),
        embedding_cache_bytes=int(embedding_cache_bytes),
        max_prompts_per_request=int(max_prompts_per_request),
        headers=dict(headers) if headers else None,
        **rest,
    )


def _ssl_context(cfg: ClientConfig) -> ssl_lib.SSLContext:
    ctx = ssl_lib.create_default_context(cafile=cfg.root_certificates)
    if cfg.certificate_chain:
        ctx.load_cert_chain(cfg.certificate_chain, cfg.private_key)
    if cfg.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl_lib.CERT_NONE
    return ctx


def triton_client_kwargs(cfg: ClientConfig, aio: bool) -> dict[str, Any]:
    """Constructor arguments of the matching ``tritonclient`` ``InferenceServerClient``."""
    kwargs: dict[str, Any] = {"url": cfg.url, "verbose": cfg.verbose}
    if cfg.protocol == "grpc":
        if cfg.ssl:  # the sync and aio gRPC clients both take PEM file paths
            kwargs.update(
                ssl=True,
                root_certificates=cfg.root_certificates,
                private_key=cfg.private_key,
                certificate_chain=cfg.certificate_chain,
            )
        return kwargs
    if aio:
        kwargs["conn_timeout"] = cfg.timeout_s
        if cfg.ssl:
            kwargs.update(ssl=True, ssl_context=_ssl_context(cfg))
        return kwargs
    kwargs.update(connection_timeout=cfg.timeout_s, network_timeout=cfg.timeout_s, concurrency=1)
    if cfg.ssl:
        options = {
            "ca_certs": cfg.root_certificates,
            "certfile": cfg.certificate_chain,
            "keyfile": cfg.private_key,
        }
        kwargs.update(
            ssl=True,
            ssl_options={k: v for k, v in options.items() if v is not None},
            insecure=cfg.insecure,
        )
    return kwargs
