"""What the app keeps for its routes: its Temporal connection."""

from __future__ import annotations

from fastapi import Request
from temporalio.client import Client

from oddish.temporal_gateway import TemporalConnection


def temporal(request: Request) -> Client:
    """The API's Temporal client; TemporalUnavailable (a 503) until it has connected."""
    connection: TemporalConnection = request.app.state.temporal
    return connection.require()
