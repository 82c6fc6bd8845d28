"""schemathesis over the real API's /openapi.json (uvicorn, Postgres, Temporal): requests made
from the schema, valid and invalid, to every operation; none may answer a 5xx, and every status
code answered is one the schema declares (schemathesis' ``status_code_conformance``), and every
answer fits the schema declared for it (``response_schema_conformance``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from oddish.db.connection import plain_dsn

pytestmark = pytest.mark.timeout(300)

# Valid and invalid requests together, per operation: about 1,800 requests (hypothesis stops
# early where there is little to vary), 20 s for the whole API on 2 cores.
EXAMPLES_PER_OPERATION = 100
REQUEST_TIMEOUT_SEC = 30


@pytest.fixture
def limits_restored(oddish_env: dict[str, str]) -> Iterator[None]:
    """PUT /limits/{queue_key} is fuzzed too: the limits of the session's database come back."""
    dsn = plain_dsn(oddish_env["ODDISH_DATABASE_URL"])

    async def snapshot() -> dict[str, int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT key, max_concurrent FROM queue_limits")
            return {row["key"]: row["max_concurrent"] for row in rows}
        finally:
            await conn.close()

    async def restore(before: dict[str, int]) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute(
                    "DELETE FROM queue_limits WHERE NOT (key = ANY($1::text[]))", list(before)
                )
                for key, limit in before.items():
                    await conn.execute(
                        "UPDATE queue_limits SET max_concurrent = $2 WHERE key = $1", key, limit
                    )
        finally:
            await conn.close()

    before = asyncio.run(snapshot())
    yield
    asyncio.run(restore(before))


def test_no_request_made_from_the_schema_is_a_server_error_or_undocumented(
    api: str, limits_restored: None
) -> None:
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    server_errors: list[str] = []
    undocumented: dict[str, set[int]] = defaultdict(set)
    off_schema: list[str] = []
    calls = 0

    def exercise(case: Case) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=api, timeout=REQUEST_TIMEOUT_SEC)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except (Failure, FailureGroup):
            server_errors.append(
                f"{case.operation.label} -> {response.status_code}: {response.text[:300]}\n"
                f"    {case.as_curl_command()}"
            )
        try:
            case.validate_response(response, checks=[status_code_conformance])
        except (Failure, FailureGroup):
            undocumented[case.operation.label].add(response.status_code)
        try:
            case.validate_response(response, checks=[response_schema_conformance])
        except (Failure, FailureGroup) as exc:
            off_schema.append(f"{case.operation.label} -> {response.status_code}: {exc}"[:600])

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same requests on every run: CI stays reproducible
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Case) -> None:
            exercise(case)

        run()

    print(f"\n{calls} requests over {len(operations)} operations")
    for label, codes in sorted(undocumented.items()):
        print(f"undocumented status codes: {label}: {sorted(codes)}")
    assert not server_errors, "\n".join(server_errors)
    assert not undocumented, f"status codes the schema does not declare: {dict(undocumented)}"
    assert not off_schema, "answers that do not fit their schema:\n" + "\n".join(off_schema[:20])
