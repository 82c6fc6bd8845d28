"""Connecting to Temporal, and registering oddish's search attributes where they are missing."""

from __future__ import annotations

import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from oddish import search_attributes as sa
from oddish.config import get_settings

log = logging.getLogger(__name__)


class TemporalNotConfigured(RuntimeError):
    pass


async def ensure_search_attributes(client: Client) -> list[str]:
    """Add any of our search attributes the server lacks; returns the names added."""
    namespace = client.namespace
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        key.name: IndexedValueType.ValueType(int(key.indexed_value_type))
        for key in sa.ALL
        if key.name not in existing.custom_attributes
    }
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as exc:
        # Another process registered them first.
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise
    log.info("registered search attributes %s", sorted(missing))
    return sorted(missing)


async def connect(address: str | None = None) -> Client:
    settings = get_settings()
    target = address or settings.temporal_address
    if not target:
        raise TemporalNotConfigured(
            "no Temporal server configured: set ODDISH_TEMPORAL_ADDRESS (e.g. localhost:7233)"
        )
    client = await Client.connect(target, namespace=settings.temporal_namespace)
    await ensure_search_attributes(client)
    return client
