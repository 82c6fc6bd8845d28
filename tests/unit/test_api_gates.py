"""The API's gates, before any route runs: the key is checked before a body is read, every body
is bounded, and bad input or a database that is down never becomes a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from helpers import RecordingApp
from oddish.api.app import create_app
from oddish.api.auth import ApiKeyGate
from oddish.api.body_limit import BodySizeLimit
from oddish.config import get_settings
from oddish.db.connection import dispose_engine


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def client_of(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")  # type: ignore[arg-type]


async def test_a_request_without_the_key_is_refused_unread(
    settings_env: pytest.MonkeyPatch,
) -> None:
    settings_env.setenv("ODDISH_API_KEY", "s3cret")
    inner = RecordingApp()
    async with client_of(ApiKeyGate(inner)) as http:
        refused = await http.post("/tasks/sweep", content=b"x" * 1_000_000)
        assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
        assert not inner.called, "the body of a request without the key is never read"
        wrong = await http.post("/tasks/sweep", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await http.post(
            "/tasks/sweep", content=b"{}", headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200 and inner.bytes_read == 2
        assert (await http.get("/health")).status_code == 200


async def test_every_body_is_bounded_declared_or_chunked() -> None:
    inner = RecordingApp()
    gate = BodySizeLimit(inner, limits={"/tasks/upload": 10_000}, default_max_bytes=1_000)
    async with client_of(gate) as http:
        declared = await http.post("/tasks/sweep", content=b"x" * 1_001)
        assert declared.status_code == 413 and "limit" in declared.json()["detail"]
        assert inner.bytes_read == 0, "a declared oversize body is refused before it is read"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"x" * 100

        chunked = await http.post("/tasks/sweep", content=chunks())
        assert chunked.status_code == 413
        assert inner.bytes_read <= 1_100, "reading stops at the limit"
        upload = await http.post("/tasks/upload", content=b"x" * 5_000)
        assert upload.status_code == 200, "uploads have their own, larger limit"


def deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.fixture
async def app_without_services(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[object]:
    """The real app, its lifespan not run: Postgres is a unix socket that does not exist."""
    settings_env.setenv(
        "ODDISH_DATABASE_URL", f"postgresql+asyncpg://nobody@/nothing?host={tmp_path}/gone"
    )
    settings_env.delenv("ODDISH_API_KEY", raising=False)
    yield create_app()
    # The process's engine now points at the missing server: later tests get their own.
    await dispose_engine()


@pytest.mark.parametrize("levels", [40, 1_000, 100_000])
async def test_deeply_nested_json_is_a_422_without_echo(
    app_without_services: object, levels: int
) -> None:
    body = {"upload_id": "u", "configs": [{"agent_config": {"kwargs": deep(levels)}}]}
    async with client_of(app_without_services) as http:
        response = await http.post(
            "/tasks/sweep",
            content=json.dumps(body) if levels < 10_000 else '{"a":' * levels + "1" + "}" * levels,
            headers={"content-type": "application/json"},
        )
    assert response.status_code in (400, 422), response.text
    assert len(response.content) < 2_000, "the input is not echoed back"


async def test_a_database_that_is_down_is_a_503(app_without_services: object) -> None:
    async with client_of(app_without_services) as http:
        health = await http.get("/health")
        tasks = await http.get("/tasks")
    for response in (health, tasks):
        assert response.status_code == 503, response.text
        assert "database cannot be reached" in response.json()["detail"]


async def test_inputs_schemathesis_found_are_422s(app_without_services: object) -> None:
    async with client_of(app_without_services) as http:
        # A key that is only a control character: blank once normalised.
        blank_key = await http.put("/limits/%1F", json={"limit": 1})
        # An empty submission key was stored, and the second sweep with it hit a unique index.
        empty_key = await http.post(
            "/tasks/sweep", json={"upload_id": "u", "configs": [{}], "submission_key": ""}
        )
    assert blank_key.status_code == 422, blank_key.text
    assert "empty" in blank_key.json()["detail"]
    assert empty_key.status_code == 422, empty_key.text
    assert empty_key.json()["detail"][0]["loc"][-1] == "submission_key"
