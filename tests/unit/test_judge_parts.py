"""oddish.judge without a provider: the answer's schema, the reward's authority, what the judge is
shown of a huge file, and how the prompts stay within their budget."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from oddish.config import Settings
from oddish.judge import evidence, prompts
from oddish.judge.answers import (
    Classification,
    TaskJudgement,
    TrialJudgement,
    corrected,
    response_format,
)
from oddish.judge.llm import retry_after_sec
from oddish.judge.models import JudgeNotConfigured, judge_models
from oddish.storage.local import LocalStorage
from oddish.stored_files import ObjectFolder, TaskArchive
from oddish.task_store import pack_task_dir


def judgement(classification: Classification) -> TrialJudgement:
    return TrialJudgement(
        classification=classification,
        subtype="Wrong Approach",
        evidence="e",
        root_cause="r",
        recommendation="c",
    )


@pytest.mark.parametrize(
    ("said", "reward", "recorded"),
    [
        (Classification.GOOD_SUCCESS, 1.0, Classification.GOOD_SUCCESS),
        (Classification.GOOD_SUCCESS, 0.0, Classification.GOOD_FAILURE),
        (Classification.BAD_SUCCESS, 0.5, Classification.BAD_FAILURE),
        (Classification.BAD_SUCCESS, None, Classification.BAD_FAILURE),
        (Classification.GOOD_FAILURE, 1.0, Classification.GOOD_SUCCESS),
        (Classification.BAD_FAILURE, 1.0, Classification.BAD_SUCCESS),
        (Classification.HARNESS_ERROR, None, Classification.HARNESS_ERROR),
        (Classification.HARNESS_ERROR, 1.0, Classification.GOOD_SUCCESS),
        (Classification.BAD_FAILURE, 0.0, Classification.BAD_FAILURE),
    ],
)
def test_the_reward_is_authoritative(
    said: Classification, reward: float | None, recorded: Classification
) -> None:
    fixed, replaced = corrected(judgement(said), reward)
    assert fixed.classification == recorded
    assert replaced == (None if recorded == said else said.value)


def test_the_schemas_are_strict() -> None:
    for answer, name in ((TrialJudgement, "trial_analysis"), (TaskJudgement, "task_verdict")):
        form = response_format(answer, name)
        schema = form["json_schema"]["schema"]
        assert form["json_schema"]["name"] == name and form["json_schema"]["strict"] is True
        assert schema["additionalProperties"] is False
        assert schema["required"] == sorted(schema["properties"])
        assert "maxLength" not in json.dumps(schema)


def test_the_models_come_from_the_settings_or_the_call() -> None:
    with pytest.raises(JudgeNotConfigured, match="ODDISH_ANALYSIS_MODEL"):
        judge_models(Settings(analysis_model=None))
    only = judge_models(Settings(analysis_model="openai/a"))
    assert (only.analysis, only.verdict) == ("openai/a", "openai/a")
    both = judge_models(Settings(analysis_model="openai/a", verdict_model="openai/b"))
    assert (both.analysis, both.verdict) == ("openai/a", "openai/b")
    given = judge_models(Settings(analysis_model=None), "anthropic/x")
    assert (given.analysis, given.verdict) == ("anthropic/x", "anthropic/x")


class _RateLimited(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("429")
        self.litellm_response_headers = headers


def test_retry_after_is_honoured_and_bounded() -> None:
    assert retry_after_sec(_RateLimited({"retry-after": "7"})) == 7.0
    assert retry_after_sec(_RateLimited({"retry-after": "100000"})) == 600.0
    assert retry_after_sec(_RateLimited({})) is None
    assert retry_after_sec(Exception("no headers")) is None


def test_a_huge_output_file_costs_its_head_and_tail(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    body = b"HEAD\n" + b"x" * 5_000_000 + b"MIDDLE\n" + b"y" * 5_000_000 + b"TAIL\n"
    storage.put_bytes("out/agent/log.txt", body)
    storage.put_bytes("out/agent/blob.log", b"\x00\x01" * 1000)
    output = ObjectFolder(storage, "out/")
    parts = evidence.trial_parts(output, 10_000)
    text = parts.agent.files["agent/log.txt"]
    assert text.startswith("HEAD") and text.rstrip().endswith("TAIL")
    assert "MIDDLE" not in text and "bytes cut ...]" in text
    assert len(text) < 10_000
    assert "agent/blob.log: binary, 2000 bytes (not shown)" in parts.agent.notes


def test_a_task_archive_is_cut_the_same_way(tmp_path: Path) -> None:
    task = tmp_path / "task"
    (task / "tests").mkdir(parents=True)
    (task / "instruction.md").write_text("Do the thing.\n")
    (task / "task.toml").write_text('schema_version = "1.4"\n')
    (task / "tests" / "test.sh").write_text("#!/bin/sh\n" + "echo check\n" * 100_000 + "END\n")
    (task / "tests" / "data.bin").write_bytes(b"\x00" * 10)
    packed = io.BytesIO()
    pack_task_dir(task, packed)
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("tasks/t/a.tar.gz", packed.getvalue())
    part = evidence.task_part(TaskArchive(storage, "tasks/t/a.tar.gz"), 4_000)
    assert part.files["instruction.md"] == "Do the thing.\n"
    script = part.files["tests/test.sh"]
    assert script.startswith("#!/bin/sh") and script.rstrip().endswith("END")
    assert len(script) < 4_000
    assert "tests/data.bin" not in part.files


def test_the_verdict_prompt_sums_up_what_does_not_fit() -> None:
    analyses = [
        {
            "index": i,
            "agent": "a",
            "model": None,
            "reward": 0.0,
            "classification": "GOOD_FAILURE",
            "subtype": "Wrong Approach",
            "root_cause": "x" * 500,
        }
        for i in range(1_000)
    ]
    messages = prompts.verdict_messages(
        {"name": "t"}, {"overall": {}}, analyses, evidence.Part("The task"), 20_000
    )
    user = messages[-1]["content"]
    assert len(user) < 21_000
    assert "More analyses, counted by class and subtype:" in user
    shown = user.count("- trial ")
    assert f"- GOOD_FAILURE / Wrong Approach: {1_000 - shown}" in user
