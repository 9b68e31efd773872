"""What the load test reads from ``/proc``: process trees, resident memory (``VmRSS``, ``Pss``),
listening sockets; the loopback check of target URLs; glibc's mmap threshold for this process."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path


def pin_malloc_threshold(threshold: int = 1 << 20) -> bool:
    """Make glibc serve every allocation above ``threshold`` bytes with its own ``mmap``.

    By default glibc raises that threshold (up to 32 MiB) after large blocks are freed, so the
    17 MB request and response buffers of many client threads end up in per-thread heaps that
    keep their pages: the load generator's RSS then measures allocator retention rather than
    live memory. Called by the load test for its own process; returns False where the C
    library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, int(threshold)))


def mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (e.g. tritonserver and its python-backend stubs)."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rss_bytes(pid: int) -> int | None:
    """``VmRSS`` of a process in bytes (None if it is gone or unreadable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (``Pss`` of ``/proc/<pid>/smaps_rollup``): resident memory with
    each shared page divided among the processes that map it, so that a sum over processes
    counts the python backend's shared-memory pool once."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _process_name(pid: int) -> str:
    """``tritonserver``, ``stub:<model>`` for a python-backend stub, else the command name."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    names = [a.decode(errors="replace") for a in args if a]
    for a in names[1:]:
        if a.endswith("model.py"):
            return f"stub:{Path(a).parent.parent.name}"
    return Path(names[0]).name if names else "?"


def memory_by_process(pids: Sequence[int]) -> dict[str, dict[str, float | None]]:
    """``{name: {"rss_mb", "pss_mb"}}`` for ``pids`` and their descendants."""
    out = {}
    for p in (q for root in pids for q in process_tree(root)):
        out[f"{_process_name(p)}[{p}]"] = {"rss_mb": mb(rss_bytes(p)), "pss_mb": mb(pss_bytes(p))}
    return out


def tree_memory(pids: Sequence[int]) -> tuple[int | None, int | None]:
    """``(sum of VmRSS, sum of Pss)`` over ``pids`` and their descendants (None if unreadable)."""
    procs = [p for root in pids for p in process_tree(root)]
    out = []
    for read in (rss_bytes, pss_bytes):
        known = [v for v in map(read, procs) if v is not None]
        out.append(sum(known) if known else None)
    return out[0], out[1]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def listening_sockets(pids: Sequence[int] | None = None) -> list[tuple[str, int, str]]:
    """``(address, port, inode)`` of every TCP socket in LISTEN state (``/proc/net/tcp{,6}``),
    restricted to sockets owned by ``pids`` when given. IPv4-mapped IPv6 addresses are given
    in their IPv4 form."""
    owned = set().union(*(_socket_inodes(p) for p in pids)) if pids is not None else None
    out = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = cols[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addr = socket.inet_ntop(family, raw)
            mapped = ipaddress.ip_address(addr)
            if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped:
                addr = str(mapped.ipv4_mapped)  # gRPC's dual-stack socket on ::ffff:127.0.0.1
            if owned is None or cols[9] in owned:
                out.append((addr, int(port_hex, 16), cols[9]))
    return out


def listening_pids(port: int) -> list[int]:
    """Processes of this user that listen on TCP ``port`` (any address)."""
    inodes = {inode for _, p, inode in listening_sockets() if p == port}
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and inodes & _socket_inodes(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def check_loopback(url: str) -> str:
    """Return ``url`` (``[scheme://]host:port``) if its host resolves only to loopback
    addresses; raise ValueError otherwise."""
    host, sep, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {url!r}")
    host = host.strip("[]")
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from exc
    remote = [a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if remote:
        raise ValueError(
            f"the load test only targets loopback servers; {host!r} resolves to {sorted(remote)}"
        )
    return url
