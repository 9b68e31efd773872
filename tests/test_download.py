"""Checkpoint download: sha256 verification, no partial file that looks complete, resume."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sam2_triton_export.checkpoints import download_file
from sam2_triton_export.errors import DownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    cut_after: int | None = None  # drop the connection after this many bytes
    ranges_seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        start = 0
        if rng := self.headers.get("Range"):
            type(self).ranges_seen.append(rng)
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"cut_after": None, "ranges_seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/ckpt.pt", handler
    httpd.shutdown()


def test_download_verifies_and_reports_progress(server, tmp_path: Path) -> None:
    url, _ = server
    seen: list[int] = []
    path = download_file(url, tmp_path / "ckpt.pt", SHA, len(PAYLOAD), lambda d, t: seen.append(d))
    assert path.read_bytes() == PAYLOAD and seen[-1] == len(PAYLOAD)
    assert not (tmp_path / "ckpt.pt.part").exists()


def test_wrong_sha256_leaves_no_file(server, tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(DownloadError, match="does not match the published"):
        download_file(url, tmp_path / "ckpt.pt", "0" * 64, len(PAYLOAD))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_range(server, tmp_path: Path) -> None:
    url, handler = server
    handler.cut_after = 300_000
    with pytest.raises(DownloadError, match="run the command again to resume"):
        download_file(url, tmp_path / "ckpt.pt", SHA, len(PAYLOAD))
    assert not (tmp_path / "ckpt.pt").exists()  # never a partial file under the final name
    assert (tmp_path / "ckpt.pt.part").stat().st_size == 300_000
    handler.cut_after = None
    path = download_file(url, tmp_path / "ckpt.pt", SHA, len(PAYLOAD))
    assert path.read_bytes() == PAYLOAD
    assert handler.ranges_seen == ["bytes=300000-"]


def test_existing_corrupt_file_is_not_trusted(server, tmp_path: Path) -> None:
    url, _ = server
    (tmp_path / "ckpt.pt").write_bytes(b"garbage")
    with pytest.raises(DownloadError, match="exists but its sha256"):
        download_file(url, tmp_path / "ckpt.pt", SHA, len(PAYLOAD))


def test_unreachable_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="failed after 0 of"):
        download_file("http://127.0.0.1:9/none", tmp_path / "x.pt", SHA, len(PAYLOAD))
