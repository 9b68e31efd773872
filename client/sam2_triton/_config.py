"""Client options, validated once and turned into tritonclient constructor arguments."""

from __future__ import annotations

import logging
import math
import numbers
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
DEFAULT_MAX_PROMPTS = spec.MAX_PROMPTS_PER_REQUEST
DEFAULT_RETRY_BACKOFF_S = 0.25
MAX_RETRY_BACKOFF_S = 10.0  # the doubling backoff stops growing here


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
    retries: int = 0
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    use_sessions: bool | None = None
    session_model: str = spec.SESSION_MODEL


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
    if not 1 <= int(max_prompts_per_request) <= spec.MAX_PROMPTS_PER_REQUEST:
        raise InvalidInputError(
            f"max_prompts_per_request must be 1 to {spec.MAX_PROMPTS_PER_REQUEST} (the largest "
            f"decoder call a deployment accepts), got {max_prompts_per_request!r}"
        )
    if int(embedding_cache_bytes) < 0:
        raise InvalidInputError(
            f"embedding_cache_bytes must be >= 0 (0 disables), got {embedding_cache_bytes!r}"
        )
    if headers is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in dict(headers).items()
    ):
        raise InvalidInputError("headers must map str to str")
    use_sessions = rest.get("use_sessions")
    if not (use_sessions is None or isinstance(use_sessions, bool)):
        raise InvalidInputError(
            f"use_sessions must be None (automatic), True or False, got {use_sessions!r}"
        )
    retries = rest.pop("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
        raise InvalidInputError(f"retries must be an int >= 0 (0 = no retries), got {retries!r}")
    backoff = rest.pop("retry_backoff_s", DEFAULT_RETRY_BACKOFF_S)
    if (
        isinstance(backoff, bool)
        or not isinstance(backoff, numbers.Real)
        or not math.isfinite(backoff)
        or backoff < 0
    ):
        raise InvalidInputError(
            f"retry_backoff_s must be a finite number of seconds >= 0, got {backoff!r}"
        )
    return ClientConfig(
        url=url,
        protocol=protocol,
        timeout_s=float(timeout_s),
        ssl=bool(ssl),
        embedding_cache_bytes=int(embedding_cache_bytes),
        max_prompts_per_request=int(max_prompts_per_request),
        headers=dict(headers) if headers else None,
        retries=int(retries),
        retry_backoff_s=float(backoff),
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


# gRPC channels retry a lost connection with exponential backoff up to 120 s by default: after a
# server restart that followed a 45 s outage, a client measured 22 s of further failures before
# it reconnected. Capped, it reconnects within about GRPC_MAX_RECONNECT_BACKOFF_MS.
GRPC_INITIAL_RECONNECT_BACKOFF_MS = 250
GRPC_MAX_RECONNECT_BACKOFF_MS = 2000


def grpc_channel_args() -> list[tuple[str, Any]]:
    """tritonclient's own default channel options plus a capped reconnect backoff."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", GRPC_INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", GRPC_MAX_RECONNECT_BACKOFF_MS),
    ]


def triton_client_kwargs(cfg: ClientConfig, aio: bool) -> dict[str, Any]:
    """Constructor arguments of the matching ``tritonclient`` ``InferenceServerClient``."""
    kwargs: dict[str, Any] = {"url": cfg.url, "verbose": cfg.verbose}
    if cfg.protocol == "grpc":
        kwargs["channel_args"] = grpc_channel_args()
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
