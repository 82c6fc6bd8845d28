"""What the judge is shown, read from storage within a budget: the task's own files, and the
trial's trajectory or agent logs, verifier output and exception.

Everything in a trial's output was written by the agent: any size, any bytes. Each file costs at
most its share of the budget, read as its head and its tail (a ranged read of each end for an
output in storage, so a 50 MB log costs two small reads), with a line saying how much was cut in
between; files that look binary are named, not shown. The budget is in characters (about 4 to a
token).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

from oddish.storage import ObjectNotFound
from oddish.stored_files import FileTree, ObjectFolder, StoredFile, trajectory_path

CHARS_PER_TOKEN = 4
# Files of one part shown at most; the others are only counted.
MAX_FILES_PER_PART = 40
_TEXT_SUFFIXES = (".txt", ".log", ".out", ".err", ".json", ".jsonl", ".md", ".toml", ".sh", ".py")
# Shares of the prompt's budget.
TASK_SHARE = 0.25
AGENT_SHARE = 0.45
VERIFIER_SHARE = 0.2
ERROR_SHARE = 0.1


@dataclass
class Part:
    """One section of a prompt: files as text, each cut to its share."""

    title: str
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"## {self.title}"]
        for path, text in self.files.items():
            lines += [f"### {path}", "```", text.rstrip("\n"), "```"]
        lines += self.notes
        if not self.files and not self.notes:
            lines.append("(nothing)")
        return "\n".join(lines)


def cut_marker(n: int) -> str:
    return f"\n[... {n} bytes cut ...]\n"


def _decode(data: bytes) -> str | None:
    """Text, or None when the bytes look binary."""
    if b"\x00" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def _take(chunks: Iterator[bytes], n: int) -> bytes:
    got = bytearray()
    try:
        for chunk in chunks:
            got += chunk[: n - len(got)]
            if len(got) >= n:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return bytes(got)


def _head_and_tail_stream(chunks: Iterator[bytes], half: int) -> tuple[bytes, bytes, int]:
    """The first and last ``half`` bytes of a stream read once, and its length."""
    head = bytearray()
    tail: collections.deque[bytes] = collections.deque()
    tail_size = 0
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
            if len(head) < half:
                taken = chunk[: half - len(head)]
                head += taken
                chunk = chunk[len(taken) :]
            if chunk:
                tail.append(chunk)
                tail_size += len(chunk)
                while tail and tail_size - len(tail[0]) >= half:
                    tail_size -= len(tail.popleft())
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return bytes(head), b"".join(tail)[-half:] if tail else b"", total


def read_cut(tree: FileTree, info: StoredFile, budget: int) -> str | None:
    """The file as text within ``budget`` characters (its head and tail when longer), or None
    when it looks binary."""
    budget = max(budget, 64)
    if isinstance(tree, ObjectFolder):
        key = tree.prefix + info.path
        if info.size <= budget:
            data = _take(tree.storage.iter_bytes(key), info.size)
            return _decode(data)
        half = budget // 2
        head_text = _decode(_take(tree.storage.iter_bytes(key, end=half), half))
        if head_text is None:
            return None
        tail = _take(tree.storage.iter_bytes(key, start=info.size - half), half)
        return head_text + cut_marker(info.size - 2 * half) + (_decode(tail) or "")
    opened = tree.open_file(info.path)
    if opened.size <= budget:
        return _decode(_take(opened.chunks, opened.size))
    head, tail, total = _head_and_tail_stream(opened.chunks, budget // 2)
    if _decode(head) is None:
        return None
    return (_decode(head) or "") + cut_marker(total - len(head) - len(tail)) + (_decode(tail) or "")


def gather(tree: FileTree, files: list[StoredFile], title: str, budget: int) -> Part:
    """The files as one part within ``budget`` characters, shared out so that small files come
    whole and large ones share what is left."""
    part = Part(title)
    shown = files[:MAX_FILES_PER_PART]
    if len(files) > len(shown):
        part.notes.append(f"({len(files) - len(shown)} more files not shown)")
    remaining = budget
    texts: dict[str, str] = {}
    for i, info in enumerate(sorted(shown, key=lambda f: f.size)):
        share = remaining // (len(shown) - i)
        try:
            text = read_cut(tree, info, share)
        except ObjectNotFound:
            continue
        if text is None:
            part.notes.append(f"{info.path}: binary, {info.size} bytes (not shown)")
            continue
        texts[info.path] = text
        remaining -= min(len(text), share)
    # In path order, as a reader expects.
    part.files = {path: texts[path] for path in sorted(texts)}
    return part


def _is_text(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "." not in name or name.endswith(_TEXT_SUFFIXES)


def task_part(tree: FileTree, budget: int) -> Part:
    """The task as the agent and the verifier saw it: instruction.md, task.toml, tests/."""
    listing = tree.list_files().files
    wanted = [
        f
        for f in listing
        if f.path in ("instruction.md", "task.toml")
        or (f.path.startswith("tests/") and _is_text(f.path))
    ]
    return gather(tree, wanted, "The task (instruction.md, task.toml, tests/)", budget)


@dataclass
class TrialEvidence:
    agent: Part
    verifier: Part
    errors: Part


def trial_parts(output: ObjectFolder | None, budget: int) -> TrialEvidence:
    """The trial's output: the agent's trajectory (else its logs), the verifier's output, and the
    exception and Harbor's trial log."""
    empty = TrialEvidence(Part("The agent"), Part("The verifier"), Part("Errors"))
    if output is None:
        empty.agent.notes.append("(the trial left no output)")
        return empty
    listing = output.list_files().files
    by_path = {f.path: f for f in listing}
    trajectory = trajectory_path(output)
    if trajectory is not None:
        agent_files = [by_path[trajectory]]
        title = "The agent's trajectory"
    else:
        agent_files = [f for f in listing if f.path.startswith("agent/") and _is_text(f.path)]
        title = "The agent's logs"
    verifier_files = [f for f in listing if f.path.startswith("verifier/") and _is_text(f.path)]
    error_files = [by_path[p] for p in ("exception.txt", "trial.log") if p in by_path]
    return TrialEvidence(
        agent=gather(output, agent_files, title, int(budget * AGENT_SHARE / (1 - TASK_SHARE))),
        verifier=gather(
            output,
            verifier_files,
            "The verifier's output",
            int(budget * VERIFIER_SHARE / (1 - TASK_SHARE)),
        ),
        errors=gather(output, error_files, "Errors", int(budget * ERROR_SHARE / (1 - TASK_SHARE))),
    )
