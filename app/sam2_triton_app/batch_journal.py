"""The journal of a ``sam2-triton batch`` run and the atomic assembly of its output files.

The journal is JSON Lines next to the output (``<output>.journal``): a header line with the
run's settings, then one line per finished image, appended with one ``write`` and ``fsync``
before the image counts as done. A line cut short by a kill (the only place one can be torn is
the end) is dropped on the next start and that image is segmented again. Only the index
``key -> (offset, status)`` is held in memory; records are read back from the file when the
output is assembled.

Output files are written to a temporary file in the same folder, flushed, fsynced and moved
over the target with ``os.replace``: a reader sees the previous complete file or the new one,
never a part.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .batch_inputs import BatchInputError, Task

FORMAT = "sam2-triton-batch-journal/1"
DONE = ("ok", "failed")  # statuses a resumed run skips; "retry" is segmented again


class JournalMismatchError(BatchInputError):
    """The journal was written by a run with other settings."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
    )


class Journal:
    """An append-only record of finished images; see the module docstring."""

    def __init__(self, path: Path, settings: dict[str, Any], *, restart: bool = False) -> None:
        """Open (resume) or create the journal at ``path`` for a run with ``settings``.

        Raises JournalMismatchError when an existing journal holds other settings (unless
        ``restart``, which discards it), BatchInputError when another run holds it.
        """
        self.path = path
        self.settings = json.loads(_dumps(settings))  # JSON-native, as it reads back
        self.index: dict[str, tuple[int, str]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise BatchInputError(
                f"another sam2-triton batch is running with the journal {path}; wait for it or "
                "choose another --output"
            ) from None
        try:
            if restart:
                os.ftruncate(self._fd, 0)
            self.resumed = self._load()
            if not self.resumed:
                self._start()
        except BaseException:
            os.close(self._fd)
            raise
        self._reader = open(path, "rb")  # noqa: SIM115 - closed by close()

    def _start(self) -> None:
        os.ftruncate(self._fd, 0)
        self._write((_dumps({"format": FORMAT, "settings": self.settings}) + "\n").encode())
        _fsync_dir(self.path.parent)

    def _load(self) -> bool:
        """Index an existing journal; False when there is none (empty, or a torn header)."""
        with open(self.path, "rb") as fp:
            header = fp.readline()
            if not header.endswith(b"\n"):
                return False  # empty, or killed while writing the header: nothing was done
            try:
                head = json.loads(header)
            except ValueError:
                head = None
            if not isinstance(head, dict) or head.get("format") != FORMAT:
                raise BatchInputError(
                    f"{self.path} is not a sam2-triton batch journal; move it away or choose "
                    "another --output"
                )
            if head.get("settings") != self.settings:
                raise JournalMismatchError(
                    f"{self.path} belongs to a run with other arguments "
                    f"({_diff(head.get('settings') or {}, self.settings)}). Resume with the "
                    "original arguments, pass --restart to discard that run's results, or "
                    "choose another --output"
                )
            offset = len(header)
            good_end = offset
            for line in fp:
                if line.endswith(b"\n"):
                    try:
                        entry = json.loads(line)
                        self.index[entry["key"]] = (offset, entry["status"])
                        good_end = offset + len(line)
                    except (ValueError, KeyError, TypeError):
                        pass  # a damaged line in the middle: that image is segmented again
                offset += len(line)
        if good_end < offset:  # a torn last line (killed mid-write): cut it off
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
        return True

    def _write(self, data: bytes) -> int:
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        return offset

    # --- use -------------------------------------------------------------------------------------
    def done(self, key: str) -> bool:
        """True when ``key`` finished (segmented, or failed for good) in this or an earlier run."""
        entry = self.index.get(key)
        return entry is not None and entry[1] in DONE

    @property
    def done_count(self) -> int:
        return sum(1 for _, status in self.index.values() if status in DONE)

    def append(self, key: str, status: str, payload: dict[str, Any]) -> None:
        """Record one finished image durably (written and fsynced before returning)."""
        line = json.dumps({"key": key, "status": status, **payload}, separators=(",", ":"))
        line += "\n"
        self.index[key] = (self._write(line.encode()), status)

    def get(self, key: str) -> dict[str, Any] | None:
        """The last entry recorded for ``key``, read back from the file."""
        entry = self.index.get(key)
        if entry is None:
            return None
        self._reader.seek(entry[0])
        return json.loads(self._reader.readline())

    def close(self) -> None:
        self._reader.close()
        os.close(self._fd)  # releases the lock


# --- output ---------------------------------------------------------------------------------------
def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temps(path: Path) -> None:
    """Temporary files a killed run left next to ``path`` (the journal lock says none is live)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write ``path`` all at once: a temporary file moved over it when the block succeeds,
    removed when it fails."""
    tmp = temp_name(path)
    fp = open(tmp, mode)  # noqa: SIM115 - closed below on every path
    try:
        yield fp
        fp.flush()
        os.fsync(fp.fileno())
        fp.close()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        fp.close()
        tmp.unlink(missing_ok=True)
        raise


class _JsonList:
    """Streams a JSON list, one element per line."""

    def __init__(self, fp: IO[str]) -> None:
        self.fp, self.count = fp, 0
        fp.write("[")

    def add(self, item: dict[str, Any]) -> None:
        self.fp.write(("\n" if self.count == 0 else ",\n") + json.dumps(item))
        self.count += 1

    def end(self) -> None:
        self.fp.write("\n]\n" if self.count else "]\n")


@dataclass
class Summary:
    images: int = 0
    records: int = 0
    failed: int = 0
    retry: int = 0
    missing: int = 0


def assemble(journal: Journal, tasks: Iterable[Task], results: Path, failures: Path) -> Summary:
    """Write the COCO results JSON and the failures JSON from the journal, in input order."""
    summary = Summary()
    with atomic_writer(results) as out, atomic_writer(failures) as bad:
        records, errors = _JsonList(out), _JsonList(bad)
        for task in tasks:
            entry = journal.get(task.key)
            if entry is None:
                summary.missing += 1
                continue
            if entry["status"] == "ok":
                summary.images += 1
                for record in entry["records"]:
                    records.add(record)
                    summary.records += 1
            else:
                summary.failed += entry["status"] == "failed"
                summary.retry += entry["status"] == "retry"
                errors.add(
                    {
                        "image": task.file_name,
                        "image_id": task.image_id,
                        "error": entry["error"],
                        "message": entry["message"],
                        "retryable": entry["status"] == "retry",
                    }
                )
        records.end()
        errors.end()
    return summary
