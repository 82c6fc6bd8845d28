"""Pydantic configs of the backends, one per name (``type``), as Harbor describes its
environments; :func:`oddish.storage.config_from_settings` builds them from oddish's settings."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class StorageType(StrEnum):
    LOCAL = "local"
    S3 = "s3"


class LocalStorageConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal[StorageType.LOCAL] = StorageType.LOCAL
    root: Path
    # Whether a file moved into place (a trial's output) is synced to disk first. Off, the
    # kernel writes it back within about half a minute: only the machine crashing or losing
    # power in that time can take it back; no process dying can.
    sync_moves: bool = False


class S3StorageConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal[StorageType.S3] = StorageType.S3
    bucket: str = Field(min_length=1)
    # ODDISH_S3_PREFIX as given; the backend normalises it to one trailing '/'.
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: SecretStr | None = None


StorageConfig = Annotated[LocalStorageConfig | S3StorageConfig, Field(discriminator="type")]
