"""An attempt's Harbor output goes to storage after its result is recorded, retried for as long as
the storage fails, and leaves the worker's disk only once it is stored (no services: ``run_trial``
with the database, Harbor and the slot heartbeat replaced)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from oddish import trial_output
from oddish.activities import trial as trial_activity
from oddish.config import get_settings
from oddish.contracts import RunTrialInput, TrialOutcome
from oddish.db import attempts, records
from oddish.storage import ObjectInfo, StorageUnavailable
from oddish.storage.local import LocalStorage

TASK, TRIAL = "task-1", "trial-1"
PREFIX = f"tasks/{TASK}/trials/{TRIAL}/attempt-1/"


class FlakyStorage(LocalStorage):
    """A local store whose put_tree and move_tree fail ``failures`` times (None: always)
    before they work."""

    def __init__(self, root: Path, failures: int | None, events: list[str]) -> None:
        super().__init__(root)
        self.failures = failures
        self.events = events

    def _put_tree(self, prefix: str, directory: Path, *, move: bool) -> builtins.list[ObjectInfo]:
        self.events.append("upload")
        if self.failures is None or self.failures > 0:
            if self.failures is not None:
                self.failures -= 1
            raise StorageUnavailable("the bucket is down (test)")
        return super()._put_tree(prefix, directory, move=move)


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    jobs = tmp_path / "harbor-jobs"
    monkeypatch.setenv("ODDISH_HARBOR_JOBS_DIR", str(jobs))
    monkeypatch.delenv("ODDISH_KEEP_LOCAL_OUTPUT", raising=False)
    monkeypatch.setattr(trial_output, "RETRY_FIRST_DELAY_SEC", 0.01)
    monkeypatch.setattr(trial_output, "RETRY_MAX_DELAY_SEC", 0.05)
    get_settings.cache_clear()
    yield jobs
    get_settings.cache_clear()


def attempt_dir(jobs: Path) -> Path:
    return jobs / TASK / TRIAL / "attempt-1"


def fake_trial(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    events: list[str],
    *,
    failures: int | None,
    retryable: bool = False,
) -> FlakyStorage:
    """run_trial's collaborators replaced: Harbor writes an output directory and succeeds, the
    database records by appending "recorded" to ``events``; the store is a FlakyStorage."""
    storage = FlakyStorage(tmp_path / "storage", failures, events)
    monkeypatch.setattr(trial_output, "get_storage", lambda: storage)

    async def open_attempt(*_: Any, **__: Any) -> attempts.OpenedAttempt:
        return attempts.OpenedAttempt(7, 1, {}, "tasks/task-1/x.tar.gz", None)

    @contextlib.asynccontextmanager
    async def task_dir_for(*_: Any) -> AsyncIterator[Path]:
        yield tmp_path / "task"

    async def harbor_run(_config: Any) -> Any:
        out = attempt_dir(get_settings().harbor_jobs_dir)
        (out / "agent").mkdir(parents=True)
        (out / "verifier").mkdir()
        (out / "result.json").write_text(json.dumps({"verifier_result": {"rewards": {"r": 1}}}))
        (out / "agent" / "oracle.txt").write_text("solved it\n")
        (out / "verifier" / "test-stdout.txt").write_text("1 passed\n")
        return SimpleNamespace(
            exception_info=None,
            verifier_result=SimpleNamespace(rewards={"reward": 1.0}),
            environment_setup=None,
            agent_setup=None,
            agent_execution=None,
            verifier=None,
            started_at=None,
            compute_token_cost_totals=lambda: (0, 0, 0, 0.0),
        )

    async def touch_slot(*_: Any) -> None:
        await asyncio.Event().wait()

    async def record_result(
        inp: RunTrialInput, _attempt_id: int, fields: records.TrialResultFields, **_: Any
    ) -> TrialOutcome:
        assert fields.harbor_trial_dir == PREFIX, "the record holds the output's storage prefix"
        events.append("recorded")
        if retryable:
            raise ApplicationError("ConnectionError: flaky sandbox", type="ConnectionError")
        return TrialOutcome.of(inp.trial_id, fields)

    monkeypatch.setattr(trial_activity, "_open_attempt", open_attempt)
    monkeypatch.setattr(trial_activity, "task_dir_for", task_dir_for)
    monkeypatch.setattr(trial_activity, "TrialSpec", SimpleNamespace(model_validate=lambda _: None))
    monkeypatch.setattr(
        trial_activity, "trial_config", lambda *_, **__: SimpleNamespace(model_dump=lambda mode: {})
    )
    monkeypatch.setattr(trial_activity, "_harbor_run", harbor_run)
    monkeypatch.setattr(trial_activity, "_touch_slot", touch_slot)
    monkeypatch.setattr(trial_activity, "_record_result", record_result)
    return storage


def run_trial_coroutine() -> Any:
    env = ActivityEnvironment()
    inp = RunTrialInput(task_id=TASK, trial_id=TRIAL, run_number=1, max_attempts=3)
    return env.run(
        trial_activity._run_trial, inp, env.info, heartbeat_timeout_sec=30.0, attempt_in_run=1
    )


def stored(storage: LocalStorage) -> dict[str, bytes]:
    return {
        info.key: b"".join(storage.iter_bytes(info.key)) for info in storage.list(f"tasks/{TASK}/")
    }


@pytest.mark.parametrize("keep_local", [False, True])
async def test_the_result_is_recorded_first_and_the_upload_retried_until_it_works(
    jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_local: bool
) -> None:
    if keep_local:
        monkeypatch.setenv("ODDISH_KEEP_LOCAL_OUTPUT", "true")
        get_settings.cache_clear()
    events: list[str] = []
    storage = fake_trial(monkeypatch, tmp_path, events, failures=3)

    outcome = await run_trial_coroutine()

    assert outcome.status == "success" and outcome.reward == 1.0
    assert events == ["recorded", "upload", "upload", "upload", "upload"]
    objects = stored(storage)
    assert sorted(objects) == [
        PREFIX + "agent/oracle.txt",
        PREFIX + "result.json",
        PREFIX + "verifier/test-stdout.txt",
    ]
    assert objects[PREFIX + "verifier/test-stdout.txt"] == b"1 passed\n"
    # Off this machine's disk once stored, unless asked to keep it.
    assert attempt_dir(jobs_dir).is_dir() == keep_local
    assert (jobs_dir / TASK / TRIAL).exists() == keep_local


async def test_an_attempt_recorded_for_a_retry_is_stored_before_temporal_hears_of_it(
    jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    storage = fake_trial(monkeypatch, tmp_path, events, failures=1, retryable=True)

    with pytest.raises(ApplicationError, match="flaky sandbox"):
        await run_trial_coroutine()

    assert events == ["recorded", "upload", "upload"]
    assert PREFIX + "result.json" in stored(storage)
    assert not attempt_dir(jobs_dir).exists()


async def test_while_the_storage_is_down_the_result_is_recorded_and_the_output_kept_on_disk(
    jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    storage = fake_trial(monkeypatch, tmp_path, events, failures=None)

    running = asyncio.ensure_future(run_trial_coroutine())
    for _ in range(500):
        if events.count("upload") >= 5:
            break
        await asyncio.sleep(0.01)
    assert not running.done(), "the activity waits for the storage, it does not give up"
    assert events[0] == "recorded" and events.count("upload") >= 5
    # The worker stops (or dies) before the storage comes back: the output is still on its disk.
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert (attempt_dir(jobs_dir) / "result.json").is_file()
    assert (attempt_dir(jobs_dir) / "agent" / "oracle.txt").read_text() == "solved it\n"
    assert stored(storage) == {}
