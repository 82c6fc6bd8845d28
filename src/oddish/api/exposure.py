"""Who can reach the API: an API reachable beyond this machine needs ODDISH_API_KEY, and it
answers only the Host names it was told (``ODDISH_TRUSTED_HOSTS``), so that a web page cannot
reach a local, keyless API through DNS rebinding.

``python -m oddish.api`` and ``oddish up`` apply both before they serve.
"""

from __future__ import annotations

import ipaddress

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp

from oddish.config import get_settings

__all__ = [
    "check_exposure",
    "exposed_host",
    "exposure_problem",
    "guard_hosts",
    "host_note",
    "is_loopback",
    "trusted_hosts",
]

# Exit code of a refused start, as for any bad command-line input.
REFUSED_EXIT_CODE = 2


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the API on this machine: ``localhost``, 127.0.0.0/8 or
    ::1 (also IPv4-mapped). Any other name may resolve to anything, and an empty host, 0.0.0.0
    or :: is every interface."""
    if host.strip().lower() == "localhost":
        return True
    address = _address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and address.is_loopback


def check_exposure(host: str, api_key: str | None) -> str | None:
    """The reason not to serve on ``host`` without ``api_key``, or None when that is fine."""
    if is_loopback(host) or (api_key or "").strip():
        return None
    shown = host or "every interface"
    return (
        f"refusing to serve the API on {shown}: other machines can reach it there and "
        "ODDISH_API_KEY is not set, so anyone who reaches it could run, read and delete tasks. "
        "Set ODDISH_API_KEY (clients send it as 'Authorization: Bearer <key>'), or listen on "
        "127.0.0.1."
    )


def exposed_host(bind_host: str) -> str:
    """Where the API is reachable: ODDISH_API_PUBLISHED_HOST when set (a container's port
    published on the host), else the address it binds."""
    return get_settings().api_published_host or bind_host


def exposure_problem(bind_host: str) -> str | None:
    """``check_exposure`` on the configured key and the address the API is reachable at."""
    return check_exposure(exposed_host(bind_host), get_settings().api_key)


def _as_host_header(host: str) -> str | None:
    """``host`` as a Host header names it, or None for a wildcard address (no client sends
    0.0.0.0)."""
    host = host.strip().lower()
    address = _address(host)
    if address is None:
        return host or None
    if address.is_unspecified:
        return None
    return f"[{address}]" if address.version == 6 else str(address)


def trusted_hosts(bind_host: str | None = None) -> list[str]:
    """The Host values the API answers: ODDISH_TRUSTED_HOSTS, plus the address it listens on and
    the one it is published on, when they name one. ``["*"]`` turns the check off."""
    settings = get_settings()
    hosts = list(settings.trusted_hosts)
    if "*" in hosts:
        return ["*"]
    for host in (bind_host, settings.api_published_host):
        header = _as_host_header(host) if host else None
        if header and header not in hosts:
            hosts.append(header)
    return hosts


def guard_hosts(app: ASGIApp, bind_host: str | None = None) -> ASGIApp:
    """``app`` behind Starlette's TrustedHostMiddleware: any other Host gets a 400 before the key
    is checked or a byte of the body read. Lifespan events pass through untouched."""
    return TrustedHostMiddleware(app, allowed_hosts=trusted_hosts(bind_host), www_redirect=False)


def host_note(bind_host: str) -> str | None:
    """A line for the start-up log when clients on other machines would be refused for their
    Host header, or None."""
    hosts = trusted_hosts(bind_host)
    if "*" in hosts or is_loopback(exposed_host(bind_host)):
        return None
    return (
        f"the API answers only requests whose Host is one of {', '.join(hosts)}; list the names "
        "clients use in ODDISH_TRUSTED_HOSTS (comma-separated, '*.example.com' for subdomains)"
    )
