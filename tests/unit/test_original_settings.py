"""The original Oddish's names of settings we renamed: honoured, each with one warning line
naming the new setting; ours win when both are set."""

from __future__ import annotations

import logging

import pytest

from oddish.cli.client import api_url, use_api_url
from oddish.config import Settings


def test_renamed_settings_are_honoured_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ODDISH_MODEL_CONCURRENCY_OVERRIDES", '{"openai/gpt-5": 3}')
    monkeypatch.setenv("ODDISH_MAX_RETRIES", "4")
    monkeypatch.setenv("ODDISH_MAX_TASK_UPLOAD_MB", "7")
    with caplog.at_level(logging.WARNING, logger="oddish.config"):
        settings = Settings(_env_file=None)
    assert settings.model_concurrency == {"openai/gpt-5": 3}
    assert settings.trial_max_attempts == 5  # 4 retries after the first attempt
    assert settings.upload_max_bytes == 7 * 1024 * 1024
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    for old, new in (
        ("ODDISH_MODEL_CONCURRENCY_OVERRIDES", "ODDISH_MODEL_CONCURRENCY"),
        ("ODDISH_MAX_RETRIES", "ODDISH_TRIAL_MAX_ATTEMPTS"),
        ("ODDISH_MAX_TASK_UPLOAD_MB", "ODDISH_UPLOAD_MAX_BYTES"),
    ):
        assert any(line.startswith(f"{old} is deprecated: use {new}") for line in lines)


def test_new_names_win_and_bad_old_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODDISH_MAX_RETRIES", "4")
    monkeypatch.setenv("ODDISH_TRIAL_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ODDISH_MODEL_CONCURRENCY_OVERRIDES", '{"a/b": 0}')
    with pytest.raises(ValueError, match="at least 1"):
        Settings(_env_file=None)
    monkeypatch.delenv("ODDISH_MODEL_CONCURRENCY_OVERRIDES")
    assert Settings(_env_file=None).trial_max_attempts == 2


def test_settings_by_the_original_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from oddish import config

    monkeypatch.setattr(config, "get_settings", lambda: "the settings")
    from oddish.config import settings

    assert settings == "the settings"


def test_api_url_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ODDISH_API_URL", raising=False)
    monkeypatch.delenv("ODDISH_DEFAULT_API_URL", raising=False)
    assert api_url() == "http://localhost:8000"
    monkeypatch.setenv("ODDISH_DEFAULT_API_URL", "http://fallback:1/")
    assert api_url() == "http://fallback:1"
    monkeypatch.setenv("ODDISH_API_URL", "http://chosen:2")
    assert api_url() == "http://chosen:2"
    use_api_url("http://option:3")
    try:
        assert api_url() == "http://option:3"
    finally:
        use_api_url(None)
