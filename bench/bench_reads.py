"""Reads at scale (issue 12, items 5 and 7): an experiment of 100k trials and one of 10k, written
straight into a fresh embedded Postgres, read through the API (no worker, no Temporal needed).

Prints p50/p95 of GET /experiments/{id} and GET /tasks?limit=100 on the 100k experiment, the wall
time of ``oddish status --experiment ID --json`` on the 10k one, and the API's RSS after reading
the 100k experiment.

    uv run python bench/bench_reads.py [--tasks 1000] [--trials 100] [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

AGENTS = [
    ("oracle", None),
    ("claude-code", "anthropic/claude-sonnet-4-5"),
    ("codex", "openai/gpt-5"),
]

# One INSERT ... SELECT per table: a task per generate_series row, its trials a cross join.
# Statuses, rewards and outcomes cycle through realistic mixes (mostly finished, some failed
# before scoring with no reward, a few still queued or running, some cancelled).
SEED_SQL = """
INSERT INTO experiments (id, name) VALUES ($1, $1);

INSERT INTO tasks (id, experiment_id, name, task_path, status, priority, run_analysis,
                   workflow_id, created_at, workflow_started_at)
SELECT $1 || '-task-' || t, $1, 'task-' || t, 'tasks/' || $1 || '-task-' || t || '/x.tar.gz',
       (ARRAY['completed','completed','completed','running','failed','cancelled'])[1 + t % 6],
       t % 3, false, 'task/' || $1 || '-task-' || t,
       now() - make_interval(secs => $2 - t), now()
FROM generate_series(1, $2) AS t;

INSERT INTO trials (id, task_id, index, agent, model, queue_key, environment, spec, status,
                    reward, outcome, error_type, error_message, run_number, started_at,
                    finished_at, n_input_tokens, n_output_tokens, cost_usd)
SELECT $1 || '-trial-' || t || '-' || i, $1 || '-task-' || t, i,
       (ARRAY['oracle','claude-code','codex'])[1 + i % 3],
       (ARRAY[NULL,'anthropic/claude-sonnet-4-5','openai/gpt-5'])[1 + i % 3],
       (ARRAY['default','anthropic/claude-sonnet-4-5','openai/gpt-5'])[1 + i % 3],
       'local', jsonb_build_object('agent', 'oracle', 'n', i),
       s.status,
       CASE WHEN s.status = 'success' THEN (ARRAY[1.0, 0.5, 0.0, 1.0])[1 + (t + i) % 4]
            WHEN s.status = 'failed' AND (t + i) % 2 = 0 THEN 0.0 END,
       CASE WHEN s.status = 'success' THEN 'success'
            WHEN s.status = 'failed' THEN (ARRAY['task_failure','agent_timeout'])[1 + i % 2]
            WHEN s.status = 'cancelled' THEN 'cancelled' END,
       CASE WHEN s.status = 'failed' THEN 'AgentTimeoutError' END,
       CASE WHEN s.status = 'failed' THEN 'the agent ran out of time' END,
       1, now() - interval '1 hour',
       CASE WHEN s.status IN ('success','failed','cancelled') THEN now() END,
       1000 + i, 200 + i, 0.01
FROM generate_series(1, $2) AS t
CROSS JOIN generate_series(0, $3 - 1) AS i
CROSS JOIN LATERAL (
    SELECT (ARRAY['success','success','success','success','success','failed','failed',
                  'cancelled','queued','running'])[1 + (t * 7 + i) % 10] AS status
) AS s;

INSERT INTO trial_attempts (trial_id, number, run_number, temporal_attempt, worker, status,
                            reward, outcome, harbor_trial_dir, started_at, finished_at)
SELECT id, 1, 1, 1, 'bench', CASE status WHEN 'queued' THEN 'lost' ELSE status END, reward,
       outcome, 'tasks/' || task_id || '/trials/' || id || '/attempt-1/', started_at, finished_at
FROM trials WHERE task_id LIKE $1 || '-task-%';

INSERT INTO analyses (trial_id, status, classification, summary, details, analyzer, model,
                      n_input_tokens, n_output_tokens, cost_usd, judgement, finished_at)
SELECT id, 'success', outcome, 'rule-based: ' || outcome, '{}'::jsonb, 'rules-v1',
       -- The judge was asked for on a tenth of the tasks.
       CASE WHEN hashtext(task_id) % 10 = 0 THEN 'anthropic/claude-haiku-4-5' END,
       CASE WHEN hashtext(task_id) % 10 = 0 THEN 1500 END,
       CASE WHEN hashtext(task_id) % 10 = 0 THEN 300 END,
       CASE WHEN hashtext(task_id) % 10 = 0 THEN 0.002 END,
       CASE WHEN hashtext(task_id) % 10 = 0
            THEN jsonb_build_object('classification', 'GOOD_SUCCESS', 'subtype', '-') END,
       finished_at
FROM trials WHERE task_id LIKE $1 || '-task-%' AND finished_at IS NOT NULL;

INSERT INTO verdicts (task_id, status, summary, details, decider, finished_at)
SELECT id, 'success', '70% passed', '{}'::jsonb, 'rules', now()
FROM tasks WHERE experiment_id = $1 AND status = 'completed';
"""


async def seed(url: str, experiment: str, n_tasks: int, n_trials: int) -> float:
    import asyncpg

    from oddish.db.connection import plain_dsn

    started = time.perf_counter()
    conn = await asyncpg.connect(plain_dsn(url))
    try:
        async with conn.transaction():
            # asyncpg sends one statement with arguments at a time.
            for statement in SEED_SQL.split(";\n"):
                if statement.strip():
                    n_args = sum(f"${k}" in statement for k in (1, 2, 3))
                    await conn.execute(statement, *(experiment, n_tasks, n_trials)[:n_args])
        # As autovacuum leaves a settled table: statistics for the planner, and the visibility
        # map that lets the covering indexes answer without reading the table.
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


# Untimed requests first: the API's first reads of a route on each pooled connection prepare
# its statements (asyncpg caches them per connection) and fill SQLAlchemy's compiled cache.
# The first request's time is printed apart.
WARM_UP = 5


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def timed_gets(
    http: httpx.Client, path: str, n: int, params: dict[str, str | int] | None = None
) -> tuple[float, float, int]:
    """p50 and p95 in ms of ``n`` GETs after ``WARM_UP`` untimed ones, and the answer's size."""
    for _ in range(WARM_UP):
        http.get(path, params=params).raise_for_status()
    samples = []
    size = 0
    for _ in range(n):
        started = time.perf_counter()
        response = http.get(path, params=params)
        samples.append(time.perf_counter() - started)
        response.raise_for_status()
        size = len(response.content)
    p50, p95 = percentiles(samples)
    return p50 * 1000, p95 * 1000, size


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    from oddish.embedded import free_port

    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "oddish.api", "--port", str(port), "--no-workers"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start:\n{log.read_text()}")
        time.sleep(0.2)


async def main(args: argparse.Namespace) -> None:
    from oddish.config import get_settings
    from oddish.db import migrations
    from oddish.db.connection import dispose_engine
    from oddish.embedded import free_port, start_embedded_postgres

    with tempfile.TemporaryDirectory(prefix="oddish-bench-reads-") as tmp:
        work = Path(tmp)
        postgres = start_embedded_postgres(work / "pg")
        env = {
            **os.environ,
            "ODDISH_DATABASE_URL": postgres.url,
            # Nothing listens there: reads need no Temporal, and the API serves without it.
            "ODDISH_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "ODDISH_TASKS_DIR": str(work / "tasks"),
            "ODDISH_HARBOR_JOBS_DIR": str(work / "jobs"),
            "ODDISH_HOME": str(work / "home"),
            "HARBOR_TELEMETRY": "0",
        }
        os.environ.update(env)
        get_settings.cache_clear()
        api: subprocess.Popen[bytes] | None = None
        try:
            await migrations.upgrade()
            await dispose_engine()
            big, small = "bench-big", "bench-small"
            seconds = await seed(postgres.url, big, args.tasks, args.trials)
            print(
                f"seeded {args.tasks * args.trials} trials ({args.tasks} tasks) in {seconds:.1f}s"
            )
            small_tasks = max(1, args.small_trials // args.trials)
            seconds = await seed(postgres.url, small, small_tasks, args.trials)
            print(
                f"seeded {small_tasks * args.trials} trials ({small_tasks} tasks) in {seconds:.1f}s"
            )

            api, url = start_api(env, work / "api.log")
            rss_idle = psutil.Process(api.pid).memory_info().rss / 2**20
            with httpx.Client(base_url=url, timeout=600) as http:
                started = time.perf_counter()
                http.get(f"/experiments/{big}").raise_for_status()
                print(
                    f"GET /experiments/{{id}}, the API's first request: "
                    f"{(time.perf_counter() - started) * 1000:.0f} ms"
                )
                p50, p95, size = timed_gets(http, f"/experiments/{big}", args.requests)
                print(
                    f"GET /experiments/{{id}} ({args.tasks * args.trials} trials): "
                    f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, {size / 1024:.0f} KiB"
                )
                p50, p95, size = timed_gets(http, "/tasks", args.requests, {"limit": 100})
                print(
                    f"GET /tasks?limit=100: p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
                    f"{size / 1024:.0f} KiB"
                )
                p50, p95, size = timed_gets(
                    http, "/tasks", args.requests, {"limit": 100, "experiment": big}
                )
                print(f"GET /tasks?experiment=ID&limit=100: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
            rss = psutil.Process(api.pid).memory_info().rss / 2**20
            print(
                f"API RSS: {rss_idle:.0f} MB idle, {rss:.0f} MB after reading the 100k experiment"
            )

            started = time.perf_counter()
            status = subprocess.run(
                [sys.executable, "-m", "oddish", "status", "--experiment", small, "--json"],
                env={**env, "ODDISH_API_URL": url},
                capture_output=True,
                check=True,
            )
            seconds = time.perf_counter() - started
            print(
                f"oddish status --experiment ID --json ({small_tasks * args.trials} trials): "
                f"{seconds:.2f}s, {len(status.stdout) / 2**20:.1f} MB of JSON"
            )
        finally:
            if api is not None:
                api.terminate()
                api.wait()
            await dispose_engine()
            postgres.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks of the big experiment")
    parser.add_argument("--trials", type=int, default=100, help="trials per task")
    parser.add_argument("--small-trials", type=int, default=10_000, help="trials of the small one")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per route")
    asyncio.run(main(parser.parse_args()))
