"""``sam2-triton batch`` against the REAL local tritonserver: kill and resume, failure records,
refused argument changes, two servers, atomic output.

Runtime is bounded by the CPU encoder (seconds per image): the pictures of this module are
encoded once per server; later runs over the same pictures are answered from the server's
session store (an image id the server holds is not encoded again), so they are fast.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc
from PIL import Image

import sam2_triton
from sam2_triton_app import cli
from sam2_triton_app.batch_inputs import Task
from sam2_triton_app.batch_journal import Journal, JournalMismatchError, assemble
from sam2_triton_bench.everything_bench import LOWERED
from sam2_triton_export.verify import synthetic_image

pytestmark = pytest.mark.triton

N_IMAGES = 4


def batch(
    *argv: str | Path, wait: bool = True, **kwargs
) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "sam2_triton_app.cli", "batch", "--no-progress", *map(str, argv)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


def done_entries(journal: Path) -> int:
    if not journal.exists():
        return 0
    lines = journal.read_bytes().split(b"\n")[1:]
    return sum(1 for line in lines if line.startswith(b'{"key"'))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """Four small pictures (seeds no other test uses) and a JSON Lines manifest: boxes, clicks,
    several objects per line, category ids and scores."""
    folder = tmp_path_factory.mktemp("batch_pictures")
    lines = []
    for i in range(N_IMAGES):
        h, w = 64 + 16 * i, 96
        Image.fromarray(synthetic_image(h, w, 9100 + i)).save(folder / f"p{i}.png")
        if i % 2:
            lines.append({"image": f"p{i}.png", "points": [[30, 20]], "labels": [1]})
        else:
            lines.append(
                {
                    "image": f"p{i}.png",
                    "objects": [
                        {"box": [10, 10, 60, 50], "category_id": 3, "score": 0.9},
                        {"points": [[70, 40], [20, 20]], "labels": [1, 0]},
                    ],
                }
            )
    (folder / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def session_requests(url: str) -> int:
    """Requests the server's session model has answered (Triton's statistics extension)."""
    with tritonclient.grpc.InferenceServerClient(url) as triton:
        stats = triton.get_inference_statistics(as_json=True)["model_stats"]
    inf = next(s for s in stats if s["name"] == sam2_triton.spec.SESSION_MODEL)["inference_stats"]
    return sum(int(inf.get(k, {}).get("count", 0)) for k in ("success", "fail"))


# --- (a) + (e): SIGKILL mid-run, resume == uninterrupted; nothing half-written -------------------
def test_kill_then_resume_equals_an_uninterrupted_run(triton_server, pictures, tmp_path):
    manifest = pictures / "manifest.jsonl"
    out = tmp_path / "killed" / "results.json"
    journal = out.with_name("results.json.journal")
    args = (manifest, "-o", out, "--url", triton_server.grpc_url, "--max-in-flight", "2")
    args += ("--png-dir", tmp_path / "killed" / "png")
    proc = batch(*args, wait=False)
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a timed assertion
        while done_entries(journal) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + str(
            proc.communicate()
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = done_entries(journal)
    assert 2 <= done_before < N_IMAGES
    assert not out.exists()  # the results only appear, complete, at the end
    assert not list(out.parent.glob(".results*tmp*"))
    with journal.open("ab") as fp:  # as if killed in the middle of writing a line
        fp.write(b'{"key":"0123456789","status":"ok","reco')

    resumed = batch(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{done_before} of {N_IMAGES} images already done" in resumed.stdout
    assert f"{N_IMAGES - done_before} images this run" in resumed.stdout

    clean_out = tmp_path / "clean" / "results.json"
    clean = batch(manifest, "-o", clean_out, "--url", triton_server.grpc_url)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    got, want = json.loads(out.read_text()), json.loads(clean_out.read_text())
    assert got == want
    assert [r["image_id"] for r in got] == [1, 1, 2, 3, 3, 4]  # input order
    assert [r["category_id"] for r in got[:2]] == [3, 1] and got[0]["score"] == 0.9
    rle = got[0]["segmentation"]
    assert rle["size"] == [64, 96] and isinstance(rle["counts"], str)
    assert json.loads(out.with_name("results.failures.json").read_text()) == []
    pngs = sorted(p.name for p in (tmp_path / "killed" / "png").iterdir())
    assert pngs == [f"{i}.png" for i in range(1, N_IMAGES + 1)]

    again = batch(*args)  # everything done: nothing is sent, the same output is written again
    assert again.returncode == 0 and "0 images this run" in again.stdout
    assert json.loads(out.read_text()) == want


# --- (b): failures become records, the run goes on ----------------------------------------------
def test_corrupt_image_and_invalid_prompts_become_failure_records(
    triton_server, pictures, tmp_path
):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    good = str(pictures / "p1.png")
    lines = [
        {"image": good, "points": [[30, 20]], "labels": [1]},
        {"image": str(tmp_path / "corrupt.png"), "box": [1, 1, 10, 10]},
        {"image": good, "box": [0, 0, 500, 500]},  # outside the 96x80 picture
        {"image": good, "points": [[30, 20]], "labels": [5]},
        {"image": good, "pionts": [[30, 20]]},  # a typo
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{not json\n")
    out = tmp_path / "r.json"
    proc = batch(manifest, "-o", out, "--url", triton_server.grpc_url)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # finished, with failures
    assert "Traceback" not in proc.stderr
    records = json.loads(out.read_text())
    assert [r["image_id"] for r in records] == [1]
    failures = json.loads((tmp_path / "r.failures.json").read_text())
    assert [(f["image_id"], f["error"]) for f in failures] == [
        (2, "InvalidImageError"),
        (3, "InvalidPromptError"),
        (4, "InvalidPromptError"),
        (5, "ManifestError"),
        (6, "ManifestError"),
    ]
    assert "outside the 96x80" in failures[1]["message"]
    assert "labels must be 1" in failures[2]["message"]
    assert "unknown key(s) ['pionts']" in failures[3]["message"]
    assert not any(f["retryable"] for f in failures)
    rerun = batch(manifest, "-o", out, "--url", triton_server.grpc_url)  # failed for good:
    assert "6 of 6 images already done" in rerun.stdout  # not tried again


# --- (c): a resume with other arguments is refused -------------------------------------------------
def test_resume_with_changed_arguments_is_refused(triton_server, pictures, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(pictures / "p3.png"), "box": [5, 5, 50, 40]}))
    out = tmp_path / "r.json"
    common = (manifest, "-o", out, "--url", triton_server.grpc_url)
    first = batch(*common, "--category-id", "7")
    assert first.returncode == 0, first.stdout + first.stderr
    before = out.read_bytes()
    changed = batch(*common, "--category-id", "8")
    assert changed.returncode == 2
    assert "other arguments" in changed.stderr and "category_id: 7 -> 8" in changed.stderr
    assert "--restart" in changed.stderr and "Traceback" not in changed.stderr
    assert out.read_bytes() == before
    restarted = batch(*common, "--category-id", "8", "--restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert [r["category_id"] for r in json.loads(out.read_text())] == [8]
    bad = batch(tmp_path / "nothing-here", "-o", tmp_path / "x.json")
    assert bad.returncode == 2 and "does not exist" in bad.stderr


# --- (d): two servers both get work ------------------------------------------------------------------
def test_two_servers_share_the_work(triton_server, exported_repo, pictures, tmp_path):
    from sam2_triton_serve.launcher import LocalTritonServer

    with LocalTritonServer(exported_repo, http_port=0, grpc_port=0, metrics_port=0) as second:
        urls = (triton_server.grpc_url, second.grpc_url)
        before = [session_requests(u) for u in urls]
        out = tmp_path / "r.json"
        proc = batch(pictures / "manifest.jsonl", "-o", out, "--url", urls[0], "--url", urls[1],
                     "--max-in-flight", "2")  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        after = [session_requests(u) for u in urls]
    assert all(a > b for a, b in zip(after, before)), (before, after)
    sent = proc.stdout.split("per server: ")[1].splitlines()[0]
    counts = [int(part.rsplit(" ", 1)[1]) for part in sent.split(", ")]
    assert sum(counts) == N_IMAGES and min(counts) >= 1
    assert len(json.loads(out.read_text())) == 6


# --- servers that do not answer -------------------------------------------------------------------
def test_a_server_that_is_down_is_skipped_and_none_up_stops_clearly(
    triton_server, pictures, tmp_path, monkeypatch, capsys
):
    from sam2_triton_app import batch_scheduler
    from sam2_triton_serve.launcher import find_free_ports

    monkeypatch.setattr(batch_scheduler, "READY_TIMEOUT_S", 1.0)
    dead = f"127.0.0.1:{find_free_ports(1)[0]}"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(pictures / "p1.png"), "box": [5, 5, 50, 40]}))
    out = tmp_path / "r.json"
    argv = ["batch", str(manifest), "-o", str(out), "--no-progress", "--url", dead]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert "no server is ready" in err and dead in err and "run the same command" in err
    assert not out.exists()
    assert cli.main([*argv, "--url", triton_server.grpc_url]) == 0
    assert f"skipping {dead}" in capsys.readouterr().err
    assert len(json.loads(out.read_text())) == 1


# --- segment everything: images without prompts -------------------------------------------------
# random weights keep no mask at SAM 2's default thresholds (tests/test_everything.py)
EVERYTHING = {"points_per_side": 4, **LOWERED}


def test_images_without_prompts_are_segmented_everything(triton_server, pictures, tmp_path):
    """A prompt-less image gets SAM 2's automatic masks: the SDK generator's records."""
    from sam2_triton import SAM2AutomaticMaskGenerator

    out = tmp_path / "r.json"
    image = pictures / "p3.png"
    code = cli.main(["batch", str(image), "-o", str(out), "--url", triton_server.grpc_url,
                     "--everything-options", json.dumps(EVERYTHING), "--no-progress"])  # fmt: skip
    assert code == 0
    got = json.loads(out.read_text())
    with SAM2AutomaticMaskGenerator(
        url=triton_server.grpc_url, output_mode="coco_rle", **EVERYTHING
    ) as generator:
        want = generator.generate(image)
    assert len(got) == len(want) >= 1
    for record, mask in zip(got, want):
        assert record["segmentation"] == mask["segmentation"]
        assert record["bbox"] == mask["bbox"] and record["area"] == mask["area"]
        assert record["score"] == mask["predicted_iou"] and record["file_name"].endswith("p3.png")


def test_bad_everything_options_are_refused_before_any_work(tmp_path, pictures, capsys):
    out = tmp_path / "r.json"
    code = cli.main(["batch", str(pictures / "p3.png"), "-o", str(out), "--url", "127.0.0.1:9",
                     "--everything-options", '{"points_per_sid": 4}', "--no-progress"])  # fmt: skip
    assert code == 2
    assert "points_per_sid" in capsys.readouterr().err and not out.exists()


# --- (e) atomic output, torn journal lines (no server) ---------------------------------------------
def _task(i: int) -> Task:
    return Task(key=f"k{i}", image_id=i, file_name=f"{i}.png", path=f"/x/{i}.png", objects=())


def test_output_is_replaced_whole_or_not_at_all(tmp_path):
    journal = Journal(tmp_path / "j", {"a": 1})
    for i in range(3):
        journal.append(f"k{i}", "ok", {"records": [{"image_id": i, "n": "x" * 1000}]})
    results, failures = tmp_path / "r.json", tmp_path / "f.json"
    assemble(journal, [_task(i) for i in range(3)], results, failures)
    complete = results.read_bytes()
    assert [r["image_id"] for r in json.loads(complete)] == [0, 1, 2]

    def dies_midway():
        yield _task(0)
        yield _task(1)
        raise KeyboardInterrupt  # the process stops while the new file is being written

    journal.append("k0", "failed", {"error": "InvalidImageError", "message": "m"})
    with pytest.raises(KeyboardInterrupt):
        assemble(journal, dies_midway(), results, failures)
    assert results.read_bytes() == complete  # the previous complete file, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "j", "r.json"]  # no temps
    journal.close()


def test_a_torn_journal_line_is_dropped_and_the_image_redone(tmp_path):
    path = tmp_path / "j"
    journal = Journal(path, {"a": 1})
    journal.append("k0", "ok", {"records": []})
    journal.append("k1", "retry", {"error": "ServerUnavailableError", "message": "m"})
    journal.close()
    size = path.stat().st_size
    with path.open("ab") as fp:
        fp.write(b'{"key":"k2","status":"ok","rec')
    journal = Journal(path, {"a": 1})
    assert journal.resumed and journal.done("k0")
    assert not journal.done("k1") and not journal.done("k2")  # retry and torn: segmented again
    assert path.stat().st_size == size  # the torn tail is cut off before anything is appended
    journal.append("k2", "ok", {"records": [1]})
    assert journal.get("k2")["records"] == [1]
    journal.close()
    with pytest.raises(JournalMismatchError, match="other arguments"):
        Journal(path, {"a": 2})
