"""Inputs and outputs of the workflow and its activities: plain dataclasses, safe in the workflow
sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class TrialRef:
    trial_id: str
    index: int
    agent: str
    model: str | None
    queue_key: str
    environment: str


@dataclass
class TrialRetryPolicy:
    max_attempts: int
    initial_interval_sec: float
    max_interval_sec: float
    heartbeat_timeout_sec: float
    start_to_close_timeout_sec: float


@dataclass
class TaskWorkflowInput:
    task_id: str
    experiment_id: str
    task_name: str
    priority: int
    run_analysis: bool
    trials: list[TrialRef]
    retry_policy: TrialRetryPolicy
    # A re-run of a finished workflow: the run number each trial to run again gets, and the
    # final status of the trials left as they were (whose results stand).
    run_numbers: dict[str, int] = field(default_factory=dict)
    settled: dict[str, str] = field(default_factory=dict)
    # Inputs recorded before it existed replay with the default.
    analysis_heartbeat_timeout_sec: float = 30.0
    # A task of more trials than this runs them in batches (child workflows) of this many.
    batch_size: int = 400
    # Each finished trial gets an analysis activity (the judge's). Without the judge, the
    # verdict records every trial's rule-based analysis at once instead. Inputs recorded before
    # it existed analysed every trial.
    analyse_each_trial: bool = True


@dataclass
class SlotRequest:
    """Ask for a slot for each of ``trials``; the dispatcher signals ``slot_granted`` per trial.

    With ``grant_at_once``, the slots free now for the trials at the head of their keys' lines
    are claimed in the request's own transaction and returned, not signalled."""

    workflow_id: str
    task_id: str
    priority: int
    trials: list[TrialRef]
    run_number: int = 1
    grant_at_once: bool = False


@dataclass
class SlotGrant:
    trial_id: str
    slot: int
    run_number: int = 1
    # Attempts of this run the trial already spent in a slot lane (``RunTrialInput.lane``): a
    # trial whose attempt failed there, to be tried again, goes on in an activity of its own.
    attempts_spent: int = 0


@dataclass
class RetryTrialsRequest:
    """The ``retry_trials`` update: run these failed or cancelled trials again."""

    trial_ids: list[str]


@dataclass
class RetryTrialsResult:
    task_id: str
    retried: list[str]


@dataclass
class RunTrialInput:
    task_id: str
    trial_id: str
    run_number: int
    max_attempts: int
    # The workflow takes a grant from the trial's outcome (``TrialOutcome.next_grant``): the
    # trial may hand its slot to the next trial in line of the same workflow.
    hand_over: bool = False
    # A slot lane's id: the activity goes on, on the slot its trial gives back, to run each trial
    # that slot is handed to (``TrialOutcome.lane``), as long as the lane's bounds allow; the
    # attempts it opens record the id. None: the activity runs this trial only.
    lane: str | None = None
    # Attempts of this run spent before this activity (in a slot lane): they count towards
    # ``max_attempts`` with the activity's own.
    attempts_spent: int = 0


class HasTrialOutcome(Protocol):
    """A trial row or an attempt's result fields: whatever carries a trial's outcome."""

    @property
    def status(self) -> str: ...
    @property
    def outcome(self) -> str | None: ...
    @property
    def reward(self) -> float | None: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...


@dataclass
class TrialOutcome:
    trial_id: str
    status: str
    outcome: str | None
    reward: float | None
    error_type: str | None = None
    error_message: str | None = None
    # The slot this trial gave back, handed to the workflow's next trial in line.
    next_grant: SlotGrant | None = None
    # The run of the trial this outcome is of (reported for the trials of a slot lane).
    run_number: int | None = None
    # The trials the activity ran after this one, on the slot handed over (a slot lane), in
    # order. Their errors are in the records, not here: a lane's result stays small.
    lane: list[TrialOutcome] = field(default_factory=list)

    @classmethod
    def of(cls, trial_id: str, source: HasTrialOutcome) -> TrialOutcome:
        return cls(
            trial_id,
            source.status,
            source.outcome,
            source.reward,
            source.error_type,
            source.error_message,
        )


@dataclass
class FailTrialInput:
    """Record a trial as failed (and give its slot back) when every attempt of it is spent."""

    trial_id: str
    run_number: int
    error_type: str
    error_message: str
    # The slot lane the trial's activity began (``RunTrialInput.lane``): the trials it ran after
    # this one are reported too. The one it was running is handed back to the workflow with its
    # slot when it has attempts left (of ``max_attempts``), else failed with it.
    lane: str | None = None
    max_attempts: int = 0


@dataclass
class TaskStatusUpdate:
    task_id: str
    status: str
    error_message: str | None = None


@dataclass
class AnalyzeTrialInput:
    trial_id: str
    # Judge with this model instead of the task's (judging again with another model).
    model: str | None = None


@dataclass
class VerdictInput:
    task_id: str
    # Judge with this model instead of the task's (judging again with another model).
    model: str | None = None


@dataclass
class TrialBatchResult:
    """What a batch of a large task's trials ended with: each trial's status, and the error of
    an analysis that failed for good."""

    statuses: dict[str, str]
    analysis_error: str | None = None


@dataclass
class JudgeAgainInput:
    """The judge again on a finished task: these trials' analyses, then (with ``verdict``) the
    task's verdict, by these models."""

    task_id: str
    trial_ids: list[str]
    verdict: bool
    analysis_model: str
    verdict_model: str
    analysis_heartbeat_timeout_sec: float = 30.0


@dataclass
class TaskProgress:
    """What the workflow's ``progress`` query answers: the trials as the workflow knows them. A
    trial a slot lane runs counts as waiting until the lane reports it; the records (and every
    view made of them) follow each trial as it goes."""

    task_id: str
    status: str
    trials_total: int
    trials_waiting: int
    trials_running: int
    trials_finished: int
    trial_statuses: dict[str, str] = field(default_factory=dict)
