"""Typed errors of the local Triton launcher; all derive from ``sam2_triton.SAM2TritonError``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sam2_triton.errors import SAM2TritonError


class LauncherError(SAM2TritonError):
    """The local tritonserver could not be prepared, started or kept running."""


class TritonNotFoundError(LauncherError, FileNotFoundError):
    """The tritonserver binary, its libraries or the python-backend stub are not installed."""


class PortInUseError(LauncherError, OSError):
    """A port the server needs is already taken by another process."""

    def __init__(self, message: str, *, address: str, port: int) -> None:
        super().__init__(message)
        self.address = address
        self.port = port


class ModelsNotExportedError(LauncherError, FileNotFoundError):
    """The model repository lacks exported ONNX files; ``missing`` lists them."""

    def __init__(self, message: str, *, missing: Sequence[Path]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class ServerStartError(LauncherError):
    """The server exited or failed while starting; ``reasons`` are Triton's own error lines."""

    def __init__(
        self,
        message: str,
        *,
        reasons: Sequence[str] = (),
        log_path: Path | None = None,
        returncode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reasons = tuple(reasons)
        self.log_path = log_path
        self.returncode = returncode


class ModelLoadError(ServerStartError):
    """One or more models failed to load; ``failures`` maps model name to Triton's reason."""

    def __init__(self, message: str, *, failures: dict[str, str], **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.failures = dict(failures)


class ServerStartTimeoutError(ServerStartError, TimeoutError):
    """The server did not become ready within the start timeout."""
