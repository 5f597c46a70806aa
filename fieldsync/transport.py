"""The one I/O seam of the sync client: ``Transport.handle(request) -> response``.

* :class:`RequestsTransport` (the default) talks HTTP(S) through a
  ``requests.Session`` with timeouts and certificate verification.  It
  refuses plain ``http://`` to anything but a loopback address unless told
  ``allow_insecure_http=True``.
* :class:`ASGITransport` calls an ASGI app (such as the district server) in
  this process: fast tests with no socket.

Transports raise :class:`NetworkError` when no answer came; any answer,
whatever its status, is returned as a :class:`Response`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

from .errors import NetworkError

__all__ = ["Request", "Response", "Transport", "RequestsTransport", "ASGITransport", "is_loopback_url"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with leading /, no query
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # already decoded from any Content-Encoding


class Transport(Protocol):
    def handle(self, request: Request) -> Response: ...


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestsTransport:
    """HTTP(S) to ``base_url``.  ``ca_bundle`` trusts a district's own CA."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ca_bundle: str | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server address must be https://host[:port], got {base_url!r}")
        if parts.scheme == "http" and not allow_insecure_http and not is_loopback_url(base_url):
            raise ValueError(
                f"refusing plain http to {parts.hostname}: personal data must travel over https "
                "(allow_insecure_http=True only for a trusted test network)"
            )
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, timeout)
        self.session = requests.Session()
        self.session.verify = ca_bundle if ca_bundle else True

    def handle(self, request: Request) -> Response:
        url = self.base_url + request.path + (f"?{request.query}" if request.query else "")
        try:
            r = self.session.request(request.method, url, data=request.body, headers=request.headers,
                                     timeout=self.timeout)
            body = r.content  # requests decodes gzip responses
        except requests.RequestException as exc:
            raise NetworkError(f"could not reach the server: {type(exc).__name__}") from exc
        return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, body)

    def close(self) -> None:
        self.session.close()


class ASGITransport:
    """Run requests through an ASGI app in this process (no socket)."""

    def __init__(self, app: Any, client_host: str = "127.0.0.1") -> None:
        self.app = app
        self.client_host = client_host
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        with self._lock:
            return self._loop.run_until_complete(self._call(request))

    async def _call(self, request: Request) -> Response:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": "http", "path": request.path, "raw_path": request.path.encode(),
            "query_string": request.query.encode(), "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]
            + [(b"content-length", str(len(request.body)).encode()), (b"host", b"in-process")],
            "client": (self.client_host, 50000), "server": ("in-process", 80),
        }
        sent = False
        status = 500
        headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers.update({k.decode().lower(): v.decode() for k, v in message.get("headers", [])})
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        body = b"".join(chunks)
        if headers.get("content-encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        return Response(status, headers, body)

    def close(self) -> None:
        self._loop.close()
