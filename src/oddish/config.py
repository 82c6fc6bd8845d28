"""Settings, read from the environment (prefix ``ODDISH_``) and an optional ``.env`` file."""

from __future__ import annotations

import ipaddress
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

MIB = 1024 * 1024


# The original Oddish's names of settings we renamed (fields of Settings only to be read under
# that name and applied to ours): not settings of their own, so env.example does not list them.
RENAMED_SETTINGS = frozenset({"model_concurrency_overrides", "max_retries", "max_task_upload_mb"})


def is_own_setting(name: str) -> bool:
    """Whether an environment variable is one of oddish's settings (matched, as pydantic-settings
    matches them, whatever its case)."""
    upper = name.upper()
    return upper.startswith("ODDISH_") or upper == "DATABASE_URL"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ODDISH_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # DATABASE_URL wins over ODDISH_DATABASE_URL, as in the original Oddish.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "ODDISH_DATABASE_URL")
    )
    home: Path = Field(default=Path.home() / ".oddish", description="data of embedded services")

    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_task_queue: str = "oddish"

    default_model_concurrency: int = Field(default=8, ge=1)
    # JSON object of queue key -> limit, applied to the database at worker start-up.
    model_concurrency: dict[str, int] = Field(default_factory=dict)

    # The API's uploads, and the copies of tasks submitted before task archives went to storage
    # (their records hold an absolute path here); new tasks are archives in storage.
    tasks_dir: Path = Path("/tmp/oddish-tasks")
    # Where Harbor writes each attempt's output on the worker; once stored (tasks/<task>/trials/
    # <trial>/attempt-N/ in storage) the attempt's directory is removed, unless keep_local_output.
    harbor_jobs_dir: Path = Path("/tmp/harbor-jobs")
    keep_local_output: bool = False

    # Object storage of task archives and trial outputs (oddish.storage): an S3 bucket (AWS or an
    # S3-compatible endpoint) when s3_enabled, else the local directory storage_dir (unset:
    # <home>/storage). The API and every worker must share it.
    storage_dir: Path | None = None
    # A local storage syncs each trial output file it moves into place (see LocalStorageConfig).
    storage_sync_outputs: bool = False
    s3_enabled: bool = False
    s3_bucket: str | None = None
    # Unset: boto3's own credential chain (AWS_* variables, ~/.aws, an instance or task role).
    s3_access_key: str | None = None
    s3_secret_key: str | None = Field(default=None, repr=False)
    # Unset: AWS S3 in s3_region.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # Keys go under this prefix in the bucket (normalised to one trailing '/').
    s3_prefix: str = ""
    # Each worker's local copies of the task archives it runs, unpacked, keyed by content
    # (unset: <home>/task-cache); least recently used ones go once they hold more than
    # task_cache_max_bytes (unpacked), never one a trial of the process is using.
    task_cache_dir: Path | None = None
    task_cache_max_bytes: int = Field(default=5 * 1024**3, ge=0)

    # Infrastructure failures of a trial are retried this many times in all.
    trial_max_attempts: int = Field(default=3, ge=1)
    trial_retry_initial_interval_sec: float = 5.0
    trial_retry_max_interval_sec: float = 300.0
    trial_heartbeat_timeout_sec: float = Field(default=30.0, gt=0)
    # An analysis or verdict silent this long (its worker died or froze) runs again elsewhere.
    analysis_heartbeat_timeout_sec: float = Field(default=30.0, gt=0)
    # The judge (oddish.judge): LiteLLM model names, e.g. anthropic/claude-sonnet-4-5 or
    # openai/gpt-5-mini; the verdict model defaults to the analysis model. A task asks for the
    # judge with run_analysis, refused while no analysis model is set.
    analysis_model: str | None = None
    verdict_model: str | None = None
    # An OpenAI-compatible server (vLLM, a gateway) and its key; unset: each provider's usual
    # variables (ANTHROPIC_API_KEY, OPENAI_API_KEY, ...).
    analysis_api_base: str | None = None
    analysis_api_key: str | None = Field(default=None, repr=False)
    # The most one judge prompt may hold, in tokens (about 4 characters each): each part (the
    # task's files, the agent's trajectory or logs, the verifier's output) is cut to its share,
    # keeping its head and tail.
    analysis_max_prompt_tokens: int = Field(default=60_000, ge=4_000)
    # One request to the judge's provider; a slower answer is a timeout, retried.
    analysis_request_timeout_sec: float = Field(default=300.0, gt=0)

    # Processes of a worker that run trials (oddish.worker.trial_processes); unset: one per core;
    # 0: trials run in the worker's main process.
    trial_processes: int | None = Field(default=None, ge=0, le=64)
    # A task of more trials than this runs them in batches of this many (child workflows), so
    # that no workflow history grows past Temporal's bounds: about 10 events per trial.
    trial_batch_size: int = Field(default=400, ge=1, le=800)
    # Upper bound of one trial attempt; Harbor's own timeouts normally end it much sooner.
    trial_start_to_close_timeout_sec: float = 24 * 3600.0

    # Workflows a worker keeps in memory between their workflow tasks (Temporal's sticky cache,
    # about 26 KB each). One evicted goes back to the shared queue, behind every task waiting
    # there, and is replayed from its history in a fresh sandbox when it next moves: with more
    # tasks running than this, most of a worker's workflow tasks are such replays.
    workflow_cache_size: int = Field(default=4000, ge=2, le=100_000)
    # Run workflow code in Temporal's sandbox, which imports the workflow's modules afresh for
    # every workflow a worker takes up (about 35 ms of CPU each: at a backlog of thousands of
    # tasks, most of a worker's time). Off, the workflows run as plain code; what keeps them
    # deterministic is then the import contracts (no I/O module reaches them) and the replay of
    # recorded histories, which runs in the sandbox.
    workflow_sandbox: bool = False

    # Seconds between the slot dispatcher's sweeps when no NOTIFY arrives.
    dispatcher_poll_interval_sec: float = 5.0
    # A slot holder whose heartbeat is older than this is checked against Temporal and reaped
    # when its workflow no longer runs.
    slot_lease_sec: float = 120.0

    harbor_telemetry: bool = False

    # When set, every API route but /health needs "Authorization: Bearer <key>".
    api_key: str | None = None
    # The address the API's port is published on when it differs from the one it binds (docker
    # compose publishes a container's 0.0.0.0 on the host's 127.0.0.1): the rule that an API
    # reachable beyond loopback needs api_key judges this address instead.
    api_published_host: str | None = None
    # Host header values the API answers (DNS rebinding); comma-separated, "*" for any,
    # "*.example.com" for subdomains. The address the API listens on is added when it is one.
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"]
    )
    upload_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    upload_max_unpacked_bytes: int = Field(default=500 * 1024 * 1024, ge=1)
    # Largest file an upload may unpack to (refused from its tar header, before it is read).
    upload_max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    # An upload no sweep has used for this long is deleted (sweeps copy it into the task's store).
    upload_retention_sec: float = Field(default=24 * 3600.0, gt=0)
    # Every other request body (JSON): a sweep of many configs fits many times over.
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    # Names a trial's ``${NAME}`` may draw from the worker's environment besides the provider keys
    # of oddish.env_references.AGENT_ENV_ALLOWLIST; comma-separated in the environment.
    agent_env_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # The original Oddish's names of settings we renamed: honoured, each with one warning naming
    # the new setting (see _renamed_settings); never read anywhere else.
    model_concurrency_overrides: dict[str, int] | None = Field(default=None, exclude=True)
    max_retries: int | None = Field(default=None, ge=0, exclude=True)
    max_task_upload_mb: int | None = Field(default=None, ge=1, exclude=True)

    @model_validator(mode="after")
    def _renamed_settings(self) -> Settings:
        """Apply the original's names onto ours, unless ours is set too (ours wins)."""
        explicit = self.model_fields_set
        if self.model_concurrency_overrides is not None:
            _deprecated("ODDISH_MODEL_CONCURRENCY_OVERRIDES", "ODDISH_MODEL_CONCURRENCY")
            if "model_concurrency" not in explicit:
                self.model_concurrency = self._positive_limits(self.model_concurrency_overrides)
        if self.max_retries is not None:
            _deprecated(
                "ODDISH_MAX_RETRIES",
                "ODDISH_TRIAL_MAX_ATTEMPTS",
                "attempts in all: retries + 1",
            )
            if "trial_max_attempts" not in explicit:
                self.trial_max_attempts = self.max_retries + 1
        if self.max_task_upload_mb is not None:
            _deprecated("ODDISH_MAX_TASK_UPLOAD_MB", "ODDISH_UPLOAD_MAX_BYTES", "in bytes")
            if "upload_max_bytes" not in explicit:
                self.upload_max_bytes = self.max_task_upload_mb * MIB
        return self

    @field_validator("agent_env_allowlist", mode="before")
    @classmethod
    def _comma_separated(cls, raw: object) -> object:
        if isinstance(raw, str):
            return [name.strip() for name in raw.split(",") if name.strip()]
        return raw

    @field_validator("agent_env_allowlist")
    @classmethod
    def _not_own_settings(cls, names: list[str]) -> list[str]:
        # Refused at start-up rather than ignored: whoever listed them believes trials get them.
        own = [name for name in names if is_own_setting(name)]
        if own:
            raise ValueError(f"oddish's own settings are never passed to a trial: {own}")
        return names

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _host_list(cls, raw: object) -> object:
        if isinstance(raw, str):
            return [name.strip() for name in raw.split(",") if name.strip()]
        return raw

    @field_validator("trusted_hosts")
    @classmethod
    def _host_patterns(cls, names: list[str]) -> list[str]:
        return [_host_pattern(name) for name in names]

    @field_validator("model_concurrency")
    @classmethod
    def _positive_limits(cls, limits: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in limits.items() if v < 1}
        if bad:
            raise ValueError(f"concurrency limits must be at least 1: {bad}")
        return limits


def _host_pattern(name: str) -> str:
    """A trusted Host as Starlette's TrustedHostMiddleware compares it: lower case, no port, IPv6
    in brackets; refused with the reason when it could never match."""
    host = name.strip().lower()
    if host == "*":
        return host
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            return f"[{ipaddress.IPv6Address(bare)}]"
        except ValueError:
            raise ValueError(f"trusted host {name!r}: list host names without a port") from None
    if "*" in host[1:] or (host.startswith("*") and not host.startswith("*.")):
        raise ValueError(f"trusted host {name!r}: a wildcard must look like '*.example.com'")
    if not host or "/" in host or " " in host:
        raise ValueError(f"trusted host {name!r} is not a host name")
    return host


def _deprecated(old: str, new: str, note: str = "") -> None:
    log.warning(
        "%s is deprecated: use %s%s (honoured for now)", old, new, f" ({note})" if note else ""
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()


def __getattr__(name: str) -> Any:
    # The original Oddish's ``from oddish.config import settings``: the same object as
    # get_settings(), read when first asked for (not at import, so tests may change the
    # environment first).
    if name == "settings":
        return get_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_concurrency_json(raw: str | None) -> dict[str, int]:
    """Parse ``--n-concurrent '{"model": n}'``, refusing anything but positive integer limits."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--n-concurrent is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError('--n-concurrent must be a JSON object such as {"openai/gpt-5": 4}')
    limits: dict[str, int] = {}
    for key, limit in value.items():
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"--n-concurrent: limit of {key!r} must be a positive integer")
        limits[str(key)] = limit
    return limits
