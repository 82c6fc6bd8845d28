"""oddish.api.exposure: an API reachable beyond loopback needs ODDISH_API_KEY (both
``python -m oddish.api`` and ``oddish up`` refuse to start, exit code 2), and the API answers only
trusted Host names (DNS rebinding). No services needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.middleware.trustedhost import TrustedHostMiddleware
from typer.testing import CliRunner

from helpers import RecordingApp
from oddish.api import exposure
from oddish.api.exposure import check_exposure, guard_hosts, is_loopback, trusted_hosts
from oddish.config import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
EXPOSURE_SETTINGS = ("ODDISH_API_KEY", "ODDISH_API_PUBLISHED_HOST", "ODDISH_TRUSTED_HOSTS")


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in EXPOSURE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


# --- the key rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"]
)
def test_loopback_needs_no_key(host: str) -> None:
    assert is_loopback(host)
    assert check_exposure(host, None) is None
    assert check_exposure(host, "") is None


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "myhost", "localhost.evil.example"]
)
def test_beyond_loopback_needs_a_key(host: str) -> None:
    assert not is_loopback(host)
    for key in (None, "", "   "):
        reason = check_exposure(host, key)
        assert reason is not None and "ODDISH_API_KEY" in reason and "127.0.0.1" in reason
    assert check_exposure(host, "s3cret") is None


def test_the_published_address_is_judged_when_set(settings_env: pytest.MonkeyPatch) -> None:
    """compose binds 0.0.0.0 in the container and publishes it on the host's 127.0.0.1."""
    assert exposure.exposure_problem("0.0.0.0") is not None
    set_env(settings_env, ODDISH_API_PUBLISHED_HOST="127.0.0.1")
    assert exposure.exposure_problem("0.0.0.0") is None
    set_env(settings_env, ODDISH_API_PUBLISHED_HOST="0.0.0.0")
    assert exposure.exposure_problem("0.0.0.0") is not None
    assert exposure.exposure_problem("127.0.0.1") is not None, "published further than bound"
    set_env(settings_env, ODDISH_API_KEY="s3cret")
    assert exposure.exposure_problem("0.0.0.0") is None


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in EXPOSURE_SETTINGS}
    return {**env, "HARBOR_TELEMETRY": "0"}


def test_python_m_oddish_api_refuses_to_start_open_to_the_network(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oddish.api", "--host", "0.0.0.0", "--home", str(tmp_path / "h")],
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "ODDISH_API_KEY" in result.stderr and "0.0.0.0" in result.stderr
    assert not (tmp_path / "h").exists(), "refused before any service starts"


def test_oddish_up_refuses_to_start_open_to_the_network(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from oddish.main import app

    home = tmp_path / "home"
    result = CliRunner().invoke(app, ["up", "--host", "0.0.0.0", "--home", str(home)])
    assert result.exit_code == 2, result.output
    assert "ODDISH_API_KEY" in result.output
    assert not home.exists(), "refused before the home is locked or anything starts"


# --- trusted hosts ------------------------------------------------------------------------------


def test_trusted_hosts_default_to_loopback_names(settings_env: pytest.MonkeyPatch) -> None:
    assert trusted_hosts() == ["localhost", "127.0.0.1", "[::1]"]
    assert trusted_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert trusted_hosts("0.0.0.0") == trusted_hosts("::") == trusted_hosts()
    assert trusted_hosts("10.0.0.5") == ["localhost", "127.0.0.1", "[::1]", "10.0.0.5"]
    assert trusted_hosts("fd00::5")[-1] == "[fd00::5]"
    set_env(settings_env, ODDISH_API_PUBLISHED_HOST="192.168.1.20")
    assert trusted_hosts("0.0.0.0")[-1] == "192.168.1.20"


def test_trusted_hosts_setting(settings_env: pytest.MonkeyPatch) -> None:
    set_env(settings_env, ODDISH_TRUSTED_HOSTS="Oddish.Example.COM, *.example.org,::1")
    assert trusted_hosts() == ["oddish.example.com", "*.example.org", "[::1]"]
    set_env(settings_env, ODDISH_TRUSTED_HOSTS="*")
    assert trusted_hosts("10.0.0.5") == ["*"]
    for bad in ("example.com:8000", "foo*.example.com", "*example.com", "a/b"):
        with pytest.raises(ValidationError) as info:
            Settings(_env_file=None, trusted_hosts=bad)  # type: ignore[arg-type]
        assert "trusted host" in str(info.value), bad


async def _status(app: Any, host: str, body: bytes = b"") -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as http:
        response = await http.post("/tasks/sweep", content=body, headers={"Host": host})
        return response.status_code


async def test_the_guard_refuses_other_hosts_unread(settings_env: pytest.MonkeyPatch) -> None:
    inner = RecordingApp()
    guarded = guard_hosts(inner, "0.0.0.0")
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
        assert await _status(guarded, host) == 200, host
    inner.bytes_read = 0
    for host in ("evil.example:8000", "localhost.evil.example", "10.0.0.5:8000", "[::2]"):
        assert await _status(guarded, host, b"x" * 10_000) == 400, host
    assert inner.bytes_read == 0, "a refused request's body is never read"
    assert await _status(guard_hosts(inner, "10.0.0.5"), "10.0.0.5:8000") == 200

    await guarded({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert inner.scopes[-1] == "lifespan", "start-up and shutdown pass through"


async def test_both_entry_points_serve_the_guarded_app(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    from oddish import embedded, up
    from oddish.api import __main__ as api_main

    served: list[Any] = []
    settings_env.setattr(embedded, "ensure_embedded_services", lambda home: None)
    settings_env.setattr(api_main.uvicorn, "run", lambda app, **kwargs: served.append(app))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(api_main.app, ["--host", "127.0.0.1", "--no-workers"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 0, result.output

    class Served(Exception):
        pass

    def config(app: Any, **kwargs: Any) -> None:
        served.append(app)
        raise Served

    settings_env.setattr(uvicorn, "Config", config)
    endpoints = up.Endpoints(api="", temporal_address="", temporal_ui=None, database="")
    with pytest.raises(Served):
        up._serve(up.SignalGate(), None, endpoints, 0.0, "127.0.0.1")  # type: ignore[arg-type]

    assert len(served) == 2
    for app in served:
        assert isinstance(app, TrustedHostMiddleware)
        assert await _status(app, "evil.example") == 400
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000") as h:
            assert (await h.get("/openapi.json")).status_code == 200
