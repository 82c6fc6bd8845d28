"""The dashboard's pure parts: the phase timeline, the order of tasks, the rate colours, the
matrix's cells, and the templates escaping whatever a task's code or agent wrote."""

from __future__ import annotations

from oddish.dashboard import views
from oddish.dashboard.routes import templates
from oddish.dashboard.trial_output import Step, Trajectory, TrialOutput
from oddish.db.stats import TaskStatusCount
from oddish.stored_files import Excerpt
from oddish.trial_stats import task_matrix

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def test_the_timeline_places_each_phase_on_the_trials_span() -> None:
    timings = {
        "trial": {
            "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:01:40+00:00",
        },
        "environment_setup": {
            "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:00:10+00:00",
        },
        "agent_execution": {
            "started_at": "2026-01-01T00:00:20+00:00",
            "finished_at": "2026-01-01T00:01:20+00:00",
        },
        "verifier": {"started_at": "2026-01-01T00:01:20+00:00", "finished_at": None},
    }
    bars = {bar.name: bar for bar in views.timeline(timings)}
    assert set(bars) == {"environment", "agent", "verifier"}
    assert (bars["environment"].left, bars["environment"].width) == (0.0, 10.0)
    assert (bars["agent"].left, bars["agent"].width, bars["agent"].seconds) == (20.0, 60.0, 60.0)
    # Unfinished: drawn to the trial's end, its time unknown.
    assert (bars["verifier"].left, bars["verifier"].width, bars["verifier"].seconds) == (
        80.0,
        20.0,
        None,
    )
    assert views.timeline(None) == []


def test_tasks_needing_review_come_first_in_their_order() -> None:
    good = {"id": "a", "verdict": {"judge": {"is_good": True}}}
    none = {"id": "b", "verdict": None}
    bad1 = {"id": "c", "verdict": {"judge": {"is_good": False, "primary_issue": "Brittle"}}}
    bad2 = {"id": "d", "verdict": {"judge": {"is_good": False}}}
    assert [t["id"] for t in views.review_first([good, bad1, none, bad2])] == ["c", "d", "a", "b"]
    assert views.verdict_text(bad1["verdict"]).startswith("needs review")


def test_rates_money_and_durations_as_shown() -> None:
    assert views.rate_class(None) == "rate-none"
    assert views.rate_class(0.0) == "rate-0" and views.rate_class(1.0) == "rate-10"
    assert views.rate_class(0.66) == "rate-7"
    assert views.percent(2 / 3) == "67%" and views.percent(None) == "-"
    assert views.usd(None) == "-" and views.usd(0.01234) == "$0.0123"
    assert views.duration(75) == "1m 15s" and views.duration(None) == "-"


def test_what_an_agent_wrote_is_escaped_on_the_trial_page() -> None:
    trial = {
        "id": "trial-1",
        "task_id": "task-1",
        "index": 0,
        "agent": HOSTILE,
        "model": None,
        "environment": "local",
        "queue_key": "default",
        "status": "failed",
        "outcome": "task_failure",
        "reward": 0.0,
        "rewards": {HOSTILE: 0},
        "error_type": "X",
        "error_message": HOSTILE,
        "n_input_tokens": None,
        "n_cache_tokens": None,
        "n_output_tokens": None,
        "cost_usd": None,
        "started_at": None,
        "finished_at": None,
        "attempts": [],
        "analysis": {"status": "success", "classification": "x", "summary": HOSTILE, "judge": None},
    }
    output = TrialOutput(
        logs=[Excerpt(f"agent/{HOSTILE}.log", 10, HOSTILE, HOSTILE, 5)],
        trajectory=Trajectory(
            "agent/trajectory.json",
            [Step("1", HOSTILE, "", HOSTILE, HOSTILE, [HOSTILE], [HOSTILE])],
            1,
        ),
        result=HOSTILE,
    )
    html = templates.get_template("trial_live.html").render(
        trial=trial,
        output=output,
        timeline=[],
        final=True,
        attempt=1,
        seconds_between=views.seconds_between,
    )
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_matrix_counts_each_cell_by_result_from_the_experiments_groups() -> None:
    def count(
        task: str, agent: str, status: str, outcome: str | None, result: str | None, n: int
    ) -> TaskStatusCount:
        return TaskStatusCount(task, agent, None, status, outcome, result, n, 0.0, 0.0)

    matrix = task_matrix(
        [
            count("t1", "a", "success", "success", "passed", 2),
            count("t1", "a", "success", "task_failure", "failed", 1),
            count("t1", "a", "failed", "infrastructure_error", "error", 1),
            count("t1", "a", "running", None, None, 3),
            count("t1", "b", "cancelled", "cancelled", "cancelled", 1),
        ]
    )
    assert matrix["t1"]["a/-"] == {
        "trials": 7,
        "finished": 4,
        "scored": 3,
        "passed": 2,
        "errored": 1,
        "pass_rate": 2 / 3,
    }
    # Nothing scored: no rate, not 0%.
    assert matrix["t1"]["b/-"]["pass_rate"] is None
    assert matrix["t1"]["b/-"]["errored"] == 1
