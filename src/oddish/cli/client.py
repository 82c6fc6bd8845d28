"""The REST API client: ``ODDISH_API_URL`` and ``ODDISH_API_KEY``, and one-line errors."""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any, BinaryIO, Self
from urllib.parse import quote

import httpx

from oddish.cli.output import fail

DEFAULT_API_URL = "http://localhost:8000"
# Transport failures worth sending a request again for; a refused connection is not one of them
# (the API is down, and saying so at once beats making the user wait).
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError)
ATTEMPTS = 3


# Set by a command's --api option: wins over the environment for this process.
_api_url_option: str | None = None


def use_api_url(url: str | None) -> None:
    """The API every client of this process talks to (a command's ``--api URL``)."""
    global _api_url_option
    _api_url_option = url.strip().rstrip("/") if url and url.strip() else None


def api_url() -> str:
    """``--api``, else ``ODDISH_API_URL``, else ``ODDISH_DEFAULT_API_URL`` (the original's
    fallback), else http://localhost:8000."""
    if _api_url_option:
        return _api_url_option
    for name in ("ODDISH_API_URL", "ODDISH_DEFAULT_API_URL"):
        url = os.environ.get(name, "").strip().rstrip("/")
        if url:
            return url
    return DEFAULT_API_URL


def dashboard_url() -> str:
    """The dashboard's base: ``ODDISH_DASHBOARD_URL``, else ``ODDISH_DEFAULT_DASHBOARD_URL``,
    else the API's own pages (``<api>/ui``)."""
    for name in ("ODDISH_DASHBOARD_URL", "ODDISH_DEFAULT_DASHBOARD_URL"):
        value = os.environ.get(name, "").strip().rstrip("/")
        if value:
            return value
    return f"{api_url()}/ui"


def dashboard_page(kind: str, id_: str) -> str:
    """The dashboard's page of an experiment, task or trial (``kind``: experiments, tasks,
    trials)."""
    return dashboard_url() + path_of(kind, id_)


def path_of(*parts: str) -> str:
    """A URL path from ids and keys, each quoted (queue keys keep their slashes)."""
    return "/" + "/".join(quote(part, safe="/") for part in parts)


def error_detail(response: httpx.Response) -> str:
    """The API's reason for a failed request, on one line."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text.strip() or response.reason_phrase
    if isinstance(detail, list):  # FastAPI's validation errors: where, and what is wrong
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', ()) if p != 'body')}: {item.get('msg')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    return " ".join(str(detail).split())[:2000]


class ApiError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.detail = error_detail(response)
        super().__init__(f"{self.detail} (HTTP {self.status_code})")


class RequestFailed(Exception):
    """A request that failed, with the one line that tells the user why (see ``raise_failures``
    of :meth:`ApiClient.request`)."""


class ApiClient:
    """Calls the API; any failure prints one line on stderr and exits with code 1.

    One client may be used from several threads at once (httpx.Client is thread-safe): its
    connection pool then keeps a connection per thread open.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None) -> None:
        self.base_url = base_url or api_url()
        key = api_key if api_key is not None else os.environ.get("ODDISH_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=60.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        retry: bool | None = None,
        raise_api_errors: bool = False,
        raise_failures: bool = False,
        **kwargs: Any,
    ) -> Any:
        """The JSON answer of a request.

        ``retry`` (default: for GET and PUT) sends the request again after a timeout or a dropped
        connection; only requests that cannot do anything twice may be retried. With
        ``raise_api_errors`` an error answer raises ApiError instead of exiting; with
        ``raise_failures`` any failure raises RequestFailed with its line instead of printing it
        and exiting (requests made side by side, of which one line should be shown).
        """
        try:
            response = self._send(method, path, retry=retry, **kwargs)
        except RequestFailed as exc:
            if raise_failures:
                raise
            fail(str(exc))
        if response.is_success:
            return response.json()
        if raise_api_errors:
            raise ApiError(response)
        line = f"{error_detail(response)} (HTTP {response.status_code} from {method} {path})"
        if raise_failures:
            raise RequestFailed(line)
        fail(line)

    def _send(self, method: str, path: str, *, retry: bool | None, **kwargs: Any) -> httpx.Response:
        """The response to a request (of any status); RequestFailed when none came."""
        attempts = ATTEMPTS if (retry if retry is not None else method in ("GET", "PUT")) else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._http.request(method, path, **kwargs)
            except httpx.ConnectError:
                raise RequestFailed(
                    f"cannot reach the oddish API at {self.base_url}; start it with `oddish up` "
                    "or point ODDISH_API_URL at a running one"
                ) from None
            except RETRYABLE_ERRORS as exc:
                if attempt == attempts:
                    raise RequestFailed(
                        f"the oddish API at {self.base_url} did not answer {method} {path}: "
                        f"{type(exc).__name__} after {attempts} attempts"
                    ) from None
                time.sleep(attempt)
            except httpx.HTTPError as exc:
                raise RequestFailed(
                    f"request to the oddish API at {self.base_url} failed: {exc}"
                ) from None
        raise AssertionError("unreachable")

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def download(self, path: str, out: BinaryIO, **kwargs: Any) -> int:
        """Stream the body of ``GET path`` into ``out``; the bytes written. ApiError for an error
        answer; a dropped transfer is started again from the beginning (``out`` rewound)."""
        start = out.tell()
        for attempt in range(1, ATTEMPTS + 1):
            out.seek(start)
            out.truncate()
            try:
                with self._http.stream("GET", path, **kwargs) as response:
                    if not response.is_success:
                        response.read()
                        raise ApiError(response)
                    written = 0
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        written += len(chunk)
                    return written
            except httpx.ConnectError:
                fail(f"cannot reach the oddish API at {self.base_url}")
            except RETRYABLE_ERRORS as exc:
                if attempt == ATTEMPTS:
                    fail(
                        f"the oddish API at {self.base_url} did not send {path}: "
                        f"{type(exc).__name__} after {ATTEMPTS} attempts"
                    )
                time.sleep(attempt)
        raise AssertionError("unreachable")

    def get_all_tasks(self, *, experiment: str | None = None) -> list[dict[str, Any]]:
        """Every task summary (of an experiment), all pages: newest first."""
        tasks: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            params: dict[str, Any] = {"limit": 500, "offset": offset}
            if experiment:
                params["experiment"] = experiment
            page = self.get("/tasks", params=params)
            tasks += page["tasks"]
            offset = page["next_offset"]
        return tasks
