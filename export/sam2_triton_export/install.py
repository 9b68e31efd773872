"""Install an export into a model repository without ever exposing a half-written model.

Everything is first written to a staging directory next to the repository (same filesystem)
and verified there. Installing is then a handful of ``os.replace`` calls, each atomic, done
with SIGINT/SIGTERM held back so that Ctrl-C cannot stop it half-way; the manifest goes
last. A crash or Ctrl-C before that point leaves the previous repository exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


OWNER_FILE = ".owner"  # "<hostname> <pid>" of the export writing into a staging directory


def _staging_prefix(repo: Path) -> str:
    return f".{repo.name}.staging-"


def _is_stale(path: Path) -> bool:
    """Whether ``path`` was left by an export on this host whose process is gone (SIGKILL, OOM
    kill, power loss: no ``finally`` ran). Unknown owners are never judged stale."""
    try:
        host, pid_text = (path / OWNER_FILE).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_staging(repository: str | os.PathLike[str]) -> list[Path]:
    """Delete the staging directories beside ``repository`` left by dead exports; returns them."""
    repo = Path(repository).resolve()
    removed = []
    for path in sorted(repo.parent.glob(_staging_prefix(repo) + "*")):
        if path.is_dir() and not path.is_symlink() and _is_stale(path):
            shutil.rmtree(path, ignore_errors=True)
            logger.warning("removed %s, left by an export that was killed", path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def staging_dir(repository: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh directory beside ``repository`` (not inside: Triton would see it as a model).

    Staging directories of earlier exports on this host that were killed are removed first.
    """
    repo = Path(repository).resolve()
    repo.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(repo)
    path = Path(tempfile.mkdtemp(prefix=_staging_prefix(repo), dir=repo.parent))
    try:
        (path / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM (main thread only) and re-raise them afterwards."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _frame: pending.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending:
            os.kill(os.getpid(), s)


@contextlib.contextmanager
def interrupts_noted() -> Iterator[list[int]]:
    """SIGINT/SIGTERM during an export raise KeyboardInterrupt as usual and are also noted in the
    yielded list: torch's exporter can swallow the exception (it passes through C++), so the
    caller checks the list before installing and an interrupted export never installs."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    seen: list[int] = []

    def interrupt(signum: int, _frame: object) -> None:
        seen.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


RETIRED_DIR = ".retired"  # inside the staging directory: models removed from the repository


def install(
    staged: Path,
    repository: str | os.PathLike[str],
    files: list[str],
    last: str,
    remove: Sequence[str] = (),
) -> None:
    """Move ``files`` (paths relative to ``staged``) into ``repository``, then ``last``.

    Each target is replaced atomically; existing files not listed are left alone, except the
    model directories and files named in ``remove`` (the video models of an earlier ``--video``
    export, which would not match the new weights): each is moved into ``staged`` with one
    ``os.replace`` (deleted with it) after ``files`` and before ``last``.
    """
    repo = Path(repository)
    for rel in [*files, last]:
        _fsync_file(staged / rel)
    with _signals_deferred():
        _install_files(staged, repo, files)
        for name in remove:
            target = repo / name
            if target.is_symlink() or not target.exists():
                continue
            (staged / RETIRED_DIR).mkdir(exist_ok=True)
            try:
                os.replace(target, staged / RETIRED_DIR / name)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            logger.warning("removed %s (not part of this export)", target)
        _install_files(staged, repo, [last])


def _install_files(staged: Path, repo: Path, files: list[str]) -> None:
    for rel in files:
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged / rel, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # staging on another filesystem: copy beside the target, then rename
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(staged / rel, tmp)
            _fsync_file(tmp)
            os.replace(tmp, target)
