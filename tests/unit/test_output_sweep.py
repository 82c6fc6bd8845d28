"""oddish.worker.output_sweep: which directories on the worker's disk are attempt outputs."""

from __future__ import annotations

from pathlib import Path

from oddish.worker.output_sweep import AttemptDirectory, find_attempt_directories


def test_attempt_directories_are_found_and_nothing_else(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "task-a" / "trial-1" / "attempt-1" / "agent").mkdir(parents=True)
    (jobs / "task-a" / "trial-1" / "attempt-2").mkdir()
    (jobs / "task-a" / "trial-2" / "attempt-10").mkdir(parents=True)
    # Not attempts: other names, files, links (never followed).
    (jobs / "task-a" / "trial-2" / "attempt-0").mkdir()
    (jobs / "task-a" / "trial-2" / "attempt-x").mkdir()
    (jobs / "task-a" / "trial-2" / "attempt-3").write_text("a file")
    outside = tmp_path / "outside" / "t" / "attempt-1"
    outside.mkdir(parents=True)
    (jobs / "task-link").symlink_to(tmp_path / "outside", target_is_directory=True)
    (jobs / "task-a" / "trial-3").mkdir()
    (jobs / "task-a" / "trial-3" / "attempt-1").symlink_to(outside, target_is_directory=True)

    assert find_attempt_directories(jobs) == [
        AttemptDirectory(jobs / "task-a" / "trial-1" / "attempt-1", "task-a", "trial-1", 1),
        AttemptDirectory(jobs / "task-a" / "trial-1" / "attempt-2", "task-a", "trial-1", 2),
        AttemptDirectory(jobs / "task-a" / "trial-2" / "attempt-10", "task-a", "trial-2", 10),
    ]
    assert find_attempt_directories(tmp_path / "missing") == []
