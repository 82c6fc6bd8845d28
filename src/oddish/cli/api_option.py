"""``--api URL`` on every command (the original Oddish's option), added to each command's
signature here rather than written into each one."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer

from oddish.cli.client import use_api_url

API_PARAMETER = inspect.Parameter(
    "api",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(
        None,
        "--api",
        show_default="$ODDISH_API_URL",
        help="the oddish API's URL, in place of ODDISH_API_URL",
    ),
    annotation=str | None,
)


def with_api_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command, taking ``--api URL`` besides its own options."""

    @functools.wraps(command)
    def wrapped(*args: Any, api: str | None = None, **kwargs: Any) -> Any:
        # Unset, it keeps what a group's --api chose (`oddish limits --api URL set ...`).
        if api is not None:
            use_api_url(api)
        return command(*args, **kwargs)

    # A copy: functools.wraps shares the command's own annotations dict.
    wrapped.__annotations__ = {**command.__annotations__, "api": str | None}
    signature = inspect.signature(command)
    wrapped.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), API_PARAMETER]
    )
    return wrapped
