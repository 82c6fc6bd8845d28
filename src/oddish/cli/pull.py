"""``oddish pull``: the output of a trial, a task or an experiment on this disk, in Harbor's own
job layout, so that ``harbor view DIR`` opens it::

    DIR/<task_id>/config.json           the job's config (Harbor's JobConfig)
    DIR/<task_id>/result.json           the job's result (Harbor's JobResult: stats, pass@k)
    DIR/<task_id>/<trial_id>/...        each trial's Harbor directory, as its latest attempt left it
    DIR/<task_id>/task/...              the task's own files (with --files)

Each task is one Harbor job. Everything comes through the API's files routes; the paths in a
listing were written by the agent, so each is checked before anything is written (no ``..``, no
absolute path, nothing written through a link) and each file appears whole or not at all.
Pulling again fetches only what changed: a trial pulled at the same attempt is skipped, a file
already there at its size is kept, and a trial retried since is pulled afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from oddish.cli.client import ApiClient, ApiError, path_of
from oddish.cli.output import fail, print_json, stderr, stdout
from oddish.statuses import TERMINAL_JOB_STATUSES, TERMINAL_TASK_STATUSES
from oddish.storage.keys import validate_key

STATE_FILE = ".oddish-pull.json"
TASK_FILES_DIR = "task"
# Harbor's own files of a trial directory: what --no-logs keeps.
TRIAL_RECORD_FILES = ("config.json", "result.json")
CONCURRENT_TRIALS = 8
WATCH_INTERVAL_SEC = 5.0
NOT_STORED_YET = "still being stored"


class PullRefused(Exception):
    """A file of the listing that is not written here; the message says why."""


@dataclass
class Tally:
    trials: int = 0
    files: int = 0
    bytes: int = 0
    unchanged: int = 0
    waiting: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.trials += other.trials
        self.files += other.files
        self.bytes += other.bytes
        self.unchanged += other.unchanged
        self.waiting += other.waiting
        self.problems += other.problems


def _part_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.oddish-part")


def safe_target(root: Path, rel: str) -> Path:
    """Where ``rel`` (from a listing) goes under ``root``: PullRefused for a path that would
    leave it, or that would be written through a link already standing under it."""
    try:
        validate_key(rel)
    except ValueError as exc:
        raise PullRefused(f"{rel!r}: {exc}") from None
    target = root
    for part in rel.split("/"):
        target = target / part
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(target).st_mode):
                raise PullRefused(f"{rel!r}: {target} is a symbolic link; not written through")
    return target


class Puller:
    """Downloads into ``out`` through ``api``."""

    def __init__(self, api: ApiClient, out: Path, *, logs: bool, files: bool) -> None:
        self.api = api
        self.out = out
        self.logs = logs
        self.files = files

    # --- one file, one tree --------------------------------------------------------------------

    def _fetch(self, url: str, root: Path, rel: str, size: int, params: dict[str, Any]) -> bool:
        """Download one listed file; False when the one there already has its size."""
        target = safe_target(root, rel)
        with contextlib.suppress(FileNotFoundError):
            if target.stat().st_size == size and target.is_file():
                return False
        target.parent.mkdir(parents=True, exist_ok=True)
        part = _part_path(target)
        try:
            with open(part, "xb") as out:
                written = self.api.download(url, out, params=params, timeout=300)
            if written != size:
                raise PullRefused(f"{rel!r}: {written} bytes came, {size} were listed")
            os.replace(part, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        return True

    def _fetch_listing(
        self, base: str, listing: dict[str, Any], root: Path, params: dict[str, Any], tally: Tally
    ) -> None:
        for entry in listing["files"]:
            rel, size = entry["path"], entry["size"]
            try:
                fetched = self._fetch(f"{base}/{rel}", root, rel, size, params)
            except PullRefused as exc:
                tally.problems.append(f"{root.name}: {exc}")
                continue
            except ApiError as exc:
                tally.problems.append(f"{root.name}/{rel}: {exc}")
                continue
            if fetched:
                tally.files += 1
                tally.bytes += size
            else:
                tally.unchanged += 1
        if listing.get("truncated"):
            tally.problems.append(
                f"{root.name}: more files than one listing holds; only the first "
                f"{len(listing['files'])} were pulled"
            )

    # --- a trial, a task -----------------------------------------------------------------------

    def pull_trial(self, task_dir: Path, trial: dict[str, Any], pulled: dict[str, str]) -> Tally:
        """The trial's latest output into ``task_dir/<trial_id>``; ``pulled`` (trial id -> the
        output location pulled) is updated once the trial is complete here."""
        tally = Tally()
        location = trial.get("harbor_trial_dir")
        if trial["status"] not in TERMINAL_JOB_STATUSES:
            tally.waiting += 1
            return tally
        if not location:
            return tally  # ended before Harbor wrote anything (cancelled while queued, say)
        if pulled.get(trial["id"]) == location and (task_dir / trial["id"]).is_dir():
            tally.unchanged += 1
            return tally
        base = path_of("trials", trial["id"], "files")
        try:
            listing = self.api.get(base, raise_api_errors=True)
        except ApiError as exc:
            if exc.status_code == 404 and NOT_STORED_YET in exc.detail:
                tally.waiting += 1
            else:
                tally.problems.append(f"trial {trial['id']}: {exc}")
            return tally
        trial_dir = safe_target(task_dir, trial["id"])
        if trial["id"] in pulled and pulled[trial["id"]] != location:
            # Retried since the last pull: the old attempt's files must not mix with the new.
            shutil.rmtree(trial_dir, ignore_errors=True)
        if not self.logs:
            listing = {
                **listing,
                "files": [f for f in listing["files"] if f["path"] in TRIAL_RECORD_FILES],
            }
        before = len(tally.problems)
        self._fetch_listing(base, listing, trial_dir, {"attempt": listing["attempt"]}, tally)
        if len(tally.problems) == before:
            pulled[trial["id"]] = location
            tally.trials += 1
        return tally

    def pull_task(
        self, task_id: str, trial_ids: set[str] | None, pool: ThreadPoolExecutor
    ) -> tuple[dict[str, Any], Tally]:
        """The task's trials (those of ``trial_ids`` only, when given), its job files and, with
        --files, its own files. The task as the API described it, and what was done."""
        task = self.api.get(path_of("tasks", task_id))
        task_dir = safe_target(self.out, task_id)
        task_dir.mkdir(parents=True, exist_ok=True)
        state_path = task_dir / STATE_FILE
        try:
            pulled: dict[str, str] = json.loads(state_path.read_text())
        except (FileNotFoundError, ValueError):
            pulled = {}
        trials = [t for t in task["trials"] if trial_ids is None or t["id"] in trial_ids]
        tally = Tally()
        for one in pool.map(lambda t: self.pull_trial(task_dir, t, pulled), trials):
            tally.add(one)
        state_path.write_text(json.dumps(pulled, indent=1, sort_keys=True))
        if self.files and not (task_dir / TASK_FILES_DIR / STATE_FILE).exists():
            files_tally = Tally()
            base = path_of("tasks", task_id, "files")
            try:
                listing = self.api.get(base, raise_api_errors=True)
                self._fetch_listing(base, listing, task_dir / TASK_FILES_DIR, {}, files_tally)
            except ApiError as exc:
                files_tally.problems.append(f"task {task_id}'s files: {exc}")
            if not files_tally.problems:
                (task_dir / TASK_FILES_DIR / STATE_FILE).write_text("{}")
            tally.files += files_tally.files
            tally.bytes += files_tally.bytes
            tally.problems += files_tally.problems
        write_job_files(task_dir, task, trials)
        return task, tally


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def write_job_files(task_dir: Path, task: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """The job-level config.json and result.json Harbor writes, from the trial directories
    pulled so far (a trial whose files Harbor cannot read is left out of the stats)."""
    from harbor.models.job.config import JobConfig
    from harbor.models.job.result import JobResult, JobStats
    from harbor.models.trial.config import TrialConfig
    from harbor.models.trial.result import TrialResult

    configs: list[TrialConfig] = []
    results: list[TrialResult] = []
    for trial in trials:
        trial_dir = task_dir / trial["id"]
        with contextlib.suppress(OSError, ValueError):
            configs.append(TrialConfig.model_validate_json((trial_dir / "config.json").read_text()))
        with contextlib.suppress(OSError, ValueError):
            results.append(TrialResult.model_validate_json((trial_dir / "result.json").read_text()))
    agents = {c.agent.model_dump_json(): c.agent for c in configs}
    tasks = {c.task.model_dump_json(): c.task for c in configs}
    config_fields: dict[str, Any] = {
        "job_name": task_dir.name,
        "jobs_dir": task_dir.parent,
        "agents": list(agents.values()),
        "tasks": list(tasks.values()),
    }
    if configs:
        config_fields["environment"] = configs[0].environment
        config_fields["verifier"] = configs[0].verifier
        config_fields["timeout_multiplier"] = configs[0].timeout_multiplier
    job_config = JobConfig.model_validate(config_fields)
    started = [s for t in trials if (s := _parse_time(t.get("started_at")))]
    finished = [f for t in trials if (f := _parse_time(t.get("finished_at")))]
    running = sum(1 for t in trials if t["status"] not in TERMINAL_JOB_STATUSES)
    done = task["status"] in TERMINAL_TASK_STATUSES
    job_result = JobResult(
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"oddish:{task['id']}"),
        started_at=min(started) if started else _parse_time(task["created_at"]) or datetime.now(),
        finished_at=max(finished) if done and finished else None,
        n_total_trials=len(trials),
        stats=JobStats.from_trial_results(
            results, n_total_trials=len(trials), n_running_trials=running
        ),
    )
    (task_dir / "config.json").write_text(
        job_config.model_dump_json(indent=4, exclude_defaults=True)
    )
    (task_dir / "result.json").write_text(
        job_result.model_dump_json(indent=4, exclude={"trial_results"})
    )


def resolve(api: ApiClient, target: str) -> tuple[str, str, list[str], set[str] | None]:
    """What ``target`` names: (kind, id, its task ids, the trial ids when it is one trial)."""
    for kind in ("trials", "tasks", "experiments"):
        try:
            found = api.get(path_of(kind, target), raise_api_errors=True)
        except ApiError as exc:
            if exc.status_code == 404:
                continue
            fail(f"{exc} (GET /{kind}/{target})")
        if kind == "trials":
            return "trial", found["id"], [found["task_id"]], {found["id"]}
        if kind == "tasks":
            return "task", found["id"], [found["id"]], None
        tasks = api.get_all_tasks(experiment=found["id"])
        return "experiment", found["id"], [t["id"] for t in reversed(tasks)], None
    fail(f"no trial, task or experiment {target!r}")


def default_directory(target: str) -> Path:
    # A single path component, whatever the experiment is called.
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in target).strip(".") or "_"
    return Path(".oddish") / name


def pull(
    target: str = typer.Argument(
        ..., metavar="TARGET", help="a trial id, a task id, or an experiment's id or name"
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        show_default=False,
        help="the directory to write (default: ./.oddish/TARGET)",
    ),
    logs: bool = typer.Option(
        True,
        "--logs/--no-logs",
        help="each trial's whole output (agent logs, trajectory, verifier output, artifacts); "
        "--no-logs keeps only each trial's config.json and result.json",
    ),
    files: bool = typer.Option(
        True, "--files/--no-files", help="the task's own files, under <task_id>/task/"
    ),
    watch: bool = typer.Option(
        False,
        "--watch",
        "-w",
        help="keep pulling each trial as it finishes until every task is done",
    ),
    json_output: bool = typer.Option(False, "--json", help="print JSON only"),
) -> None:
    """Download results to this disk in Harbor's job layout: `harbor view DIR` opens them.

    Each task becomes one Harbor job directory (`DIR/<task_id>/`, with Harbor's job-level
    config.json and result.json) holding each trial's directory as its latest attempt left
    it. Running it again fetches only what changed. Trials not finished yet are left for a
    later pull, or for `--watch`.

    Exit code 0 when everything finished was pulled, 1 when a file could not be.
    """
    out = output or default_directory(target)
    total = Tally()
    with ApiClient() as api, ThreadPoolExecutor(CONCURRENT_TRIALS) as pool:
        kind, target_id, task_ids, trial_ids = resolve(api, target)
        puller = Puller(api, out, logs=logs, files=files)
        while True:
            round_tally = Tally()
            unfinished = 0
            for task_id in task_ids:
                task, tally = puller.pull_task(task_id, trial_ids, pool)
                round_tally.add(tally)
                if task["status"] not in TERMINAL_TASK_STATUSES:
                    unfinished += 1
                if not json_output and (tally.trials or tally.problems):
                    stderr.print(
                        f"{task_id}: {tally.trials} trials pulled, {tally.files} files "
                        f"({tally.bytes:,} bytes)"
                        + (f", {tally.waiting} not finished" if tally.waiting else ""),
                        highlight=False,
                    )
                    for problem in tally.problems:
                        stderr.print(f"  [yellow]warning:[/yellow] {problem}", highlight=False)
            waiting = round_tally.waiting
            round_tally.waiting = 0
            total.add(round_tally)
            total.waiting = waiting
            if kind == "experiment" and watch:
                # Tasks may still be added to an experiment while it is watched.
                known = set(task_ids)
                fresh = api.get_all_tasks(experiment=target_id)
                task_ids += [t["id"] for t in reversed(fresh) if t["id"] not in known]
            if not watch or (not unfinished and not waiting):
                break
            time.sleep(WATCH_INTERVAL_SEC)
    summary = {
        "target": target_id,
        "kind": kind,
        "directory": str(out),
        "tasks": len(task_ids),
        "trials_pulled": total.trials,
        "files": total.files,
        "bytes": total.bytes,
        "unchanged": total.unchanged,
        "not_finished": total.waiting,
        "problems": total.problems,
    }
    if json_output:
        print_json(summary)
    else:
        stdout.print(
            f"{kind} {target_id}: {total.trials} trials pulled ({total.files} files, "
            f"{total.bytes:,} bytes) into {out}"
            + (f"; {total.waiting} trials not finished yet" if total.waiting else "")
            + (f"; {len(total.problems)} problems (above)" if total.problems else ""),
            highlight=False,
            soft_wrap=True,
        )
        stdout.print(f"open with: harbor view {out}", highlight=False, soft_wrap=True)
    if total.problems:
        raise typer.Exit(1)
