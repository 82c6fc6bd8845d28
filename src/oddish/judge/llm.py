"""One question to the judge through LiteLLM (any provider), answered as JSON of a schema.

- A provider that is busy or failing (429, 5xx, a timeout, a dropped connection) is asked again
  after a backoff (1 s doubling to 60 s) or the ``Retry-After`` it sent (up to 10 min), for as
  long as it takes: a busy provider costs time, never an analysis. The caller heartbeats.
- An answer that is not JSON of the schema is asked for again, up to ``MALFORMED_ASKS`` in all;
  then the call ends with the error and the raw answers kept.
- Any other refusal (a bad key, an unknown model, a request the provider rejects) ends the call
  with that error at once: asking again would not change it.

Tokens and cost (LiteLLM's bundled cost map; ``LITELLM_LOCAL_MODEL_COST_MAP`` keeps it from
fetching one) are summed over every answer received.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from oddish.config import Settings

# Before LiteLLM is imported anywhere: its cost map comes with it, nothing is fetched.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

log = logging.getLogger(__name__)

MALFORMED_ASKS = 3
FIRST_DELAY_SEC = 1.0
MAX_DELAY_SEC = 60.0
MAX_RETRY_AFTER_SEC = 600.0
# Kept of each raw answer that could not be read.
MAX_RAW_CHARS = 20_000


@dataclass
class JudgeAnswer[T: BaseModel]:
    model: str
    answer: T | None = None
    # Why there is no answer; None when there is one.
    error: str | None = None
    # The answers that could not be read, as received (cut to MAX_RAW_CHARS each).
    raw_answers: list[str] = field(default_factory=list)
    n_input_tokens: int = 0
    n_output_tokens: int = 0
    cost_usd: float | None = None
    # Times the provider was busy or failing and was asked again.
    transient_failures: int = 0


def _transient_errors() -> tuple[type[BaseException], ...]:
    import litellm

    return (
        litellm.RateLimitError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
        litellm.APIConnectionError,
        litellm.Timeout,
    )


def retry_after_sec(exc: BaseException) -> float | None:
    """The wait the provider asked for (``Retry-After``: seconds or an HTTP date), if any."""
    headers: Any = None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        headers = getattr(exc, "litellm_response_headers", None)
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SEC)


def _cost(response: Any, model: str) -> float | None:
    import litellm

    try:
        return float(litellm.completion_cost(completion_response=response, model=model))
    except Exception:
        # A model the cost map does not know (a local server, a new name): cost unknown.
        return None


async def ask[T: BaseModel](
    settings: Settings,
    model: str,
    messages: list[dict[str, str]],
    answer_type: type[T],
    response_format: dict[str, Any],
) -> JudgeAnswer[T]:
    """Ask ``model`` until it answers JSON of ``answer_type`` (or gives up, see the module)."""
    import litellm

    transient = _transient_errors()
    result: JudgeAnswer[T] = JudgeAnswer(model=model)
    delay = FIRST_DELAY_SEC
    asks = 0
    while True:
        try:
            response = await litellm.acompletion(
                model=model,
                messages=messages,
                response_format=response_format,
                api_base=settings.analysis_api_base or None,
                api_key=settings.analysis_api_key or None,
                timeout=settings.analysis_request_timeout_sec,
                # We retry, with the provider's Retry-After: neither LiteLLM nor the SDK below it.
                num_retries=0,
                max_retries=0,
            )
        except transient as exc:
            result.transient_failures += 1
            wait = retry_after_sec(exc)
            wait = delay if wait is None else wait
            delay = min(delay * 2, MAX_DELAY_SEC)
            log.warning("judge %s: %s; asking again in %.1fs", model, type(exc).__name__, wait)
            await asyncio.sleep(wait)
            continue
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:MAX_RAW_CHARS]
            return result
        asks += 1
        usage = getattr(response, "usage", None)
        result.n_input_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        result.n_output_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        cost = _cost(response, model)
        if cost is not None:
            result.cost_usd = (result.cost_usd or 0.0) + cost
        content = response.choices[0].message.content or ""
        try:
            result.answer = answer_type.model_validate_json(content)
            return result
        except ValidationError as exc:
            result.raw_answers.append(content[:MAX_RAW_CHARS])
            if asks >= MALFORMED_ASKS:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in first.get("loc", ())) or "the top"
                result.error = (
                    f"the judge's answer did not fit the schema {asks} times "
                    f"(last: {first.get('msg')} at {where})"
                )
                return result
            log.warning("judge %s: an answer that does not fit the schema; asking again", model)
