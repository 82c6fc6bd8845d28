"""Objects in an S3 bucket (AWS, or any S3-compatible endpoint: MinIO, R2, moto), under
``ODDISH_S3_PREFIX``.

One boto3 client per store, shared by its threads (boto3 clients are thread-safe). Requests are
retried by botocore itself (``standard`` mode: throttling, 5xx and connection errors, with
backoff); what still fails is translated, with the setting to fix where there is one:

============================================================  ================================
botocore error                                                 raised
============================================================  ================================
NoSuchKey, 404 on an object                                    ObjectNotFound
NoSuchBucket, 404 on the bucket, InvalidBucketName             StorageMisconfigured (BUCKET)
InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied, 403   StorageMisconfigured (ACCESS_KEY)
PermanentRedirect, AuthorizationHeaderMalformed (region)       StorageMisconfigured (REGION)
no credentials found                                           StorageMisconfigured (ACCESS_KEY)
EndpointConnectionError, ConnectTimeout, SSL errors            StorageUnavailable (ENDPOINT_URL)
5xx, SlowDown, read timeouts, a dropped stream                 StorageUnavailable
============================================================  ================================

:meth:`S3Storage.check` turns an unreachable endpoint into StorageMisconfigured: at start-up it
is a setting to fix (a wrong host or port), whereas later, mid-run, it is an outage to wait out.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO

import boto3  # type: ignore[import-untyped]
from boto3.exceptions import S3UploadFailedError  # type: ignore[import-untyped]
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProxyConnectionError,
    SSLError,
)

from oddish.storage.base import (
    BaseStorage,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    StorageMisconfigured,
    StorageUnavailable,
)
from oddish.storage.configs import LocalStorageConfig, S3StorageConfig
from oddish.storage.keys import MAX_KEY_BYTES, validate_prefix

# Attempts of one request in all (botocore's standard retry mode: backoff up to 20 s between).
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_SEC = 5.0
# Longest silence while waiting for a response or reading one (a part being stored included).
READ_TIMEOUT_SEC = 60.0
# Files at or above this go up in parts of this size, this many parts at once. A whole regular
# file is read part by part as it is sent; any other stream holds up to MULTIPART_IN_MEMORY parts
# in memory (32 MiB).
MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNKSIZE = 8 * 1024 * 1024
MULTIPART_CONCURRENCY = 4
MULTIPART_IN_MEMORY = 4
# ListObjectsV2 pages (1000 is S3's largest).
PAGE_SIZE = 1000

# The endpoint cannot be reached at all (as opposed to failing while talking to it).
_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError, SSLError)
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_REGION_CODES = {
    "PermanentRedirect",
    "301",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "503",
    "500",
}


def transfer_config(
    *,
    threshold: int = MULTIPART_THRESHOLD,
    chunksize: int = MULTIPART_CHUNKSIZE,
    concurrency: int = MULTIPART_CONCURRENCY,
) -> TransferConfig:
    """How uploads of large files are split (multipart) and how many parts go at once."""
    config = TransferConfig(
        multipart_threshold=threshold,
        multipart_chunksize=chunksize,
        max_concurrency=concurrency,
        use_threads=True,
        preferred_transfer_client="classic",
    )
    # s3transfer reads parts of a file object into memory: bound how many wait at once.
    config.max_in_memory_upload_chunks = MULTIPART_IN_MEMORY
    return config


def make_client(
    *,
    endpoint_url: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    max_attempts: int = MAX_ATTEMPTS,
    connect_timeout: float = CONNECT_TIMEOUT_SEC,
    read_timeout: float = READ_TIMEOUT_SEC,
    max_pool_connections: int = 32,
) -> Any:
    """A boto3 S3 client. Without an access key and secret key, boto3's own chain supplies the
    credentials (AWS_* variables, ~/.aws, an instance or task role). A custom endpoint is
    addressed path-style (``endpoint/bucket/key``: what MinIO and most S3-compatible services
    expect) and sent checksums only where S3 requires them (some of them refuse the others)."""
    if (access_key is None) != (secret_key is None):
        missing = "ODDISH_S3_SECRET_KEY" if secret_key is None else "ODDISH_S3_ACCESS_KEY"
        raise StorageMisconfigured(
            f"{missing}: set ODDISH_S3_ACCESS_KEY and ODDISH_S3_SECRET_KEY together, or neither "
            "(to use AWS's own credential chain)"
        )
    options: dict[str, Any] = {
        "retries": {"max_attempts": max_attempts, "mode": "standard"},
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "max_pool_connections": max_pool_connections,
    }
    if endpoint_url:
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    try:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(**options),
        )
    except ValueError as exc:  # an endpoint that is no URL
        raise StorageMisconfigured(f"ODDISH_S3_ENDPOINT_URL: {_one_line(str(exc))}") from None
    except BotoCoreError as exc:
        raise StorageMisconfigured(f"ODDISH_S3_REGION: {_one_line(str(exc))}") from None


def normalize_prefix(raw: str) -> str:
    """``ODDISH_S3_PREFIX`` with no leading and exactly one trailing '/' ('' stays '')."""
    stripped = raw.strip().strip("/")
    return validate_prefix(f"{stripped}/") if stripped else ""


class S3Storage(BaseStorage):
    name = "s3"
    tree_concurrency = 8

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        transfer: TransferConfig | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.client = client
        self.transfer = transfer or transfer_config()
        self.page_size = page_size

    @classmethod
    def from_config(cls, config: LocalStorageConfig | S3StorageConfig) -> S3Storage:
        assert isinstance(config, S3StorageConfig)
        try:
            prefix = normalize_prefix(config.prefix)
        except ValueError as exc:
            raise StorageMisconfigured(f"ODDISH_S3_PREFIX: {exc}") from None
        client = make_client(
            endpoint_url=config.endpoint_url,
            region=config.region,
            access_key=config.access_key,
            secret_key=config.secret_key.get_secret_value() if config.secret_key else None,
        )
        return cls(config.bucket, prefix, client)

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    def check(self) -> None:
        """The bucket exists and these credentials may list it (under the prefix)."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            error = self._translate(exc)
            if isinstance(error, StorageUnavailable) and isinstance(exc, _UNREACHABLE):
                raise StorageMisconfigured(str(error)) from exc
            raise error from exc

    # --- errors --------------------------------------------------------------------------------

    def _translate(self, exc: Exception, key: str | None = None) -> StorageError:
        """The StorageError for what botocore raised (``key``: the object it was about)."""
        where = f"bucket {self.bucket!r} at {self.endpoint}"
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__  # boto3's upload_file wraps S3's answer in text
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = _one_line(str(error.get("Message", "")) or code)
            meta = exc.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            if code == "NoSuchKey" or (key is not None and code in ("404", "NotFound")):
                return ObjectNotFound(key or str(error.get("Key", "")))
            if code in ("NoSuchBucket", "404", "NotFound"):
                return StorageMisconfigured(f"ODDISH_S3_BUCKET: {where} does not exist")
            if code == "InvalidBucketName":
                return StorageMisconfigured(f"ODDISH_S3_BUCKET: {self.bucket!r} is no valid name")
            if code in _CREDENTIAL_CODES:
                return StorageMisconfigured(
                    f"ODDISH_S3_ACCESS_KEY/ODDISH_S3_SECRET_KEY: credentials refused by "
                    f"{self.endpoint} ({code}: {message})"
                )
            if code in _DENIED_CODES:
                return StorageMisconfigured(
                    f"ODDISH_S3_ACCESS_KEY/ODDISH_S3_SECRET_KEY: access to {where} denied "
                    f"({code}: {message}); check the credentials and their permissions"
                )
            if code in _REGION_CODES:
                headers = meta.get("HTTPHeaders", {})
                region = headers.get("x-amz-bucket-region") or error.get("Region")
                hint = f"it is in {region}" if region else "it is in another region"
                return StorageMisconfigured(
                    f"ODDISH_S3_REGION: {where}: {hint} ({code}: {message})"
                )
            if code in _TRANSIENT_CODES or status >= 500:
                return StorageUnavailable(f"{where} failed: {code}: {message}")
            about = f" of {key!r}" if key else ""
            return StorageError(f"S3 request{about} refused by {where}: {code}: {message}")
        if isinstance(exc, _UNREACHABLE):
            return StorageUnavailable(
                f"ODDISH_S3_ENDPOINT_URL: cannot reach {self.endpoint} ({_one_line(str(exc))})"
            )
        if isinstance(exc, HTTPClientError | IncompleteReadError):
            return StorageUnavailable(f"{where}: {_one_line(str(exc))}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageMisconfigured(
                "ODDISH_S3_ACCESS_KEY/ODDISH_S3_SECRET_KEY: not set, and AWS's credential chain "
                f"found none ({_one_line(str(exc))})"
            )
        return StorageError(f"S3 {where}: {_one_line(str(exc)) or type(exc).__name__}")

    def _full(self, key: str) -> str:
        full = self.prefix + key
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            raise ValueError(f"key {key!r} with ODDISH_S3_PREFIX is over {MAX_KEY_BYTES} bytes")
        return full

    # --- primitives ----------------------------------------------------------------------------

    def _put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        full = self._full(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as exc:
            raise self._translate(exc, key) from exc
        return ObjectInfo(key, len(data))

    def _put_fileobj(self, key: str, fileobj: BinaryIO) -> ObjectInfo:
        full = self._full(key)
        size = _remaining(fileobj)
        try:
            if size is not None and size < self.transfer.multipart_threshold:
                # One request; botocore reads the file from its position and rewinds to retry.
                self.client.put_object(Bucket=self.bucket, Key=full, Body=fileobj)
            elif (path := _reopenable(fileobj)) is not None:
                # A whole regular file: s3transfer reads each part from the file as it sends it
                # (6 MiB of memory for a 64 MiB file, against 44 through a file object).
                self.client.upload_file(path, self.bucket, full, Config=self.transfer)
            else:
                counting = _CountingReader(fileobj) if size is None else fileobj
                self.client.upload_fileobj(counting, self.bucket, full, Config=self.transfer)
                if isinstance(counting, _CountingReader):
                    size = counting.count
        except Exception as exc:
            raise self._translate(exc, key) from exc
        assert size is not None
        return ObjectInfo(key, size)

    def _open(self, key: str, **extra: str) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self.client.get_object(
                Bucket=self.bucket, Key=self._full(key), **extra
            )
        except Exception as exc:
            raise self._translate(exc, key) from exc
        return response

    def _stream(self, key: str, body: Any, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(chunk_size)
        except Exception as exc:
            raise self._translate(exc, key) from exc
        finally:
            body.close()

    def _get_fileobj(self, key: str, fileobj: BinaryIO) -> ObjectInfo:
        size = 0
        for chunk in self._stream(key, self._open(key)["Body"], 1024 * 1024):
            fileobj.write(chunk)
            size += len(chunk)
        fileobj.flush()
        return ObjectInfo(key, size)

    def _iter_range(
        self, key: str, chunk_size: int, start: int, end: int | None
    ) -> Iterator[bytes]:
        if end is not None and end == start:
            self._stat(key)  # nothing to read; still ObjectNotFound when it is not there
            return iter(())
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = self._open(key, **extra)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in (
                "InvalidRange",
                "416",
            ):
                return iter(())  # it exists, and starts before ``start``
            raise
        return self._stream(key, response["Body"], chunk_size)

    def _stat(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except Exception as exc:
            raise self._translate(exc, key) from exc
        return ObjectInfo(key, int(head["ContentLength"]))

    def _pages(self, prefix: str) -> Iterator[list[dict[str, Any]]]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.page_size},
        )
        try:
            for page in pages:
                yield page.get("Contents", [])
        except Exception as exc:
            raise self._translate(exc) from exc

    def _delete_prefix(self, prefix: str) -> int:
        deleted = 0
        for contents in self._pages(prefix):
            if not contents:
                continue
            batch = [{"Key": item["Key"]} for item in contents]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise self._translate(exc) from exc
            if errors := answer.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"could not delete {len(errors)} objects under {prefix!r}, e.g. "
                    f"{first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                )
            deleted += len(batch)
        return deleted

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        cut = len(self.prefix)
        for contents in self._pages(prefix):
            for item in contents:
                key: str = item["Key"][cut:]
                if key.endswith("/"):
                    continue  # a "folder" marker some tools create: no object of ours
                yield ObjectInfo(key, int(item["Size"]))


class _CountingReader(io.RawIOBase):
    """A non-seekable file object read through, counting its bytes."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.count += len(data)
        return data


def _reopenable(fileobj: BinaryIO) -> str | None:
    """A path that opens the very file ``fileobj`` has open (``/proc/self/fd/N``: the same
    inode, whatever its name now points to), when it is a regular file read from its start."""
    try:
        fd = fileobj.fileno()
        if fileobj.tell() != 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    path = f"/proc/self/fd/{fd}"
    return path if os.path.exists(path) else None


def _remaining(fileobj: BinaryIO) -> int | None:
    """Bytes from the position to the end of a seekable file object; None if not seekable."""
    try:
        if not fileobj.seekable():
            return None
        position = fileobj.tell()
        end = fileobj.seek(0, io.SEEK_END)
        fileobj.seek(position)
    except (AttributeError, OSError, ValueError):
        return None
    return end - position


def _one_line(text: str) -> str:
    return " ".join(text.split())
