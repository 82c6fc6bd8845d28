"""Where task archives and trial outputs are stored: a local directory, or an S3 bucket.

One interface (:class:`BaseStorage`), two backends chosen by name, as Harbor chooses its
environments: ``s3`` when ``ODDISH_S3_ENABLED`` is true, else ``local`` (``ODDISH_STORAGE_DIR``,
default ``<ODDISH_HOME>/storage``). Each backend is described by a pydantic config built from the
settings; its module is imported only when it is used (boto3 only for S3)::

    storage = get_storage()          # the process's store, built once from the settings
    storage.check()                  # at start-up: StorageMisconfigured names the setting to fix
    storage.put_file(task_archive_key(task_id, content_hash), archive)

A store shared by the API and every worker must be the same place: S3, or a directory every
process sees.
"""

from __future__ import annotations

import importlib
import threading
from typing import NamedTuple

from pydantic import SecretStr

from oddish.config import Settings, get_settings
from oddish.storage.base import (
    BaseStorage,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    StorageMisconfigured,
    StorageUnavailable,
)
from oddish.storage.configs import (
    LocalStorageConfig,
    S3StorageConfig,
    StorageConfig,
    StorageType,
)
from oddish.storage.keys import task_archive_key, task_prefix, trial_output_prefix

__all__ = [
    "BaseStorage",
    "LocalStorageConfig",
    "ObjectInfo",
    "ObjectNotFound",
    "S3StorageConfig",
    "StorageConfig",
    "StorageError",
    "StorageMisconfigured",
    "StorageType",
    "StorageUnavailable",
    "config_from_settings",
    "get_storage",
    "reset_storage",
    "storage_from_config",
    "storage_from_settings",
    "task_archive_key",
    "task_prefix",
    "trial_output_prefix",
]


class _Entry(NamedTuple):
    module: str
    class_name: str


# Backends by name; modules imported when first used.
_STORAGE_REGISTRY: dict[StorageType, _Entry] = {
    StorageType.LOCAL: _Entry("oddish.storage.local", "LocalStorage"),
    StorageType.S3: _Entry("oddish.storage.s3", "S3Storage"),
}


def _backend(kind: StorageType) -> type[BaseStorage]:
    entry = _STORAGE_REGISTRY[kind]
    backend: type[BaseStorage] = getattr(importlib.import_module(entry.module), entry.class_name)
    return backend


def config_from_settings(settings: Settings) -> LocalStorageConfig | S3StorageConfig:
    """The backend the settings ask for; StorageMisconfigured naming the setting when they ask
    for S3 without a bucket."""
    if not settings.s3_enabled:
        return LocalStorageConfig(
            root=settings.storage_dir or settings.home / "storage",
            sync_moves=settings.storage_sync_outputs,
        )
    if not settings.s3_bucket:
        raise StorageMisconfigured("ODDISH_S3_BUCKET: must be set when ODDISH_S3_ENABLED is true")
    return S3StorageConfig(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        # Empty values (NAME= in a .env file) mean unset.
        endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region or None,
        access_key=settings.s3_access_key or None,
        secret_key=SecretStr(settings.s3_secret_key) if settings.s3_secret_key else None,
    )


def storage_from_config(config: LocalStorageConfig | S3StorageConfig) -> BaseStorage:
    """A new store of the config's backend (no request made yet: ``check()`` validates it)."""
    return _backend(config.type).from_config(config)


def storage_from_settings(settings: Settings | None = None) -> BaseStorage:
    """A new store for the settings (the process's, by default)."""
    return storage_from_config(config_from_settings(settings or get_settings()))


_lock = threading.Lock()
# The process's store and the settings object it was built from.
_cached: tuple[Settings, BaseStorage] | None = None


def get_storage(settings: Settings | None = None) -> BaseStorage:
    """The process's store, built from ``get_settings()`` and kept while that is the same object
    (``get_settings.cache_clear()``, as tests do when they change the environment, builds it
    anew; so does reset_storage()). With ``settings``, a new store for them, not kept."""
    global _cached
    if settings is not None:
        return storage_from_settings(settings)
    current = get_settings()
    with _lock:
        if _cached is None or _cached[0] is not current:
            _cached = (current, storage_from_settings(current))
        return _cached[1]


def reset_storage() -> None:
    """Forget the process's store."""
    global _cached
    with _lock:
        _cached = None
