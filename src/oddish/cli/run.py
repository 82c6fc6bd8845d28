"""``oddish run``: upload task directories and start their trials, all in one experiment."""

from __future__ import annotations

import getpass
import json
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from oddish.cli.bodies import checked_sweep, run_sweep_field, sweep_request_body
from oddish.cli.client import ApiClient, RequestFailed, dashboard_page
from oddish.cli.output import fail, print_json, stderr, stdout
from oddish.cli.status import FAIL_UNDER_HELP, WIDE_HELP, TaskSet, Watch, show
from oddish.cli.sweep_file import SweepFile, load_sweep_file, parse_priority
from oddish.cli.task_source import (
    select_tasks,
    task_archive,
    task_dirs_from_paths,
    task_dirs_from_registry,
)
from oddish.schemas import validate_agent_name, validate_environment_name

DEFAULT_AGENT = "claude-code"
DEFAULT_ENVIRONMENT = "docker"
PATH_HINT = "'PATH'"
# Tasks uploaded and submitted at once: enough to keep the API busy while each request waits on
# the network, the database and Temporal; few enough not to queue up behind its one process.
SUBMIT_CONCURRENCY = 8


def parse_pairs(pairs: list[str] | None, *, option: str, json_values: bool) -> dict[str, Any]:
    """``KEY=VALUE`` options; with ``json_values`` a value that parses as JSON is taken as such
    (``n=3`` -> 3, ``flag=true`` -> True), as Harbor's ``--ak`` does."""
    parsed: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=f"'{option}'")
        if json_values:
            try:
                parsed[key.strip()] = json.loads(value)
                continue
            except json.JSONDecodeError:
                pass
        parsed[key.strip()] = value
    return parsed


def configs_from_options(
    agents: list[str], models: list[str], n_trials: int, env: dict[str, Any], kwargs: dict[str, Any]
) -> list[dict[str, Any]]:
    """One config per agent and model: ``-m MODEL`` is for every agent, ``-m AGENT=MODEL`` for one;
    an agent runs each of its models, like Harbor's repeated ``-m``."""
    shared: list[str | None] = []
    own: dict[str, list[str | None]] = {}
    for model in models:
        agent, sep, name = model.partition("=")
        if not sep:
            shared.append(model)
        elif agent not in agents:
            raise typer.BadParameter(
                f"{model!r}: {agent!r} is not one of the --agent values",
                param_hint="'-m' / '--model'",
            )
        else:
            own.setdefault(agent, []).append(name)
    return [
        {
            "agent": agent,
            "model": model,
            "n_trials": n_trials,
            "agent_config": {"env": env, "kwargs": kwargs},
        }
        for agent in agents
        for model in own.get(agent) or shared or [None]
    ]


def configs_from_sweep(
    sweep: SweepFile, env: dict[str, Any], kwargs: dict[str, Any]
) -> list[dict[str, Any]]:
    """The sweep file's agents; ``--ae`` / ``--ak`` given on the command line win."""
    return [
        {
            "agent": a.name,
            "model": a.model_name,
            "n_trials": a.n_trials,
            "agent_config": {
                "env": {**a.env, **env},
                "kwargs": {**a.kwargs, **kwargs},
                "timeout_sec": a.timeout_minutes * 60 if a.timeout_minutes else None,
            },
        }
        for a in sweep.agents
    ]


def validated(check: Any, value: str, param_hint: str) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


def find_task_dirs(
    paths: list[Path], dataset: str | None, sweep: SweepFile | None, config: Path | None
) -> list[Path]:
    """Command-line paths or dataset first, then the sweep file's."""
    if paths and dataset:
        raise typer.BadParameter(
            "give task directories or --dataset, not both", param_hint="'-d' / '--dataset'"
        )
    if paths:
        return task_dirs_from_paths(paths, param_hint=PATH_HINT)
    if dataset:
        return task_dirs_from_registry(dataset)
    if sweep and sweep.path:
        return task_dirs_from_paths([sweep.path], param_hint=f"{config}: path")
    if sweep and sweep.dataset:
        return task_dirs_from_registry(sweep.dataset)
    raise typer.BadParameter(
        "no tasks: give task directories, --dataset, or a sweep file with a path",
        param_hint=PATH_HINT,
    )


def submit_one(
    api: ApiClient, task_dir: Path, archive: bytes, body: dict[str, Any]
) -> dict[str, Any]:
    """Upload one task and create it, in one request; RequestFailed with the line to show when
    it fails."""
    # A fresh key per task: should a timed-out request be sent again, the API answers with the
    # task the first one created instead of a second task.
    sweep = run_sweep_field(body, submission_key=str(uuid.uuid4()))
    return api.request(
        "POST",
        "/tasks/run",
        retry=True,
        raise_failures=True,
        timeout=600,
        files={"file": (f"{task_dir.name}.tar.gz", archive, "application/gzip")},
        data={"sweep": sweep},
    )


def submit(
    api: ApiClient, task_dirs: list[Path], sweep_body: dict[str, Any], show_progress: bool
) -> tuple[str, list[dict[str, Any]]]:
    """Upload and submit each task, ``SUBMIT_CONCURRENCY`` at a time; the first one's experiment
    is every other one's. Answers in the order of ``task_dirs``.

    On the first failure no further task is started, those under way are let finish (they are
    submitted: the count says so), and the failure is told once.
    """
    experiment_id: str | None = sweep_body["experiment_id"]
    done: dict[int, dict[str, Any]] = {}
    failure: str | None = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with (
            Progress(*columns, console=stderr, transient=True, disable=not show_progress) as bar,
            ThreadPoolExecutor(SUBMIT_CONCURRENCY, thread_name_prefix="submit") as pool,
        ):
            step = bar.add_task("submitting tasks", total=len(task_dirs))
            running: dict[Future[dict[str, Any]], int] = {}

            def settle(finished: set[Future[dict[str, Any]]]) -> None:
                nonlocal failure
                for future in sorted(finished, key=running.__getitem__):
                    index = running.pop(future)
                    try:
                        task = future.result()
                    except RequestFailed as exc:
                        failure = failure or str(exc)
                        continue
                    if task.get("warning"):  # recorded; it starts once Temporal answers
                        stderr.print(f"[yellow]warning:[/yellow] {escape(task['warning'])}")
                    done[index] = task
                    bar.advance(step)

            for index, task_dir in enumerate(task_dirs):
                # At most SUBMIT_CONCURRENCY archives in memory and requests in flight; until the
                # experiment is known (the first task creates it) one request at a time.
                while running and (len(running) >= SUBMIT_CONCURRENCY or experiment_id is None):
                    settle(wait(running, return_when=FIRST_COMPLETED).done)
                    if experiment_id is None and done:
                        experiment_id = done[min(done)]["experiment"]
                if failure is not None:
                    break
                bar.update(step, description=f"submitting {task_dir.name}")
                archive = task_archive(task_dir)  # a task that cannot be packed exits here
                body = {**sweep_body, "experiment_id": experiment_id}
                running[pool.submit(submit_one, api, task_dir, archive, body)] = index
            while running:
                settle(wait(running).done)
        if failure is not None:
            fail(failure)
    except typer.Exit:
        if done:
            stderr.print(
                f"{len(done)} of {len(task_dirs)} tasks were submitted before the "
                f"error, to experiment {experiment_id or done[min(done)]['experiment']}"
            )
        raise
    created = [done[i] for i in range(len(task_dirs))]
    return experiment_id or created[0]["experiment"], created


def submit_existing(
    api: ApiClient, task_ids: list[str], shared: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    """More trials of existing tasks, one after the other (each a new task of the same stored
    version); the first one's experiment is every other one's unless --experiment named one."""
    created: list[dict[str, Any]] = []
    experiment_id: str | None = shared["experiment_id"]
    for task_id in task_ids:
        body = sweep_request_body(
            {**shared, "experiment_id": experiment_id},
            task_id=task_id,
            submission_key=str(uuid.uuid4()),
        )
        task = api.request("POST", "/tasks/sweep", json=body, retry=True)
        if task.get("warning"):
            stderr.print(f"[yellow]warning:[/yellow] {escape(task['warning'])}")
        created.append(task)
        experiment_id = experiment_id or task["experiment"]
    return experiment_id or created[0]["experiment"], created


def print_summary(experiment_id: str, created: list[dict[str, Any]], names: list[str]) -> None:
    total = sum(t["trials_count"] for t in created)
    stdout.print(
        f"[bold green]submitted[/bold green] {len(created)} task(s), {total} trial(s), "
        f"to experiment [bold]{experiment_id}[/bold]"
    )
    for task, name in zip(created, names, strict=True):
        stdout.print(f"  {task['id']}  {name}  ({task['trials_count']} trials)")
    follow = (
        f"oddish status {created[0]['id']} --watch"
        if len(created) == 1
        else f"oddish status --experiment {experiment_id} --watch"
    )
    stdout.print(f"follow with: [bold]{follow}[/bold]", highlight=False)
    stdout.print(f"dashboard: {dashboard_page('experiments', experiment_id)}", highlight=False)


def run(
    paths: list[Path] | None = typer.Argument(
        None,
        show_default=False,
        metavar="PATH",
        help="task directories (with task.toml), or directories of task directories",
    ),
    path_option: list[Path] | None = typer.Option(
        None, "--path", "-p", show_default=False, help="a task or dataset directory, as PATH"
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        show_default=False,
        help="sweep file (YAML): agents with models and trial counts, tasks, environment; "
        "see below",
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        "-d",
        show_default=False,
        help="a Harbor registry dataset, NAME or NAME@VERSION (the registry must be reachable)",
    ),
    agents: list[str] | None = typer.Option(
        None,
        "--agent",
        "-a",
        show_default=DEFAULT_AGENT,
        help="agent to run: a Harbor agent name (oracle, nop, claude-code, codex, ...) or "
        "module:Class; repeat for several",
    ),
    models: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        show_default=False,
        help="model for every agent (MODEL) or for one (AGENT=MODEL); repeat to run each agent "
        "on several models",
    ),
    n_trials: int | None = typer.Option(
        None, "--n-trials", min=1, show_default="1", help="trials per agent/model pair and task"
    ),
    task_names: list[str] | None = typer.Option(
        None,
        "--task-name",
        "-t",
        show_default=False,
        help="run only tasks whose directory name matches this glob; repeatable",
    ),
    exclude_task_names: list[str] | None = typer.Option(
        None,
        "--exclude-task-name",
        "-x",
        show_default=False,
        help="skip tasks whose directory name matches this glob; repeatable",
    ),
    n_tasks: int | None = typer.Option(
        None,
        "--n-tasks",
        "-l",
        min=1,
        show_default=False,
        help="run at most this many tasks (after the filters)",
    ),
    environment: str | None = typer.Option(
        None,
        "--env",
        "-e",
        show_default=DEFAULT_ENVIRONMENT,
        help="where trials run: docker, daytona, e2b, modal, runloop, gke, ... (Harbor's "
        "environments), local (a bubblewrap sandbox on the worker's machine, trusted tasks "
        "only) or module:Class",
    ),
    priority: str | None = typer.Option(
        None,
        "--priority",
        "-P",
        show_default="low (0)",
        help="low, high or a number; higher runs first when a model's slots are scarce",
    ),
    experiment: str | None = typer.Option(
        None,
        "--experiment",
        "-E",
        show_default="a new one",
        help="experiment to add the tasks to: an id, or the name of an existing one "
        "(a new experiment with this id otherwise)",
    ),
    user: str | None = typer.Option(
        None, "--user", "-u", show_default="your login name", help="who submits"
    ),
    run_analysis: bool | None = typer.Option(
        None,
        "--run-analysis/--no-run-analysis",
        show_default="no-run-analysis",
        help="ask the judge (an LLM, ODDISH_ANALYSIS_MODEL on the server) to analyse each "
        "finished trial (whose fault: the agent's or the task's) and give each task a verdict; "
        "refused when the server has no judge model. Without it each trial still gets its "
        "rule-based outcome and each task its counts",
    ),
    agent_env: list[str] | None = typer.Option(
        None,
        "--ae",
        "--agent-env",
        show_default=False,
        help="environment variable for the agent, KEY=VALUE; repeatable",
    ),
    agent_kwargs: list[str] | None = typer.Option(
        None,
        "--ak",
        "--agent-kwarg",
        show_default=False,
        help="agent keyword argument, key=value (JSON values are parsed); repeatable",
    ),
    artifacts: list[str] | None = typer.Option(
        None,
        "--artifact",
        show_default=False,
        help="path in the environment to keep after each trial; repeatable",
    ),
    override_cpus: int | None = typer.Option(
        None, "--override-cpus", min=1, show_default=False, help="CPUs for the environment"
    ),
    override_memory_mb: int | None = typer.Option(
        None,
        "--override-memory-mb",
        min=1,
        show_default=False,
        help="memory (MB) for the environment",
    ),
    override_gpus: int | None = typer.Option(
        None, "--override-gpus", min=0, show_default=False, help="GPUs for the environment"
    ),
    override_storage_mb: int | None = typer.Option(
        None,
        "--override-storage-mb",
        min=1,
        show_default=False,
        help="storage (MB) for the environment",
    ),
    force_build: bool = typer.Option(
        False, "--force-build/--no-force-build", help="rebuild the environment's image"
    ),
    disable_verification: bool | None = typer.Option(
        None,
        "--disable-verification/--enable-verification",
        show_default="enable-verification",
        help="skip the task's tests (no reward)",
    ),
    watch: bool = typer.Option(
        True, "--watch/--no-watch", "-w", help="show live progress until the tasks are done"
    ),
    background: bool = typer.Option(
        False, "--background", "-b", "--async", help="submit and return at once (no --watch)"
    ),
    existing_tasks: list[str] | None = typer.Option(
        None,
        "--task",
        show_default=False,
        help="run more trials of this existing task (its stored files; no PATH): a new task "
        "of the same version, in that task's experiment unless --experiment says otherwise "
        "(the original Oddish added them to the task itself; ours keeps a task's trials and "
        "verdict as submitted); repeatable",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="no progress bar and no summary of what was submitted"
    ),
    json_output: bool = typer.Option(
        False,
        "--json",
        help='print only {"experiment", "experiment_url", "total_trials", "tasks": [{"id", '
        '"trials_count", "url"}]} (the urls: dashboard pages); implies --background',
    ),
    fail_under: float | None = typer.Option(
        None, "--fail-under", show_default=False, help=FAIL_UNDER_HELP
    ),
    wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
) -> None:
    """Run Harbor tasks: upload each task directory and start its trials.

    Every task of one run joins one experiment. The run is watched until it is done (Ctrl+C
    stops watching, not the tasks), then the experiment's scores per agent/model are printed;
    `--background` or `--json` return at once. Outside a terminal the watch prints one line
    per change (for CI logs).

    Exit codes of a watched run: 0 when every trial got a reward (passed, partial or failed);
    1 when any trial ended in an error (infrastructure, verifier) or was cancelled, or the mean
    reward is below `--fail-under`, or the API failed; 2 for bad input; 130 when interrupted.

        oddish run ./my-task -a claude-code -m claude-sonnet-4-5 --n-trials 5
        oddish run ./tasks/* -a oracle --env local --json
        oddish run ./my-dataset -t "django__*" -x "*-slow" -l 10 -a codex -m gpt-5
        oddish run ./my-task -a claude-code -a codex -m claude-code=claude-sonnet-4-5 -m codex=gpt-5
        oddish run -c sweep.yaml

    A sweep file (`-c`) in the original Oddish's format; options given on the command line win
    over the file's, but `--agent`, `--model` and `--n-trials` cannot be combined with it:

        agents:
          - name: claude-code
            model_name: claude-sonnet-4-5
            n_trials: 3
            env: {MY_VAR: value}          # agent environment variables
            kwargs: {max_turns: 50}       # agent keyword arguments
            timeout_minutes: 60           # agent timeout
          - name: oracle
        path: ./my-dataset                # a task directory or a directory of them
        task_names: ["django__*"]         # or dataset: NAME@VERSION
        exclude_task_names: ["*-slow"]
        n_tasks: 10
        environment: docker
        priority: high
        experiment_id: my-experiment
    """
    if fail_under is not None and (json_output or background or not watch):
        raise typer.BadParameter(
            "--fail-under judges a watched run: not with --json, --background or --no-watch",
            param_hint="'--fail-under'",
        )
    sweep = load_sweep_file(config) if config else None
    if sweep and (agents or models or n_trials is not None):
        raise typer.BadParameter(
            "--agent, --model and --n-trials cannot be combined with a "
            "sweep file: list the agents in it",
            param_hint="'-c' / '--config'",
        )
    env = parse_pairs(agent_env, option="--ae", json_values=False)
    kwargs = parse_pairs(agent_kwargs, option="--ak", json_values=True)
    if sweep:
        configs = configs_from_sweep(sweep, env, kwargs)
    else:
        chosen = [
            validated(validate_agent_name, a, "'-a' / '--agent'") for a in agents or [DEFAULT_AGENT]
        ]
        configs = configs_from_options(chosen, models or [], n_trials or 1, env, kwargs)
    environment = validated(
        validate_environment_name,
        environment or (sweep and sweep.environment) or DEFAULT_ENVIRONMENT,
        "'-e' / '--env'",
    )
    try:
        priority_value = (
            parse_priority(priority)
            if priority is not None
            else (sweep.priority if sweep and sweep.priority is not None else 0)
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'-P' / '--priority'") from None

    if existing_tasks and (paths or path_option or dataset or (sweep and sweep.path)):
        raise typer.BadParameter(
            "--task runs an existing task's files: give no PATH, --path or --dataset",
            param_hint="'--task'",
        )
    task_dirs = (
        []
        if existing_tasks
        else select_tasks(
            find_task_dirs([*(paths or []), *(path_option or [])], dataset, sweep, config),
            include=task_names or (sweep and sweep.task_names) or None,
            exclude=exclude_task_names or (sweep and sweep.exclude_task_names) or None,
            limit=n_tasks or (sweep and sweep.n_tasks) or None,
        )
    )
    if not task_dirs and not existing_tasks:
        raise typer.BadParameter(
            "no task is left after --task-name / --exclude-task-name",
            param_hint="'-t' / '--task-name'",
        )

    def pick(flag: Any, field: str) -> Any:
        """The command line's value, else the sweep file's."""
        return flag if flag is not None else getattr(sweep, field, None)

    sweep_body = checked_sweep(
        {
            "configs": configs,
            "harbor": {
                "environment": environment,
                "verifier": {"disable": bool(pick(disable_verification, "disable_verification"))},
                "artifacts": artifacts or [],
                "override_cpus": pick(override_cpus, "override_cpus"),
                "override_memory_mb": pick(override_memory_mb, "override_memory_mb"),
                "override_gpus": pick(override_gpus, "override_gpus"),
                "override_storage_mb": override_storage_mb,
                "force_build": force_build,
            },
            "priority": priority_value,
            "experiment_id": experiment or (sweep and sweep.experiment_id) or None,
            "run_analysis": pick(run_analysis, "run_analysis") is True,
            "user": user or getpass.getuser(),
        }
    )

    with ApiClient() as api:
        if existing_tasks:
            experiment_id, created = submit_existing(api, existing_tasks, sweep_body)
        else:
            experiment_id, created = submit(
                api, task_dirs, sweep_body, show_progress=not (json_output or quiet)
            )
        if json_output:
            print_json(
                {
                    "experiment": experiment_id,
                    "experiment_url": dashboard_page("experiments", experiment_id),
                    "total_trials": sum(t["trials_count"] for t in created),
                    "tasks": [
                        {
                            "id": t["id"],
                            "trials_count": t["trials_count"],
                            "url": dashboard_page("tasks", t["id"]),
                        }
                        for t in created
                    ],
                }
            )
            return
        if not quiet:
            print_summary(
                experiment_id, created, [d.name for d in task_dirs] or existing_tasks or []
            )
        if background or not watch:
            return
        stdout.print()
        tasks = (
            TaskSet(api, task_id=created[0]["id"], scores_of=experiment_id)
            if len(created) == 1
            else TaskSet(
                api,
                experiment=experiment_id,
                only={t["id"] for t in created},
                scores_of=experiment_id,
            )
        )
        show(
            tasks,
            Watch(watch=True, wide=wide, fail_under=fail_under),
            as_json=list,
            title=f"experiment {experiment_id}",
        )
