"""Typed errors of the export step; ``ExportError`` is the base of all of them."""


class ExportError(Exception):
    """The export could not be completed; nothing was installed into the repository."""


class CheckpointError(ExportError):
    """The checkpoint is missing, truncated, not a checkpoint, or for another model."""


class DownloadError(ExportError):
    """Downloading a checkpoint failed or its sha256 did not match the published value."""


class ParityError(ExportError):
    """The exported ONNX models disagree with PyTorch beyond the tolerance."""
