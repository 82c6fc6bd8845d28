"""An LLM "judge" for the tests: a real HTTP server on 127.0.0.1 speaking OpenAI's
chat-completions API, which oddish reaches through LiteLLM (``model="openai/<name>"``,
``api_base=server.url``). Standard library only; it serves from a daemon thread of the test
process, and the workers that call it are other processes.

    from llm_server import JudgeServer, judge_server_fixture  # noqa: F401

registers the fixture ``judge_server``: a started :class:`JudgeServer`, new for each test.

The answers are deterministic, chosen by the response_format's json_schema name and the
material (every message but the system prompt, which names all the classes):

* ``trial_analysis``: the first line ``Verified reward: <x>`` gives the reward (``none`` → None).
  A prompt containing ``BRITTLE`` whose reward is not >= 1 is a BAD_FAILURE ("Rigid/Brittle
  Tests"); else a reward >= 1 is a GOOD_SUCCESS, anything else a GOOD_FAILURE.
  ``force_classification`` overrides the classification.
* ``task_verdict``: not good when the prompt mentions BAD_FAILURE or BAD_SUCCESS, else good.
* any other name (or none): ``{"answer": "ok"}``.

Every text field names the model asked (``judged by <model>``), so a test can tell which model
answered. Knobs (any time, from any thread): :meth:`JudgeServer.rate_limit_next` (429 with
Retry-After), :meth:`JudgeServer.server_error_next` (500), :meth:`JudgeServer.malformed_next`
(200 whose content is not JSON), ``delay_sec`` and ``force_classification``. When several
are armed, a request takes a rate limit first, then a server error, then a malformed answer.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

COMPLETION_PATHS = ("/v1/chat/completions", "/chat/completions")
MALFORMED_CONTENT = "Sure! Here is my analysis: {classification: maybe"

_REWARD_LINE = re.compile(r"^Verified reward: (.+)$", re.MULTILINE)

# The subtype that goes with a classification (used when a test forces one).
SUBTYPES = {
    "GOOD_SUCCESS": "Correct Solution",
    "GOOD_FAILURE": "Wrong Approach",
    "BAD_FAILURE": "Rigid/Brittle Tests",
    "BAD_SUCCESS": "Reward Hacking",
}


@dataclass
class JudgeRequest:
    """One request the server received, and what it answered."""

    model: str | None
    messages: list[dict[str, Any]]
    prompt: str  # every message's text, joined with "\n"
    schema_name: str | None  # response_format.json_schema.name
    headers: Headers  # a dict; any case finds a name: headers["Authorization"]
    received_at: float  # time.time()
    status: int = 0  # the HTTP status answered (0 until answered; 499: the client hung up)
    content: str | None = None  # the message content answered (200 only), raw
    answered_at: float | None = None
    body: dict[str, Any] = field(default_factory=dict)  # the whole request body


class Headers(dict[str, str]):
    """A request's headers, looked up regardless of case (httpx sends lowercase names)."""

    def __getitem__(self, name: str) -> str:
        for key, value in self.items():
            if key.lower() == name.lower():
                return value
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(key.lower() == name.lower() for key in self)


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def parse_reward(prompt: str) -> float | None:
    """The reward on the prompt's first ``Verified reward:`` line; None if absent or not a
    number (``none``)."""
    match = _REWARD_LINE.search(prompt)
    if match is None:
        return None
    try:
        return float(match.group(1).strip())
    except ValueError:
        return None


def trial_analysis(prompt: str, model: str, force: str | None = None) -> dict[str, Any]:
    reward = parse_reward(prompt)
    succeeded = reward is not None and reward >= 1
    if "BRITTLE" in prompt and not succeeded:
        classification = "BAD_FAILURE"
    elif succeeded:
        classification = "GOOD_SUCCESS"
    else:
        classification = "GOOD_FAILURE"
    subtype = SUBTYPES[classification]
    if force is not None:
        classification = force
        subtype = SUBTYPES.get(force, subtype)
    return {
        "classification": classification,
        "subtype": subtype,
        "evidence": f"Verified reward {reward}; judged by {model}",
        "root_cause": f"{subtype}, judged by {model}",
        "recommendation": f"No change needed unless {subtype}; judged by {model}",
    }


def task_verdict(prompt: str, model: str) -> dict[str, Any]:
    if "BAD_FAILURE" in prompt or "BAD_SUCCESS" in prompt:
        return {
            "is_good": False,
            "confidence": "high",
            "primary_issue": "Rigid/Brittle Tests",
            "recommendations": ["Loosen the brittle test"],
            "reasoning": f"A trial failed because of the task itself; judged by {model}",
        }
    return {
        "is_good": True,
        "confidence": "high",
        "primary_issue": None,
        "recommendations": [],
        "reasoning": f"The trials' outcomes follow the agents' work; judged by {model}",
    }


def answer(schema_name: str | None, prompt: str, model: str, force: str | None = None) -> Any:
    """The judge's answer (before JSON encoding) to a prompt asked under a schema name."""
    if schema_name == "trial_analysis":
        return trial_analysis(prompt, model, force)
    if schema_name == "task_verdict":
        return task_verdict(prompt, model)
    return {"answer": "ok"}


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class JudgeServer:
    """The server; :meth:`start` it (or use it as a context manager)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Condition()
        self._requests: list[JudgeRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._rate_limited = 0
        self._retry_after: float | int = 1
        self._server_errors = 0
        self._malformed = 0
        self.delay_sec: float = 0.0
        self.force_classification: str | None = None
        self.port = 0
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> JudgeServer:
        judge = self

        class Handler(_Handler):
            server_of = judge

        httpd = ThreadingHTTPServer((self.host, self._requested_port), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self.url = f"http://{self.host}:{self.port}/v1"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- knobs ------------------------------------------------------------------------------

    def rate_limit_next(self, n: int, retry_after: float | int = 1) -> None:
        """The next ``n`` requests get a 429 with ``Retry-After: <retry_after>``."""
        with self._lock:
            self._rate_limited = n
            self._retry_after = retry_after

    def server_error_next(self, n: int) -> None:
        """The next ``n`` requests get a 500."""
        with self._lock:
            self._server_errors = n

    def malformed_next(self, n: int) -> None:
        """The next ``n`` requests get a 200 whose content is not JSON."""
        with self._lock:
            self._malformed = n

    def reset(self) -> None:
        """Forget the requests and counters; disarm every knob."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = self._in_flight
            self._rate_limited = self._server_errors = self._malformed = 0
            self._retry_after = 1
            self.delay_sec = 0.0
            self.force_classification = None

    # -- what happened ----------------------------------------------------------------------

    @property
    def requests(self) -> list[JudgeRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests handled at the same moment."""
        with self._lock:
            return self._max_in_flight

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> list[JudgeRequest]:
        """Block until ``count`` requests have been answered; the requests. Raises
        TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(1 for r in self._requests if r.status) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    answered = sum(1 for r in self._requests if r.status)
                    raise TimeoutError(
                        f"{answered} requests to the judge answered, not {count}, within {timeout}s"
                    )
                self._lock.wait(left)
            return list(self._requests)

    # -- used by the handler ----------------------------------------------------------------

    def _begin(self, record: JudgeRequest) -> None:
        with self._lock:
            self._requests.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _answer(self, record: JudgeRequest, status: int, content: str | None) -> None:
        """Record the answer before it is sent: a client that has it finds it recorded."""
        with self._lock:
            record.status = status
            record.content = content
            record.answered_at = time.time()
            self._lock.notify_all()

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _take_fault(self) -> tuple[str | None, float | int]:
        """The fault this request gets, if one is armed: "rate_limit", "server_error",
        "malformed"; with the Retry-After value."""
        with self._lock:
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return "rate_limit", self._retry_after
            if self._server_errors > 0:
                self._server_errors -= 1
                return "server_error", 0
            if self._malformed > 0:
                self._malformed -= 1
                return "malformed", 0
            return None, 0


class _Handler(BaseHTTPRequestHandler):
    server_of: JudgeServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI SDK's httpx client expects

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per request

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _not_found(self) -> None:
        self._read_body()
        self._send_json(
            404, _error(f"Unknown path {self.command} {self.path}", "invalid_request_error", None)
        )

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_found

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") not in COMPLETION_PATHS:
            self._not_found()
            return
        raw = self._read_body()
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._send_json(400, _error(f"Invalid JSON body: {exc}", "invalid_request_error", None))
            return
        messages = body.get("messages") or []
        messages = [m for m in messages if isinstance(m, dict)]
        prompt = "\n".join(_text(m.get("content")) for m in messages)
        response_format = body.get("response_format") or {}
        json_schema = (
            response_format.get("json_schema") if isinstance(response_format, dict) else None
        )
        schema_name = json_schema.get("name") if isinstance(json_schema, dict) else None
        record = JudgeRequest(
            model=body.get("model"),
            messages=messages,
            prompt=prompt,
            schema_name=schema_name,
            headers=Headers(self.headers.items()),
            received_at=time.time(),
            body=body,
        )
        judge = self.server_of
        judge._begin(record)
        try:
            if judge.delay_sec > 0:
                time.sleep(judge.delay_sec)  # in flight all along
            # Judged on the material (the user's messages): the system prompt names every class.
            material = "\n".join(
                _text(m.get("content")) for m in messages if m.get("role") != "system"
            )
            status, payload, headers, content = self._reply(judge, body, material, schema_name)
            judge._answer(record, status, content)
            self._send_json(status, payload, headers)
        except ConnectionError:
            judge._answer(record, 499, None)  # the client hung up (e.g. its timeout)
        finally:
            judge._end()

    def _reply(
        self, judge: JudgeServer, body: dict[str, Any], prompt: str, schema_name: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str], str | None]:
        """Status, body, extra headers and message content of the answer to a request."""
        if body.get("stream"):
            return (
                400,
                _error("Streaming is not supported", "invalid_request_error", None),
                {},
                None,
            )
        fault, retry_after = judge._take_fault()
        if fault == "rate_limit":
            return (
                429,
                _error("Rate limit reached", "rate_limit_error", "rate_limit_exceeded"),
                {"Retry-After": str(retry_after)},
                None,
            )
        if fault == "server_error":
            return (
                500,
                _error("The server had an error", "server_error", "internal_error"),
                {},
                None,
            )
        model = str(body.get("model") or "")
        if fault == "malformed":
            content = MALFORMED_CONTENT
        else:
            content = json.dumps(answer(schema_name, prompt, model, judge.force_classification))
        prompt_tokens = len(prompt) // 4
        completion_tokens = len(content) // 4
        payload = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return 200, payload, {}, content


@pytest.fixture(name="judge_server")
def judge_server_fixture() -> Iterator[JudgeServer]:
    """A started judge, new for each test (starting one is cheap)."""
    server = JudgeServer().start()
    try:
        yield server
    finally:
        server.stop()
