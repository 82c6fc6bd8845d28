"""Queue keys: the normalised model a trial's concurrency is counted against."""

DEFAULT_QUEUE_KEY = "default"
# The limit of every key without one of its own.
DEFAULT_LIMIT_KEY = "*"

# Agents that never call an LLM share one key.
_MODEL_FREE_AGENTS = {"oracle", "nop"}

_PROVIDER_BY_PREFIX = (
    ("claude", "anthropic"),
    ("gpt", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("codex", "openai"),
    ("gemini", "google"),
    ("grok", "xai"),
    ("deepseek", "deepseek"),
    ("mistral", "mistral"),
    ("qwen", "qwen"),
)


def normalize_model(model: str) -> str:
    """``claude-sonnet-4-5`` and ``Anthropic/Claude-Sonnet-4-5`` both become
    ``anthropic/claude-sonnet-4-5``."""
    name = model.strip().lower()
    if "/" in name:
        return name
    for prefix, provider in _PROVIDER_BY_PREFIX:
        if name.startswith(prefix):
            return f"{provider}/{name}"
    return name


def queue_key_for_trial(agent: str, model: str | None) -> str:
    if model and model.strip():
        return normalize_model(model)
    if agent in _MODEL_FREE_AGENTS:
        return DEFAULT_QUEUE_KEY
    return f"agent/{agent}"


def limit_key(key: str) -> str:
    """The queue key a limit given for ``key`` applies to: a model's limit holds however the
    model is spelled (``claude-sonnet-4-5`` limits ``anthropic/claude-sonnet-4-5``)."""
    key = key.strip()
    if key in (DEFAULT_QUEUE_KEY, DEFAULT_LIMIT_KEY) or key.startswith("agent/"):
        return key
    return normalize_model(key)
