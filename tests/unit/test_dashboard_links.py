"""Where the command line's dashboard links point: the original Oddish's settings, in its order."""

from __future__ import annotations

import pytest

from oddish.cli.client import dashboard_page, dashboard_url


@pytest.fixture(autouse=True)
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ODDISH_API_URL", "ODDISH_DASHBOARD_URL", "ODDISH_DEFAULT_DASHBOARD_URL"):
        monkeypatch.delenv(name, raising=False)


def test_the_api_pages_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dashboard_url() == "http://localhost:8000/ui"
    monkeypatch.setenv("ODDISH_API_URL", "https://oddish.example:8443/")
    assert dashboard_page("trials", "trial-1") == "https://oddish.example:8443/ui/trials/trial-1"


def test_dashboard_url_wins_over_the_default_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODDISH_DEFAULT_DASHBOARD_URL", "https://default.example/")
    assert dashboard_page("tasks", "task-1") == "https://default.example/tasks/task-1"
    monkeypatch.setenv("ODDISH_DASHBOARD_URL", " https://dash.example/o/ ")
    assert dashboard_page("experiments", "my exp") == "https://dash.example/o/experiments/my%20exp"
