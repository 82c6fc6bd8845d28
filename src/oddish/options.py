"""Command-line options shared by ``python -m oddish.worker`` and ``python -m oddish.api``."""

import typer

from oddish.config import parse_concurrency_json

N_CONCURRENT_HELP = "per queue key limits as JSON, e.g. '{\"openai/gpt-5\": 4}'"


def limits_option(raw: str | None) -> dict[str, int]:
    """``--n-concurrent``, parsed; a bad value is a usage error naming the option."""
    try:
        return parse_concurrency_json(raw)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--n-concurrent") from exc
