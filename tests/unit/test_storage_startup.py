"""The API, the worker and ``oddish up`` check the storage of task archives at start: a setting
that makes it unusable refuses the start, in one line naming the setting, before any service
starts (no services needed: each is refused before it would reach one)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from oddish.api.app import create_app
from oddish.config import get_settings
from oddish.embedded import free_port
from oddish.storage import StorageMisconfigured

REPO = Path(__file__).resolve().parents[2]


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This environment without oddish's settings (nor AWS's), plus ``settings``; the database
    and Temporal point at nothing that answers, so a start that got past the check would fail
    otherwise (or hang), not pass."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ODDISH_", "AWS_")) and k != "DATABASE_URL"
    }
    return {
        **env,
        "ODDISH_HOME": str(tmp_path / "home"),
        "ODDISH_DATABASE_URL": f"postgresql+asyncpg://nobody@/none?host={tmp_path}/gone",
        "ODDISH_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "HARBOR_TELEMETRY": "0",
        **settings,
    }


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


NO_BUCKET = {"ODDISH_S3_ENABLED": "true"}


def a_file(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "not-a-dir").write_text("x")
    return {"ODDISH_STORAGE_DIR": str(tmp_path / "not-a-dir" / "storage")}


@pytest.mark.parametrize(
    ("command", "settings", "named"),
    [
        (["-m", "oddish.worker"], lambda _: NO_BUCKET, "ODDISH_S3_BUCKET"),
        (["-m", "oddish.api", "--no-workers"], lambda _: NO_BUCKET, "ODDISH_S3_BUCKET"),
        (["-m", "oddish.worker"], a_file, "ODDISH_STORAGE_DIR"),
        (["-m", "oddish.api"], a_file, "ODDISH_STORAGE_DIR"),
    ],
    ids=["worker-s3", "api-s3", "worker-dir", "api-dir"],
)
def test_api_and_worker_refuse_to_start_naming_the_setting(
    tmp_path: Path, command: list[str], settings, named: str
) -> None:
    done = run(command, clean_env(tmp_path, **settings(tmp_path)))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"oddish: {named}:"), done.stderr


def test_oddish_up_refuses_to_start_naming_the_setting(tmp_path: Path) -> None:
    env = clean_env(tmp_path, **NO_BUCKET)
    del env["ODDISH_DATABASE_URL"], env["ODDISH_TEMPORAL_ADDRESS"]  # up would embed both
    api, temporal, ui = (str(free_port()) for _ in range(3))
    flags = ["--port", api, "--temporal-port", temporal, "--ui-port", ui]
    done = run(["-m", "oddish.up", "--home", str(tmp_path / "up-home"), *flags], env)
    assert done.returncode != 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("oddish: could not start: ODDISH_S3_BUCKET:"), done.stderr
    assert not (tmp_path / "up-home" / "postgres").exists(), "refused before Postgres started"


def test_oddish_up_keeps_the_storage_and_task_cache_in_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oddish.up import keep_files_in_home

    for name in ("ODDISH_STORAGE_DIR", "ODDISH_TASK_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    keep_files_in_home(tmp_path, explicit=set())
    assert os.environ["ODDISH_STORAGE_DIR"] == str(tmp_path / "storage")
    assert os.environ["ODDISH_TASK_CACHE_DIR"] == str(tmp_path / "task-cache")
    monkeypatch.setenv("ODDISH_STORAGE_DIR", "/elsewhere")
    keep_files_in_home(tmp_path, explicit={"storage_dir"})
    assert os.environ["ODDISH_STORAGE_DIR"] == "/elsewhere", "a setting of its own is kept"


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


async def test_the_app_lifespan_checks_the_storage_before_the_database(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """For servers other than ``python -m oddish.api``: the app's own start-up checks too."""
    for name, value in clean_env(tmp_path, **NO_BUCKET).items():
        if name.startswith("ODDISH_"):
            settings_env.setenv(name, value)
    for name in ("ODDISH_S3_BUCKET", "ODDISH_STORAGE_DIR"):
        settings_env.delenv(name, raising=False)
    get_settings.cache_clear()
    app = create_app()
    with pytest.raises(StorageMisconfigured, match="ODDISH_S3_BUCKET"):
        async with app.router.lifespan_context(app):
            pass
