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


# Exit code of a start refused for a setting (as the API's on an exposed address without a key).
STORAGE_REFUSED_EXIT_CODE = 2


def storage_problem() -> str | None:
    """Why the storage of task archives cannot be used with these settings, in one line that
    names the setting to fix (StorageMisconfigured), or None when ``check()`` passes."""
    from oddish.storage import StorageError, get_storage

    try:
        get_storage().check()
    except StorageError as exc:
        return " ".join(str(exc).split())
    return None
