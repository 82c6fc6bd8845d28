"""oddish.api.trial_files: serving a trial's output, all of it written by the agent (no services).

The races (a file swapped for a link or a FIFO between the listing and the read) are made
deterministic by swapping inside whatever call opens the file: os.open or io.open."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic_core
import pytest

from oddish.api import trial_files as tf
from oddish.db.records import RecordNotFound
from oddish.storage import ObjectInfo, StorageUnavailable
from oddish.storage.local import LocalStorage

GIB = 1024**3
SECRET = "SECRET-host-credential-4f2a"

Swap = Callable[[Path, Callable[[Path], None]], None]


def trial(path: Path) -> dict[str, Any]:
    return {"id": "t-1", "status": "success", "harbor_trial_dir": str(path)}


@pytest.fixture
def trial_dir(tmp_path: Path) -> Path:
    path = tmp_path / "jobs" / "job" / "trial"
    for sub in ("agent", "verifier", "artifacts"):
        (path / sub).mkdir(parents=True)
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the trial directory, standing in for /root/.aws/credentials and the like."""
    path = tmp_path / "host" / "credentials.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"secret": SECRET}))
    (path.parent / "id_rsa.log").write_text(SECRET)
    return path


@pytest.fixture
def swap_on_open(monkeypatch: pytest.MonkeyPatch) -> Swap:
    """swap(path, action): runs action(path) just before the first open of a file of that name,
    whichever call opens it: the race an agent (or a sidecar) still running can win."""
    swaps: dict[str, tuple[Path, Callable[[Path], None]]] = {}
    real_os_open, real_io_open = os.open, io.open

    def fire(target: object) -> None:
        if isinstance(target, str | os.PathLike):
            swap = swaps.pop(os.path.basename(os.fsdecode(target)), None)
            if swap is not None:
                swap[1](swap[0])

    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fire(path)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def io_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        fire(file)
        return real_io_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    return lambda path, action: swaps.__setitem__(path.name, (path, action))


def within(seconds: float, fn: Callable[[], Any], fifos: list[Path]) -> Any:
    """fn() run in a thread; fails (after unblocking any reader stuck on the FIFOs) if it hangs."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            # A writer showing up releases a reader blocked opening the FIFO; closing gives EOF.
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"the read blocked for over {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def served(logs: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in logs.items() if not k.startswith("[... ")}


def note(logs: dict[str, str]) -> tuple[str, str]:
    [entry] = [(k, v) for k, v in logs.items() if k.startswith("[... ")]
    assert list(logs)[-1] == entry[0], "the note comes last"
    return entry


def assert_servable(value: Any) -> None:
    """What FastAPI does with a dict[str, Any] answer; raises where the API would answer 500."""
    pydantic_core.to_json(value)


def to_link(target: Path) -> Callable[[Path], None]:
    def swap(path: Path) -> None:
        path.unlink()
        path.symlink_to(target)

    return swap


def to_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def sparse(path: Path, size: int, tail: bytes = b"") -> None:
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(0, os.SEEK_END)
        f.write(tail)


def test_links_are_never_followed(
    tmp_path: Path, trial_dir: Path, secret: Path, swap_on_open: Swap
) -> None:
    (trial_dir / "trial.log").write_text("harbor\n")
    (trial_dir / "result.json").write_text('{"reward": 1}')
    agent = trial_dir / "agent"
    (agent / "out.txt").write_text("hello\n")
    (agent / "environ").symlink_to("/proc/self/environ")
    (agent / "credentials.json").symlink_to(secret)
    (agent / "host").symlink_to(secret.parent, target_is_directory=True)
    (trial_dir / "verifier" / "up").symlink_to("../..", target_is_directory=True)
    # A regular file at listing time, a link to the secret when it is opened.
    (agent / "late.log").write_text("innocent\n")
    swap_on_open(agent / "late.log", to_link(secret))
    # The trial directory's own path is ours (from the database): a link in it is followed.
    (tmp_path / "volume").symlink_to(tmp_path / "jobs", target_is_directory=True)
    through_link = trial(tmp_path / "volume" / "job" / "trial")

    logs = tf.read_logs(through_link)

    environ = Path("/proc/self/environ").read_bytes().split(b"\0")[0].decode(errors="replace")
    for text in logs.values():
        assert SECRET not in text
        assert not environ or environ not in text
    assert set(served(logs)) == {"trial.log", "result.json", "agent/out.txt"}
    assert note(logs) == ("[... 5 more files not shown ...]", "5 symbolic links, never followed")
    assert_servable(logs)
    assert tf.read_result(through_link) == {"reward": 1}


def test_a_fifo_never_blocks_a_read(trial_dir: Path, swap_on_open: Swap) -> None:
    verifier = trial_dir / "verifier"
    (verifier / "reward.txt").write_text("1\n")
    os.mkfifo(verifier / "pipe.log")
    # A regular file at listing time, a FIFO with no writer when it is opened.
    (verifier / "test-stdout.txt").write_text("ok\n")
    swap_on_open(verifier / "test-stdout.txt", to_fifo)

    logs = within(10, lambda: tf.read_logs(trial(trial_dir)), [verifier / "test-stdout.txt"])

    assert served(logs) == {"verifier/reward.txt": "1\n"}
    assert note(logs) == (
        "[... 2 more files not shown ...]",
        "2 not regular files (FIFOs, sockets, devices)",
    )


def test_a_4_gib_sparse_log_costs_its_tail_only(trial_dir: Path) -> None:
    sparse(trial_dir / "agent" / "huge.log", 4 * GIB, b"THE END\n")

    tracemalloc.start()
    try:
        started = time.perf_counter()
        logs = tf.read_logs(trial(trial_dir))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    text = logs["agent/huge.log"]
    assert text.startswith(tf.CUT_MARKER) and text.endswith("\0THE END\n")
    assert len(text) == len(tf.CUT_MARKER) + tf.MAX_LOG_BYTES
    assert list(logs) == ["agent/huge.log"], "nothing else to show, nothing left out"
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    assert peak < 50 * 1024**2, f"peak {peak / 1024**2:.0f} MiB"


def test_many_files_stop_at_the_file_limit(trial_dir: Path) -> None:
    flood = tf.MAX_LOG_FILES + 100
    for i in range(flood):
        (trial_dir / "agent" / f"{i:04}.txt").write_text(f"{i}\n")
    (trial_dir / "trial.log").write_text("harbor\n")

    logs = tf.read_logs(trial(trial_dir))

    # Breadth first: Harbor's own top-level log is served whatever the agent piled up below it.
    assert served(logs)["trial.log"] == "harbor\n"
    assert len(served(logs)) == tf.MAX_LOG_FILES
    assert note(logs) == (
        "[... 101 more files not shown ...]",
        f"101 over the limit of {tf.MAX_LOG_FILES} files",
    )


def test_big_files_stop_at_the_byte_budget(trial_dir: Path) -> None:
    size = tf.MAX_LOG_BYTES * 9 // 10
    whole = tf.MAX_TOTAL_LOG_BYTES // size  # files served whole before the budget runs short
    for i in range(whole + 4):
        sparse(trial_dir / "agent" / f"{i:02}.log", size - 4, b"end\n")

    logs = tf.read_logs(trial(trial_dir))

    texts = [served(logs)[f"agent/{i:02}.log"] for i in range(whole + 1)]
    assert all(len(t) == size for t in texts[:whole])
    # The next one gets what is left of the budget, its tail, marked as cut.
    assert texts[whole].startswith(tf.CUT_MARKER) and texts[whole].endswith("end\n")
    assert sum(len(t) for t in texts) - len(tf.CUT_MARKER) == tf.MAX_TOTAL_LOG_BYTES
    assert note(logs) == (
        "[... 3 more files not shown ...]",
        f"3 over the limit of {tf.MAX_TOTAL_LOG_BYTES} bytes in all",
    )


def test_deep_directories_stop_at_the_depth_limit(trial_dir: Path) -> None:
    deep = trial_dir / "artifacts"
    for level in range(tf.MAX_LOG_DEPTH + 5):
        deep /= f"d{level}"
        deep.mkdir()
        (deep / "at.log").write_text(f"{level}\n")

    logs = tf.read_logs(trial(trial_dir))

    # artifacts/ is level 1: levels 1 to MAX_LOG_DEPTH are opened, the rest are not.
    assert len(served(logs)) == tf.MAX_LOG_DEPTH - 1
    assert note(logs) == (
        "[... more files not shown ...]",
        f"1 directories deeper than {tf.MAX_LOG_DEPTH} levels, not opened",
    )


def test_countless_entries_stop_the_listing(trial_dir: Path) -> None:
    agent = trial_dir / "agent"
    for i in range(tf.MAX_SCANNED_ENTRIES + 50):
        (agent / f"{i:05}").mkdir()

    started = time.perf_counter()
    logs = tf.read_logs(trial(trial_dir))
    elapsed = time.perf_counter() - started

    assert logs == {
        "[... more files not shown ...]": (
            f"listing stopped after {tf.MAX_SCANNED_ENTRIES} directory entries"
        )
    }
    assert elapsed < 5.0, f"{elapsed:.2f} s"


def test_undecodable_names_do_not_break_the_response(trial_dir: Path) -> None:
    (trial_dir / "agent" / os.fsdecode(b"\xff\xfe.log")).write_text("hi\n")

    logs = tf.read_logs(trial(trial_dir))

    assert logs == {"agent/\\xff\\xfe.log": "hi\n"}
    assert_servable({"trial_id": "t-1", "files": logs})


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        ("link", "is a symbolic link"),
        ("environ", "is a symbolic link"),
        ("fifo", "is not a regular file"),
        ("directory", "is not a regular file"),
    ],
)
def test_a_result_json_not_a_regular_file_is_refused(
    trial_dir: Path, secret: Path, plant: str, reason: str
) -> None:
    path = trial_dir / "result.json"
    if plant == "link":
        path.symlink_to(secret)
    elif plant == "environ":
        path.symlink_to("/proc/self/environ")
    elif plant == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()

    with pytest.raises(tf.TrialFileRefused, match=reason) as refused:
        within(10, lambda: tf.read_result(trial(trial_dir)), [path])

    assert isinstance(refused.value, RecordNotFound), "the API answers 404 with the reason"
    assert SECRET not in str(refused.value)


def nested(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"a": "' + b"x" * tf.MAX_RESULT_BYTES + b'"}', "larger than 16000000 bytes"),
        (None, "larger than 16000000 bytes"),  # 4 GiB, sparse
        (b'{"reward": ', "is not valid JSON"),
        (b'{"a": "\xff"}', "is not UTF-8"),
        (b'{"a": ' + b"[" * 100_000, "is not valid JSON"),
        (b'{"n": 1' + b"0" * 5000 + b"}", "is not valid JSON"),
        (b"[1, 2]", "is a JSON list, not an object"),
        (nested(tf.MAX_RESULT_NESTING), f"nests deeper than {tf.MAX_RESULT_NESTING} levels"),
        (b'{"a": "\\ud800"}', "unpaired UTF-16 surrogate"),
    ],
    ids=[
        "over-16MB",
        "4GiB-sparse",
        "truncated",
        "not-utf8",
        "nested-100000",
        "5000-digits",
        "list",
        "nested-64",
        "lone-surrogate",
    ],
)
def test_a_result_json_unfit_to_serve_is_refused(
    trial_dir: Path, content: bytes | None, reason: str
) -> None:
    path = trial_dir / "result.json"
    if content is None:
        sparse(path, 4 * GIB, b"{}")
    else:
        path.write_bytes(content)

    started = time.perf_counter()
    with pytest.raises(tf.TrialFileRefused, match=reason) as refused:
        tf.read_result(trial(trial_dir))

    assert time.perf_counter() - started < 2.0
    assert isinstance(refused.value, RecordNotFound), "the API answers 404 with the reason"


def test_a_genuine_result_json_is_served(trial_dir: Path) -> None:
    """The control for the refusals: what Harbor writes, escaped emoji and big rollouts included."""
    result = {
        "trial_name": "hello__abc",
        "agent_result": {
            "metadata": {"note": "done \U0001f600", "deep": json.loads(nested(20))},
            "rollout_details": [{"completion_token_ids": list(range(200_000))}],
        },
        "verifier_result": {"rewards": {"reward": 1.0}},
    }
    # ensure_ascii: the emoji is written as a surrogate pair, which is fine.
    (trial_dir / "result.json").write_text(json.dumps(result, indent=4))

    served_result = tf.read_result(trial(trial_dir))

    assert served_result == result
    assert_servable(served_result)


# --- output in storage (attempts recorded since outputs go to storage) --------------------------


class CountingStorage(LocalStorage):
    """A local store that counts the bytes its readers are handed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bytes_read = 0

    def iter_bytes(self, key: str, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        for chunk in super().iter_bytes(key, *args, **kwargs):
            self.bytes_read += len(chunk)
            yield chunk


@pytest.fixture
def storage(tmp_path: Path) -> CountingStorage:
    return CountingStorage(tmp_path / "storage")


PREFIX = "tasks/task-1/trials/t-1/attempt-1/"


def stored_trial(storage: LocalStorage, trial_dir: Path) -> dict[str, Any]:
    """The trial as a worker records it now: its output uploaded, its location the prefix."""
    storage.put_tree(PREFIX, trial_dir)
    return {"id": "t-1", "status": "success", "harbor_trial_dir": PREFIX}


def harbor_layout(trial_dir: Path) -> None:
    (trial_dir / "trial.log").write_text("harbor\n")
    (trial_dir / "result.json").write_text(json.dumps({"verifier_result": {"rewards": {"r": 1}}}))
    (trial_dir / "agent" / "oracle.txt").write_text("solved\n")
    (trial_dir / "agent" / "screenshot.png").write_bytes(b"\x89PNG")
    (trial_dir / "verifier" / "test-stdout.txt").write_text("1 passed\n")
    (trial_dir / "verifier" / "reward.txt").write_text("1\n")
    (trial_dir / "artifacts" / "big.log").write_bytes(b"x" * (3 * tf.MAX_LOG_BYTES) + b"END\n")


def test_output_in_storage_is_served_as_from_disk(
    trial_dir: Path, storage: CountingStorage
) -> None:
    harbor_layout(trial_dir)
    local, stored = trial(trial_dir), stored_trial(storage, trial_dir)

    logs = tf.read_logs(stored, storage)

    assert logs == tf.read_logs(local)
    assert sorted(logs) == [
        "agent/oracle.txt",
        "artifacts/big.log",
        "result.json",
        "trial.log",
        "verifier/reward.txt",
        "verifier/test-stdout.txt",
    ]
    assert logs["artifacts/big.log"].startswith(tf.CUT_MARKER)
    assert logs["artifacts/big.log"].endswith("END\n")
    # The 3 MB log was read for its last MB only (a ranged read), the others whole.
    assert storage.bytes_read < tf.MAX_LOG_BYTES + 1_000
    assert tf.read_result(stored, storage) == {"verifier_result": {"rewards": {"r": 1}}}
    # Nothing of it is read from the worker's disk.
    shutil.rmtree(trial_dir)
    assert tf.read_logs(stored, storage) == logs


@pytest.mark.parametrize("layout", ["many files", "big files", "deep directories"])
def test_bounds_on_output_in_storage_are_those_on_disk(
    trial_dir: Path, storage: CountingStorage, layout: str
) -> None:
    if layout == "many files":
        for i in range(tf.MAX_LOG_FILES + 100):
            (trial_dir / "agent" / f"{i:04}.txt").write_text(f"{i}\n")
        (trial_dir / "trial.log").write_text("harbor\n")
    elif layout == "big files":
        size = tf.MAX_LOG_BYTES * 9 // 10
        for i in range(tf.MAX_TOTAL_LOG_BYTES // size + 4):
            (trial_dir / "agent" / f"{i:02}.log").write_bytes(b"x" * (size - 4) + b"end\n")
    else:
        deep = trial_dir / "artifacts"
        for level in range(tf.MAX_LOG_DEPTH + 5):
            deep /= f"d{level}"
            deep.mkdir()
            (deep / "at.log").write_text(f"{level}\n")

    logs = tf.read_logs(stored_trial(storage, trial_dir), storage)

    assert logs == tf.read_logs(trial(trial_dir))
    note(logs)  # says what was left out, last
    assert storage.bytes_read <= tf.MAX_TOTAL_LOG_BYTES


def test_a_result_json_in_storage_unfit_to_serve_is_refused(
    trial_dir: Path, storage: CountingStorage
) -> None:
    sparse(trial_dir / "result.json", tf.MAX_RESULT_BYTES + 1, b"")
    stored = stored_trial(storage, trial_dir)

    with pytest.raises(tf.TrialFileRefused, match="larger than"):
        tf.read_result(stored, storage)
    assert storage.bytes_read == 0, "refused from its size, unread"

    storage.put_bytes(PREFIX + "result.json", b"[1, 2]")
    with pytest.raises(tf.TrialFileRefused, match="not an object"):
        tf.read_result(stored, storage)


def test_output_not_in_storage_is_a_404_with_the_reason(storage: CountingStorage) -> None:
    nothing = {"id": "t-1", "status": "failed", "harbor_trial_dir": PREFIX}
    with pytest.raises(RecordNotFound, match=r"no result\.json yet"):
        tf.read_result(nothing, storage)
    with pytest.raises(RecordNotFound, match="no output in storage"):
        tf.read_logs(nothing, storage)
    bogus = {"id": "t-1", "status": "failed", "harbor_trial_dir": "tasks/../etc/"}
    with pytest.raises(tf.TrialFileRefused, match="neither a path nor a storage prefix"):
        tf.read_logs(bogus, storage)


class DownStorage(LocalStorage):
    def _stat(self, key: str) -> ObjectInfo:
        raise StorageUnavailable("s3 is down (test)")

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        raise StorageUnavailable("s3 is down (test)")


async def test_storage_down_is_a_503_from_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oddish import queue
    from oddish.api.app import create_app
    from oddish.config import get_settings

    async def get_trial(trial_id: str) -> dict[str, Any]:
        return {"id": trial_id, "status": "success", "harbor_trial_dir": PREFIX}

    monkeypatch.setattr(queue, "get_trial", get_trial)
    monkeypatch.setattr(tf, "get_storage", lambda: DownStorage(tmp_path / "storage"))
    monkeypatch.delenv("ODDISH_API_KEY", raising=False)
    get_settings.cache_clear()
    try:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = [await http.get(f"/trials/t-1/{what}") for what in ("result", "logs")]
    finally:
        get_settings.cache_clear()
    for response in responses:
        assert response.status_code == 503, response.text
        assert "storage" in response.json()["detail"]
