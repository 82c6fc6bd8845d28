"""Object keys: what a valid key or prefix is, and where oddish keeps what (pure functions).

A key is a '/'-separated relative path, the same on every backend: the local backend maps it to
a file under its root, the S3 backend to an object under ``ODDISH_S3_PREFIX``. Every key and
prefix is validated before any backend touches it, so a key can never name anything outside the
store:

- not empty, no leading '/', no empty component ('a//b'), no '.' or '..' component;
- no NUL, no other control character, no backslash;
- at most 1024 bytes in UTF-8 (S3's limit), each component at most 255 (a file name's);
- a key names an object: no trailing '/'. A prefix names a "directory": it is empty (everything)
  or ends with '/', so that ``tasks/1/`` never matches ``tasks/10/...`` and a prefix joined with
  a relative path is always a valid key.

Layout (each function returns a key or a prefix of the form above)::

    tasks/<task_id>/<content_hash>.tar.gz                           task_archive_key
    tasks/<task_id>/trials/<trial_id>/attempt-<n>/<harbor output>   trial_output_prefix
    tasks/<task_id>/                                                task_prefix (delete a task)
"""

from __future__ import annotations

import re

MAX_KEY_BYTES = 1024
MAX_COMPONENT_BYTES = 255
# Control characters (C0 and DEL) and the backslash: a key that could mean another path on
# another system, or that S3's XML listings cannot carry.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")


def _check_components(value: str, what: str) -> None:
    for part in value.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"{what} {value!r}: empty, '.' and '..' components are not allowed")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ValueError(f"{what} {value!r}: a component is over {MAX_COMPONENT_BYTES} bytes")


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if match := _FORBIDDEN.search(value):
        raise ValueError(f"{what} {value!r}: character {match.group()!r} is not allowed")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"{what} is {size} bytes long, over {MAX_KEY_BYTES}")
    if value.startswith("/"):
        raise ValueError(f"{what} {value!r} must be relative (no leading '/')")
    return value


def validate_key(key: str) -> str:
    """``key`` if it is a valid object key, else ValueError saying why."""
    _check_text(key, "key")
    if not key:
        raise ValueError("key must not be empty")
    if key.endswith("/"):
        raise ValueError(f"key {key!r} must not end with '/' (that is a prefix)")
    _check_components(key, "key")
    return key


def validate_prefix(prefix: str, *, allow_empty: bool = True) -> str:
    """``prefix`` if it is a valid prefix ('' or ending with '/'), else ValueError."""
    _check_text(prefix, "prefix")
    if not prefix:
        if not allow_empty:
            raise ValueError("prefix must not be empty here (it would mean every object)")
        return prefix
    if not prefix.endswith("/"):
        raise ValueError(f"prefix {prefix!r} must end with '/'")
    _check_components(prefix[:-1], "prefix")
    return prefix


def key_parts(key: str) -> list[str]:
    """The components of a valid key."""
    return validate_key(key).split("/")


def prefix_parts(prefix: str) -> list[str]:
    """The components of a valid prefix ([] for the empty prefix)."""
    return validate_prefix(prefix).split("/")[:-1] if prefix else []


def relative_key(prefix: str, key: str) -> str:
    """``key`` relative to ``prefix``, validated: refuses what would not stay below the prefix."""
    if not key.startswith(prefix):
        raise ValueError(f"key {key!r} is not under prefix {prefix!r}")
    return validate_key(key[len(prefix) :])


def _component(value: str, what: str) -> str:
    if not isinstance(value, str) or "/" in value:
        raise ValueError(f"{what} {value!r} must be a single key component")
    return validate_key(value)


def task_prefix(task_id: str) -> str:
    """Everything stored for a task: ``tasks/<task_id>/``."""
    return f"tasks/{_component(task_id, 'task_id')}/"


def task_archive_key(task_id: str, content_hash: str) -> str:
    """The task's uploaded archive: ``tasks/<task_id>/<content_hash>.tar.gz``."""
    return f"{task_prefix(task_id)}{_component(content_hash, 'content_hash')}.tar.gz"


def trial_output_prefix(task_id: str, trial_id: str, attempt_number: int) -> str:
    """Harbor's output of one attempt: ``tasks/<task_id>/trials/<trial_id>/attempt-<n>/``."""
    if isinstance(attempt_number, bool) or not isinstance(attempt_number, int):
        raise ValueError(f"attempt_number {attempt_number!r} must be an integer")
    if attempt_number < 0:
        raise ValueError(f"attempt_number {attempt_number} must not be negative")
    trial = _component(trial_id, "trial_id")
    return f"{task_prefix(task_id)}trials/{trial}/attempt-{attempt_number}/"
