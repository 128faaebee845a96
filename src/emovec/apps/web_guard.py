"""Cross-site protection shared by emovec's servers (the dashboard and the chat endpoint).

A server bound to loopback is still reachable from any web page the user opens: the page can
open a websocket to it (browsers do not apply the same-origin policy to websockets), post
"simple" requests to it, and with DNS rebinding read its answers under an attacker's host
name. :class:`Guard` closes those three doors in front of the application, for HTTP and
websocket alike:

- the ``Host`` header must name the bound address or a loopback name, with the right port
  (defeats DNS rebinding);
- an ``Origin`` header, when present, must be the server's own origin (defeats cross-site
  websocket hijacking and cross-site posts; non-browser clients send none);
- protected paths need the per-launch secret token, as ``?token=``, an ``X-Emovec-Token``
  header or ``Authorization: Bearer`` (a page on another origin cannot learn it).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
TOKEN_HEADER = "x-emovec-token"


def new_token() -> str:
    """A fresh per-launch secret (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """``host:port`` values a request's Host header may carry for a server bound there."""
    names = {*LOOPBACK_NAMES}
    if host not in ("0.0.0.0", "::", ""):
        names.add(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return frozenset(f"{name}:{port}".lower() for name in names)


class Guard:
    """ASGI middleware: Host and Origin checks on every request, a token on protected paths."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        hosts: Iterable[str],
        token: str | None,
        protected: tuple[str, ...] = ("/api", "/ws"),
    ) -> None:
        self.app, self.hosts, self.token, self.protected = app, frozenset(hosts), token, protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.refusal(scope)
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await receive()  # the connect event; closing before accept answers HTTP 403
            await send({"type": "websocket.close", "code": 1008, "reason": problem[1]})
        else:
            body = json.dumps({"error": problem[1]}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": problem[0], "headers": headers})
            await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) for a request to refuse, or None to let it through."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").strip().lower()
        if host not in self.hosts:
            return 421, "unexpected Host header: this server answers only its own address"
        origin = headers.get("origin")
        if origin is not None and not self.same_origin(origin):
            return 403, "cross-origin request refused"
        path = scope.get("path", "")
        if self.token and path.startswith(self.protected):
            presented = self.presented_token(scope, headers).encode("utf-8", "replace")
            if not hmac.compare_digest(presented, self.token.encode()):
                return 403, "missing or wrong token: open the URL that the server printed"
        return None

    def same_origin(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and parts.netloc.lower() in self.hosts

    @staticmethod
    def presented_token(scope: Scope, headers: dict[str, str]) -> str:
        if TOKEN_HEADER in headers:
            return headers[TOKEN_HEADER]
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return query.get("token", [""])[0]
