"""Request bodies built from the API's own models (oddish.request_bodies), so a field the API
renames or bounds is caught here, before anything is sent."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError

from oddish.request_bodies import SweepRequest, SweepSettings


def _reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )


def checked_sweep(shared: dict[str, Any]) -> dict[str, Any]:
    """The part of a sweep every task of a run shares, checked against the model; bad values
    exit 2 with the reason."""
    try:
        SweepSettings.model_validate(shared)
    except ValidationError as exc:
        raise typer.BadParameter(_reason(exc), param_hint="the sweep") from None
    return shared


def sweep_request_body(shared: dict[str, Any], **source: Any) -> dict[str, Any]:
    """The body of one POST /tasks/sweep: the shared part plus where the task comes from
    (``upload_id`` or ``task_id``) and its submission key."""
    return SweepRequest.model_validate({**shared, **source}).model_dump(mode="json")


def run_sweep_field(shared: dict[str, Any], *, submission_key: str) -> str:
    """The ``sweep`` field of one POST /tasks/run: the shared part and the task's key, as JSON."""
    return SweepSettings.model_validate(
        {**shared, "submission_key": submission_key}
    ).model_dump_json()
