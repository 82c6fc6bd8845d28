"""The files routes: a trial's output and a task's own files, listed with sizes and streamed.

Everything in a trial's output was written by the agent or the task's code: hostile input. A
file is served with the content type its name suggests, never sniffed (``nosniff``), inside a
sandbox (``Content-Security-Policy: sandbox``: an HTML or SVG file cannot run script with the
API's origin), and as a download unless it is text, JSON or a plain image. Paths are checked
before anything is read (``..``, absolute, backslash, encoded or not: 400).
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from oddish import queue
from oddish.db.records import RecordNotFound
from oddish.storage import ObjectNotFound
from oddish.stored_files import (
    MAX_LISTED_FILES,
    BadPath,
    FileListing,
    FileTree,
    ObjectFolder,
    OpenedFile,
    task_files,
    trajectory_path,
    trial_output,
)

# Shown in the browser rather than downloaded: nothing in them can run.
INLINE_TYPES = frozenset(
    {"text/plain", "application/json", "image/png", "image/jpeg", "image/gif", "image/webp"}
)
# What Harbor and agents write that mimetypes does not know, or would call something else.
TEXT_SUFFIXES = frozenset({".txt", ".log", ".out", ".err", ".jsonl", ".md", ".toml", ".sh", ""})

FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the file's bytes, streamed, with the content type its name suggests",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    400: {"description": "a path that would leave the folder ('..', absolute, backslash)"},
    404: {"description": "no such trial, task, attempt or file; the reason is in `detail`"},
    503: {"description": "the storage cannot be reached"},
}
LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such trial, task or attempt, or no output yet"},
    503: {"description": "the storage cannot be reached"},
}


class FileEntry(BaseModel):
    path: str
    size: int


class FileListingView(BaseModel):
    files: list[FileEntry]
    total_bytes: int
    # True when there were more than `limit` files: the listing stops there.
    truncated: bool


class TrialFilesView(FileListingView):
    trial_id: str
    attempt: int | None


class TaskFilesView(FileListingView):
    task_id: str


def _listing_fields(listing: FileListing) -> dict[str, Any]:
    return {
        "files": [FileEntry(path=f.path, size=f.size) for f in listing.files],
        "total_bytes": listing.total_bytes,
        "truncated": listing.truncated,
    }


def media_type(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix == ".json":
        return "application/json"
    if suffix in TEXT_SUFFIXES:
        return "text/plain; charset=utf-8"
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def file_headers(path: str, size: int, kind: str) -> dict[str, str]:
    name = path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    disposition = "inline" if kind.split(";")[0] in INLINE_TYPES else "attachment"
    return {
        "Content-Length": str(size),
        "Content-Disposition": (
            f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
        ),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, each read off the event loop; the stream is closed however the response ends
    (a client that goes away included), giving its connection back."""
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


async def _serve(tree: FileTree, path: str, missing: str) -> StreamingResponse:
    try:
        opened: OpenedFile = await asyncio.to_thread(tree.open_file, path)
    except BadPath as exc:
        raise HTTPException(400, detail=str(exc)) from None
    except ObjectNotFound:
        raise HTTPException(404, detail=missing) from None
    kind = media_type(opened.path)
    return StreamingResponse(
        _stream(opened.chunks),
        media_type=kind,
        headers=file_headers(opened.path, opened.size, kind),
    )


async def _attempt_output(trial_id: str, attempt: int | None) -> tuple[ObjectFolder, int | None]:
    """The output of the trial's latest attempt, or of attempt number ``attempt``; 404 with the
    reason when there is none."""
    trial = await queue.get_trial(trial_id)
    if attempt is None:
        location = trial["harbor_trial_dir"]
        if not location:
            raise RecordNotFound(f"trial {trial_id} has no output yet (status {trial['status']})")
        numbers = [a["number"] for a in trial["attempts"] if a["harbor_trial_dir"] == location]
        number = numbers[-1] if numbers else None
    else:
        chosen = [a for a in trial["attempts"] if a["number"] == attempt]
        if not chosen:
            made = ", ".join(str(a["number"]) for a in trial["attempts"]) or "none yet"
            raise RecordNotFound(f"trial {trial_id} has no attempt {attempt} (attempts: {made})")
        location, number = chosen[0]["harbor_trial_dir"], attempt
        if not location:
            raise RecordNotFound(f"attempt {attempt} of trial {trial_id} left no output")
    return trial_output(location), number


ATTEMPT = Query(default=None, ge=1, description="an attempt's number; the latest by default")


def build_files_router() -> APIRouter:
    router = APIRouter()

    @router.get(
        "/trials/{trial_id}/files",
        summary="The files of a trial's output (its latest attempt's), with their sizes",
        responses=LIST_RESPONSES,
    )
    async def list_trial_files(trial_id: str, attempt: int | None = ATTEMPT) -> TrialFilesView:
        output, number = await _attempt_output(trial_id, attempt)
        listing = await asyncio.to_thread(output.list_files, MAX_LISTED_FILES)
        if not listing.files:
            raise RecordNotFound(
                f"trial {trial_id} has no output in storage (none was made, or it is still being "
                "stored)"
            )
        return TrialFilesView(trial_id=trial_id, attempt=number, **_listing_fields(listing))

    @router.get(
        "/trials/{trial_id}/files/{path:path}",
        summary="One file of a trial's output, streamed with its content type",
        response_class=StreamingResponse,
        responses=FILE_RESPONSES,
    )
    async def get_trial_file(
        trial_id: str, path: str, attempt: int | None = ATTEMPT
    ) -> StreamingResponse:
        output, _ = await _attempt_output(trial_id, attempt)
        return await _serve(output, path, f"trial {trial_id}'s output has no file {path!r}")

    @router.get(
        "/trials/{trial_id}/trajectory",
        summary="The agent's trajectory (Harbor's trajectory.json), when it wrote one",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "trajectory.json as the agent wrote it (ATIF)",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "title": "AtifTrajectory",
                            "description": "Harbor's agent trajectory format, as written",
                            "additionalProperties": True,
                        }
                    }
                },
            },
            404: {"description": "no such trial, no output yet, or the agent wrote none"},
            503: {"description": "the storage cannot be reached"},
        },
    )
    async def get_trial_trajectory(
        trial_id: str, attempt: int | None = ATTEMPT
    ) -> StreamingResponse:
        output, _ = await _attempt_output(trial_id, attempt)
        found = await asyncio.to_thread(trajectory_path, output)
        if found is None:
            raise RecordNotFound(
                f"trial {trial_id}'s agent wrote no trajectory.json (Harbor's agents that record "
                "one write it to agent/trajectory.json); its logs are at /trials/{trial_id}/logs"
            )
        return await _serve(output, found, f"trial {trial_id}'s trajectory is gone")

    @router.get(
        "/tasks/{task_id}/files",
        summary="The task's own files (instruction.md, task.toml, tests/, ...), with sizes",
        responses=LIST_RESPONSES,
    )
    async def list_task_files(task_id: str) -> TaskFilesView:
        tree = task_files(await queue.get_task_location(task_id))
        try:
            listing = await asyncio.to_thread(tree.list_files, MAX_LISTED_FILES)
        except ObjectNotFound:
            raise RecordNotFound(f"task {task_id}'s files are gone from storage") from None
        return TaskFilesView(task_id=task_id, **_listing_fields(listing))

    @router.get(
        "/tasks/{task_id}/files/{path:path}",
        summary="One of the task's own files, streamed with its content type",
        response_class=StreamingResponse,
        responses=FILE_RESPONSES,
    )
    async def get_task_file(task_id: str, path: str) -> StreamingResponse:
        tree = task_files(await queue.get_task_location(task_id))
        return await _serve(tree, path, f"task {task_id} has no file {path!r}")

    return router
