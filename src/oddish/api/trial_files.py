"""Reading a trial's Harbor output (result.json, logs) from where its latest attempt keeps it.

The trial's ``harbor_trial_dir`` is a location: the storage prefix its attempt's output was
uploaded to (``tasks/<task>/trials/<trial>/attempt-N/``, ``oddish.trial_output``), read through
``oddish.storage``; or, for attempts recorded before outputs went to storage, an absolute path on
this machine's disk (``oddish.task_store.is_legacy_location``), read from that directory.

Everything in the output was written by the agent (through the sandbox's /logs and the artifacts
collected from it): hostile input. On disk, the trial directory's own path comes from our
database and is opened as given, links and all; every name inside it is opened relative to its
parent's descriptor with O_NOFOLLOW, so no symbolic link is followed, not even one swapped in after
the listing, and only regular files are read (O_NONBLOCK: a FIFO swapped in cannot block the open).
In storage there are only regular files (the upload skipped links and special files); a log is
read with a ranged read of its tail. What a request reads is bounded either way: a log file costs
at most its last MAX_LOG_BYTES, a response at most MAX_TOTAL_LOG_BYTES in MAX_LOG_FILES files,
MAX_LOG_DEPTH directory levels and MAX_SCANNED_ENTRIES directory entries (objects listed, in
storage); result.json at most MAX_RESULT_BYTES. Every call blocks: the API runs them in a thread.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import PurePosixPath
from typing import Any

from oddish.db.records import RecordNotFound
from oddish.storage import (
    BaseStorage,
    ObjectNotFound,
    StorageError,
    StorageMisconfigured,
    StorageUnavailable,
    get_storage,
)
from oddish.storage.keys import relative_key, validate_prefix
from oddish.task_store import is_legacy_location

MAX_LOG_BYTES = 1_000_000
MAX_TOTAL_LOG_BYTES = 8_000_000
MAX_LOG_FILES = 200
# Harbor's deepest own layout is steps/<step>/artifacts/<mirrored absolute path>/...
MAX_LOG_DEPTH = 12
# Directory entries looked at per request, whatever they are: bounds the walk's time and memory.
MAX_SCANNED_ENTRIES = 10_000
# rollout_details (token ids, logprobs) make a genuine result.json run to megabytes.
MAX_RESULT_BYTES = 16_000_000
# Harbor's result nests under ten levels; the response serializer gives up at about 250.
MAX_RESULT_NESTING = 64
LOG_SUFFIXES = {".txt", ".log", ".json", ".jsonl", ".out", ".err", ""}
CUT_MARKER = "[... cut ...]\n"

# Python opens descriptors non-inheritable already (PEP 446).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK
# O_NOCTTY: a terminal device swapped in must not become our controlling terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
# What opening a name that is (now) a symbolic link fails with: ELOOP for a file, ENOTDIR for
# O_DIRECTORY on Linux.
_LINK_ERRNOS = {errno.ELOOP, errno.ENOTDIR}
_READ_CHUNK = 1 << 20
# The only way JSON text in UTF-8 yields a string no UTF-8 response can carry: an escaped surrogate
# (paired ones are fine; this only decides whether to look closer).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class TrialFileRefused(RecordNotFound):
    """A file of the trial's output that is not served (a link, not a regular file, too large, not
    JSON); a RecordNotFound, so the API answers 404 with the reason instead of 500."""


def _location(trial: dict[str, Any]) -> str:
    """Where the trial's latest output is: a storage prefix, or a legacy absolute path."""
    if not trial.get("harbor_trial_dir"):
        raise RecordNotFound(f"trial {trial['id']} has no output yet (status {trial['status']})")
    return str(trial["harbor_trial_dir"])


def _stored_prefix(trial: dict[str, Any], location: str) -> str:
    try:
        return validate_prefix(location, allow_empty=False)
    except ValueError:
        raise TrialFileRefused(
            f"trial {trial['id']}'s output location {location!r} is neither a path nor a "
            "storage prefix"
        ) from None


def _open_trial_dir(path: str, missing: str) -> int:
    """A descriptor of the trial directory; links in its (trusted) path are followed, once."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        raise RecordNotFound(missing) from None


def _open_subdir(root_fd: int, parts: tuple[str, ...]) -> int:
    """A descriptor of root/parts, each component opened without following a link."""
    fd = os.open(".", _DIR_FLAGS, dir_fd=root_fd)
    for name in parts:
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def _read_at(fd: int, offset: int, n: int) -> bytes:
    """Up to n bytes from offset; fewer if the file ends first (it may shrink while we read)."""
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.pread(fd, min(n - got, _READ_CHUNK), offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_tail(dir_fd: int, name: str, limit: int) -> tuple[str, int] | None:
    """The last `limit` bytes of a regular file as text, and the bytes read; None if not regular.

    Seeking to the tail is what keeps a 4 GB (sparse) log at ~1 MB of memory and milliseconds."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        n = min(st.st_size, limit)
        data = _read_at(fd, st.st_size - n, n)
    finally:
        os.close(fd)
    text = data.decode(errors="replace")
    return (CUT_MARKER + text if n < st.st_size else text), len(data)


def _key(parts: tuple[str, ...]) -> str:
    # Names are bytes on disk: undecodable ones would make the JSON response fail (a 500).
    return os.fsencode("/".join(parts)).decode("utf-8", errors="backslashreplace")


@dataclass
class _LeftOut:
    """What a read_logs response does not show, by reason."""

    over_count: int = 0
    over_budget: int = 0
    links: int = 0
    special: int = 0
    unreadable: int = 0
    too_deep: int = 0
    listing_stopped: bool = False

    def note(self) -> tuple[str, str] | None:
        """The response's last entry, saying what was left out and why; None if nothing was.

        Its key ends in ".]", never a log suffix, so no file can take its place."""
        files = self.over_count + self.over_budget + self.links + self.special + self.unreadable
        uncounted = bool(self.too_deep or self.listing_stopped)
        if not files and not uncounted:
            return None
        reasons = [
            f"{n} {why}"
            for n, why in (
                (self.over_count, f"over the limit of {MAX_LOG_FILES} files"),
                (self.over_budget, f"over the limit of {MAX_TOTAL_LOG_BYTES} bytes in all"),
                (self.links, "symbolic links, never followed"),
                (self.special, "not regular files (FIFOs, sockets, devices)"),
                (self.unreadable, "unreadable"),
                (self.too_deep, f"directories deeper than {MAX_LOG_DEPTH} levels, not opened"),
            )
            if n
        ]
        if self.listing_stopped:
            reasons.append(f"listing stopped after {MAX_SCANNED_ENTRIES} directory entries")
        if not uncounted:
            key = f"[... {files} more files not shown ...]"
        elif files:
            key = f"[... at least {files} more files not shown ...]"
        else:
            key = "[... more files not shown ...]"
        return key, "; ".join(reasons)


def read_result(trial: dict[str, Any], storage: BaseStorage | None = None) -> dict[str, Any]:
    """Harbor's result.json of the trial, from storage (``storage``, default the process's) or a
    legacy directory; TrialFileRefused if it cannot be served as it is."""
    trial_id = trial["id"]
    location = _location(trial)
    if not is_legacy_location(location):
        prefix = _stored_prefix(trial, location)
        raw = _stored_result_bytes(storage or get_storage(), prefix, trial_id)
        return _parse_result(raw, trial_id)
    root_fd = _open_trial_dir(location, f"trial {trial_id} has no result.json yet")
    try:
        raw = _read_result_bytes(root_fd, trial_id)
    finally:
        os.close(root_fd)
    return _parse_result(raw, trial_id)


def _read_stream(chunks: Iterator[bytes], limit: int) -> bytes:
    """At most ``limit`` bytes of a storage stream, which is closed (its connection given back)
    however the read ends."""
    got: list[bytes] = []
    size = 0
    try:
        for chunk in chunks:
            got.append(chunk[: limit - size])
            size += len(got[-1])
            if size >= limit:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return b"".join(got)


def _stored_result_bytes(storage: BaseStorage, prefix: str, trial_id: str) -> bytes:
    key = prefix + "result.json"
    missing = RecordNotFound(f"trial {trial_id} has no result.json yet")
    too_large = TrialFileRefused(
        f"trial {trial_id}'s result.json is larger than {MAX_RESULT_BYTES} bytes; not served"
    )
    try:
        if storage.stat(key).size > MAX_RESULT_BYTES:
            raise too_large
        # One byte more than the bound: an object replaced by a larger one is caught too.
        raw = _read_stream(storage.iter_bytes(key, end=MAX_RESULT_BYTES + 1), MAX_RESULT_BYTES + 1)
    except ObjectNotFound:
        raise missing from None
    if len(raw) > MAX_RESULT_BYTES:
        raise too_large
    return raw


def _read_result_bytes(root_fd: int, trial_id: str) -> bytes:
    missing = RecordNotFound(f"trial {trial_id} has no result.json yet")
    link = TrialFileRefused(f"trial {trial_id}'s result.json is a symbolic link; not served")
    irregular = TrialFileRefused(f"trial {trial_id}'s result.json is not a regular file")
    try:
        # Looked at before opening, so that a FIFO or a device is never opened at all; the open
        # and fstat below catch whatever is swapped in meanwhile.
        st = os.stat("result.json", dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise missing from None
    if stat.S_ISLNK(st.st_mode):
        raise link
    if not stat.S_ISREG(st.st_mode):
        raise irregular
    try:
        fd = os.open("result.json", _FILE_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        raise missing from None
    except OSError as e:
        if e.errno in _LINK_ERRNOS:
            raise link from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise irregular
        raw = b""
        if st.st_size <= MAX_RESULT_BYTES:
            # One byte more than the bound: a file growing while we read is caught too.
            raw = _read_at(fd, 0, MAX_RESULT_BYTES + 1)
    finally:
        os.close(fd)
    if st.st_size > MAX_RESULT_BYTES or len(raw) > MAX_RESULT_BYTES:
        raise TrialFileRefused(
            f"trial {trial_id}'s result.json is larger than {MAX_RESULT_BYTES} bytes; not served"
        )
    return raw


def _parse_result(raw: bytes, trial_id: str) -> dict[str, Any]:
    """The JSON object in raw, refused unless the response can carry it back (else a 500)."""

    def refused(why: str) -> TrialFileRefused:
        return TrialFileRefused(f"trial {trial_id}'s result.json {why}; not served")

    try:
        text = raw.decode("utf-8")
        value = json.loads(text)
    except UnicodeDecodeError as e:
        raise refused(f"is not UTF-8 ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        # ValueError: syntax, or an integer of more digits than Python converts; RecursionError:
        # arrays or objects nested thousands deep.
        raise refused(f"is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise refused(f"is a JSON {type(value).__name__}, not an object")
    if _nests_deeper_than(value, MAX_RESULT_NESTING, text):
        raise refused(f"nests deeper than {MAX_RESULT_NESTING} levels")
    if _SURROGATE_ESCAPE.search(text) and not _utf8_encodable(value):
        raise refused("holds an unpaired UTF-16 surrogate escape")
    return value


def _nests_deeper_than(value: Any, limit: int, text: str) -> bool:
    # Every container opens with a bracket: with few of them, the walk is not needed.
    if text.count("[") + text.count("{") <= limit:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _utf8_encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_logs(trial: dict[str, Any], storage: BaseStorage | None = None) -> dict[str, str]:
    """Text files of the trial's output by relative path, each cut to its last MAX_LOG_BYTES,
    from storage (``storage``, default the process's) or a legacy directory.

    Breadth first, so Harbor's own top-level files (trial.log, result.json, exception.txt) come
    before whatever the agent piled up below; sorted by path in the answer, then one last entry
    saying what was left out, if anything was."""
    location = _location(trial)
    if not is_legacy_location(location):
        prefix = _stored_prefix(trial, location)
        served, left = _stored_logs(storage or get_storage(), prefix, trial["id"])
    else:
        root_fd = _open_trial_dir(location, f"trial {trial['id']}'s output directory is gone")
        try:
            served, left = _walk(root_fd)
        finally:
            os.close(root_fd)
    logs = {_key(parts): text for parts, text in sorted(served.items())}
    note = left.note()
    if note is not None:
        logs[note[0]] = note[1]
    return logs


def _walk(root_fd: int) -> tuple[dict[tuple[str, ...], str], _LeftOut]:
    served: dict[tuple[str, ...], str] = {}
    left = _LeftOut()
    budget = MAX_TOTAL_LOG_BYTES
    scanned = 0
    queue: deque[tuple[str, ...]] = deque([()])
    while queue:
        if scanned >= MAX_SCANNED_ENTRIES:
            left.listing_stopped = True
            break
        parts = queue.popleft()
        try:
            dir_fd = _open_subdir(root_fd, parts)
        except FileNotFoundError:
            continue  # gone since it was listed
        except OSError as e:
            if e.errno in _LINK_ERRNOS:
                left.links += 1  # swapped for a link since it was listed
            else:
                left.unreadable += 1
            continue
        try:
            with os.scandir(dir_fd) as listing:
                entries = list(islice(listing, MAX_SCANNED_ENTRIES - scanned))
                if next(listing, None) is not None:
                    left.listing_stopped = True
            scanned += len(entries)
            for entry in sorted(entries, key=lambda e: e.name):
                name = entry.name
                # From the listing (d_type or lstat): never a look through a link.
                if entry.is_symlink():
                    left.links += 1
                elif entry.is_dir(follow_symlinks=False):
                    if len(parts) < MAX_LOG_DEPTH:
                        queue.append((*parts, name))
                    else:
                        left.too_deep += 1
                elif PurePosixPath(name).suffix not in LOG_SUFFIXES:
                    continue
                elif not entry.is_file(follow_symlinks=False):
                    left.special += 1  # not even opened: opening a device can act on it
                elif len(served) >= MAX_LOG_FILES:
                    left.over_count += 1
                elif budget <= 0:
                    left.over_budget += 1
                else:
                    try:
                        read = _read_tail(dir_fd, name, min(MAX_LOG_BYTES, budget))
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        if e.errno in _LINK_ERRNOS:
                            left.links += 1
                        else:
                            left.unreadable += 1
                        continue
                    if read is None:
                        left.special += 1  # swapped for a FIFO or device since it was listed
                        continue
                    served[(*parts, name)], cost = read
                    budget -= cost
        finally:
            os.close(dir_fd)
    return served, left


def _stored_logs(
    storage: BaseStorage, prefix: str, trial_id: str
) -> tuple[dict[tuple[str, ...], str], _LeftOut]:
    """The log-like objects under ``prefix``, by the rules and bounds of :func:`_walk`."""
    left = _LeftOut()
    candidates: list[tuple[tuple[str, ...], int]] = []
    too_deep: set[tuple[str, ...]] = set()
    listed = 0
    for info in storage.list(prefix):
        if listed >= MAX_SCANNED_ENTRIES:
            left.listing_stopped = True
            break
        listed += 1
        parts = tuple(relative_key(prefix, info.key).split("/"))
        if len(parts) - 1 > MAX_LOG_DEPTH:
            # On disk the walk would not have opened the first directory past the limit.
            too_deep.add(parts[: MAX_LOG_DEPTH + 1])
        elif PurePosixPath(parts[-1]).suffix in LOG_SUFFIXES:
            candidates.append((parts, info.size))
    if not listed:
        raise RecordNotFound(
            f"trial {trial_id} has no output in storage (none was made, or it is still being "
            "stored)"
        )
    left.too_deep = len(too_deep)
    # Breadth first, as the walk on disk goes: a level's files before those below it.
    candidates.sort(key=lambda candidate: (len(candidate[0]), candidate[0]))
    served: dict[tuple[str, ...], str] = {}
    budget = MAX_TOTAL_LOG_BYTES
    for parts, size in candidates:
        if len(served) >= MAX_LOG_FILES:
            left.over_count += 1
            continue
        if budget <= 0:
            left.over_budget += 1
            continue
        n = min(size, MAX_LOG_BYTES, budget)
        try:
            # A ranged read: a 4 GiB log costs its tail only.
            data = _read_stream(
                storage.iter_bytes(prefix + "/".join(parts), start=size - n, end=size), n
            )
        except ObjectNotFound:
            continue  # gone since it was listed
        except (StorageUnavailable, StorageMisconfigured):
            raise  # the store, not this file: a 503
        except StorageError:
            left.unreadable += 1
            continue
        text = data.decode(errors="replace")
        served[parts] = CUT_MARKER + text if n < size else text
        budget -= len(data)
    return served, left
