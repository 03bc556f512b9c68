"""Who may reach the server: the bind check at startup and the Host-header allowlist.

Two ways a server on a laptop gets used by someone it was not meant for:

- Bound to every interface (`--host 0.0.0.0`) with no API key, anyone on the network can
  train, serve and delete. `check_exposure(settings)` refuses to start that way unless the
  operator says so (`allow_public_without_keys`, `--allow-public-without-keys`).
- Bound to loopback, a web page the user visits can still reach it by DNS rebinding: the
  page's own name is re-pointed at 127.0.0.1, and the browser then sends the page's requests
  to the server with `Host: attacker.example` (the Ollama CVE class). `HostAllowlist`
  answers such requests 421 before any route runs: a loopback server answers only
  `localhost`, `127.0.0.1`, `[::1]` (any port) and the names in `allowed_hosts`.

Example:
    >>> check_exposure(settings)              # raises ValueError before anything binds
    >>> app.add_middleware(HostAllowlist, allowed=allowed_hosts(settings))
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tuneforge.server.settings import ServerSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether binding `host` exposes the server to this machine only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(settings: ServerSettings, keys_enabled: bool) -> None:
    """Refuse a non-loopback bind without API keys unless explicitly allowed."""
    if keys_enabled or is_loopback(settings.host) or settings.allow_public_without_keys:
        return
    raise ValueError(
        f"refusing to serve on {settings.host} without API keys: anyone who reaches the port "
        "could use the server. Set --api-key / TUNEFORGE_API_KEYS, bind 127.0.0.1, or pass "
        "--allow-public-without-keys (env TUNEFORGE_ALLOW_PUBLIC_WITHOUT_KEYS=1)."
    )


def allowed_hosts(settings: ServerSettings) -> frozenset[str] | None:
    """The Host names to answer (lowercase, no port), or None to answer any."""
    extra = {_normalise(h) for h in settings.allowed_hosts if h.strip()}
    if is_loopback(settings.host):
        return frozenset({*LOOPBACK_NAMES, _normalise(settings.host), *extra})
    return frozenset(extra) if extra else None


def _normalise(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def host_name(header: str) -> str:
    """The name of a Host header without its port: `[::1]:8000` -> `::1`."""
    header = header.strip()
    if header.startswith("["):  # an IPv6 literal, maybe with a port
        end = header.find("]")
        return _normalise(header[1:end] if end > 0 else header)
    name, sep, port = header.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        header = name
    return _normalise(header)


class HostAllowlist:
    """Pure ASGI middleware: 421 (OpenAI's error shape) for a Host not in `allowed`."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v for k, v in scope.get("headers", ()) if k == b"host"), b"")
        if host_name(host.decode("latin-1")) in self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {
                "error": {
                    "message": "This server does not answer for that Host header; add the "
                    "name to --allowed-host (TUNEFORGE_ALLOWED_HOSTS) if it is yours.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_host",
                }
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 421, "headers": headers})
        await send({"type": "http.response.body", "body": body})
