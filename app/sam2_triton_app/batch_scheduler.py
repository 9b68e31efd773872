"""The images in flight of ``sam2-triton batch``: at most ``--max-in-flight`` at once in
worker threads, over one ``SAM2Client`` per server URL (the least busy server first), journaled
by the scheduling thread only as each finishes, with a progress bar and the stop rule for
servers that do not answer."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from sam2_triton import SAM2Client
from sam2_triton.errors import SAM2TritonError
from sam2_triton.text import LangSAM

from .batch_inputs import Task
from .batch_journal import Journal
from .batch_worker import Options, Outcome, segment_task

COOLDOWN_S = 10.0  # a server that just failed gets new images only when the others are busier
READY_TIMEOUT_S = 15.0  # at start, how long each server may take to be ready


# --- servers -----------------------------------------------------------------------------------------
class Servers:
    """One client per URL; picks the URL with the fewest images in flight (one that failed
    recently only when all others are busier). Used from the scheduling thread only."""

    def __init__(self, urls: list[str], args: argparse.Namespace) -> None:
        self.urls = urls
        self.protocol = args.protocol
        self.clients = {
            u: SAM2Client(
                u,
                args.protocol,
                timeout_s=args.timeout,
                retries=args.retries,
                retry_backoff_s=args.retry_backoff,
                embedding_cache_bytes=0,  # each image is used once: caching only costs memory
            )
            for u in urls
        }
        self.text = getattr(args, "text", None) is not None  # also wait for sam2_text
        self.in_flight = dict.fromkeys(urls, 0)
        self.sent = dict.fromkeys(urls, 0)
        self.cool_until = dict.fromkeys(urls, 0.0)
        self._turn = 0

    def pick(self, tried: Iterable[str] = ()) -> str:
        fresh = [u for u in self.urls if u not in set(tried)] or self.urls
        self._turn += 1
        order = fresh[self._turn % len(fresh) :] + fresh[: self._turn % len(fresh)]
        now = time.monotonic()
        url = min(order, key=lambda u: (self.cool_until[u] > now, self.in_flight[u]))
        self.in_flight[url] += 1
        self.sent[url] += 1
        return url

    def release(self, url: str, failed: bool) -> None:
        self.in_flight[url] -= 1
        if failed:
            self.cool_until[url] = time.monotonic() + COOLDOWN_S

    def check(self) -> None:
        """Drop servers that are not ready; raise ServersDown when none is."""
        down = {}
        for url, client in self.clients.items():
            try:
                if self.text:
                    with LangSAM(client) as model:
                        model.wait_until_ready(READY_TIMEOUT_S)
                else:
                    client.wait_until_ready(READY_TIMEOUT_S)
            except SAM2TritonError as exc:
                down[url] = f"{type(exc).__name__}: {exc}"
        if len(down) == len(self.urls):
            raise ServersDown(
                "no server is ready: " + "; ".join(f"{u}: {m}" for u, m in down.items())
            )
        for url, why in down.items():
            print(f"warning: skipping {url}, not ready ({why})", file=sys.stderr)
            self.urls.remove(url)
            self.clients.pop(url).close()

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


class ServersDown(Exception):
    """No server answered for ``--max-server-failures`` images in a row."""


# --- the run -----------------------------------------------------------------------------------------
def _progress(total: int, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        dynamic_ncols=True,
        disable=True if disable else None,  # None: only on a terminal
        desc="segmenting",
    )


class Scheduler:
    """Keeps up to ``max_in_flight`` images in flight and journals each as it finishes."""

    def __init__(
        self, servers: Servers, journal: Journal, options: Options, args: argparse.Namespace
    ) -> None:
        self.servers, self.journal, self.options = servers, journal, options
        self.max_in_flight = args.max_in_flight
        self.max_server_failures = args.max_server_failures
        self.pool = cf.ThreadPoolExecutor(args.max_in_flight, thread_name_prefix="sam2-batch")
        self.pending: dict[cf.Future[Outcome], tuple[Task, str, tuple[str, ...]]] = {}
        self.keys: set[str] = set()  # in flight now
        self.in_a_row = 0
        self.finished = 0
        self.no_progress = args.no_progress
        self.bar: Any = None

    def _submit(self, task: Task, tried: tuple[str, ...] = ()) -> None:
        url = self.servers.pick(tried)
        client = self.servers.clients[url]
        fut = self.pool.submit(
            segment_task, task, client, url, self.options
        )  # fmt: skip
        self.pending[fut] = (task, url, (*tried, url))
        self.keys.add(task.key)

    def _collect(self, block: bool) -> None:
        if not self.pending:
            return
        done, _ = cf.wait(
            self.pending, timeout=None if block else 0, return_when=cf.FIRST_COMPLETED
        )
        for fut in done:
            task, url, tried = self.pending.pop(fut)
            outcome = fut.result()  # OSError (PNG on a full disk) stops the run
            self.servers.release(url, outcome.server_fault)
            if outcome.server_fault:
                self.in_a_row += 1
                if len(tried) < len(self.servers.urls):  # another server may answer
                    self._submit(task, tried)
                    continue
            else:
                self.in_a_row = 0
            self.keys.discard(task.key)
            self.journal.append(task.key, outcome.status, outcome.payload())
            self.finished += 1
            self.bar.update(1)
            if outcome.status != "ok":
                self.bar.write(
                    f"{task.file_name}: {outcome.error}: {outcome.message}", file=sys.stderr
                )
            if self.in_a_row >= self.max_server_failures:
                raise ServersDown(
                    f"{self.in_a_row} images in a row failed because no server answered "
                    f"(last: {outcome.error}: {outcome.message})"
                )

    def run(self, tasks: Iterator[Task], todo: int) -> None:
        self.bar = _progress(todo, self.no_progress)
        try:
            for task in tasks:
                if self.journal.done(task.key) or task.key in self.keys:
                    continue
                while len(self.pending) >= self.max_in_flight:
                    self._collect(block=True)
                self._submit(task)
                self._collect(block=False)
            while self.pending:
                self._collect(block=True)
        finally:
            self.bar.close()

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
