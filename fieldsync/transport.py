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
import logging
import re
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3

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
    wire_bytes: int = -1  # body size as it crossed the network (-1: same as body)

    @property
    def size_on_wire(self) -> int:
        return len(self.body) if self.wire_bytes < 0 else self.wire_bytes


MAX_RESPONSE_BYTES = 256 * 1024 * 1024


def _gunzip_limited(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise NetworkError("the server's compressed answer is corrupt or cut off") from exc
    if inflater.unconsumed_tail:
        raise NetworkError(f"the server's answer is larger than {limit} bytes")
    if not inflater.eof:
        raise NetworkError("the server's compressed answer was cut off")
    return out


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


_CONTENT_HASH_PATH = re.compile(r"(/v1/attachments/)[0-9a-f]{64}")


class _HideContentHashes(logging.Filter):
    """urllib3 logs every request line at DEBUG; an attachment's path is its SHA-256, which would
    let whoever holds the log confirm that this tablet sent a known photo.  Masks it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "/v1/attachments/" in a
                                                  for a in record.args):
            record.args = tuple(_CONTENT_HASH_PATH.sub(r"\1<hash>", a) if isinstance(a, str) else a
                                for a in record.args)
        elif isinstance(record.msg, str) and "/v1/attachments/" in record.msg:
            record.msg = _CONTENT_HASH_PATH.sub(r"\1<hash>", record.msg)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_HideContentHashes())


def _tls_reason(exc: Exception) -> str:
    """The verifier's reason ("certificate verify failed: unable to get local issuer certificate",
    "Hostname mismatch, ...") from the chain requests/urllib3 wrap it in."""
    text = str(exc)
    for marker in ("certificate verify failed:", "Hostname mismatch", "IP address mismatch"):
        at = text.find(marker)
        if at >= 0:
            return text[at:].split("(_ssl.c")[0].rstrip(" ')\"")
    return type(exc).__name__


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
        max_response_bytes: int = MAX_RESPONSE_BYTES,
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
        self.max_response_bytes = max_response_bytes

    def handle(self, request: Request) -> Response:
        url = self.base_url + request.path + (f"?{request.query}" if request.query else "")
        try:
            # verify per request: requests would otherwise let REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in
            # the environment replace the district's configured CA bundle.
            r = self.session.request(request.method, url, data=request.body, headers=request.headers,
                                     timeout=self.timeout, stream=True, verify=self.session.verify)
            try:
                raw = bytearray()
                for chunk in r.raw.stream(64 * 1024, decode_content=False):
                    raw += chunk
                    if len(raw) > self.max_response_bytes:
                        raise NetworkError(f"the server's answer is larger than {self.max_response_bytes} bytes")
            finally:
                r.close()
        except requests.exceptions.SSLError as exc:
            raise NetworkError(f"the server's TLS certificate was not trusted ({_tls_reason(exc)}); "
                               "check the server address and the CA bundle") from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise NetworkError(f"could not reach the server: {type(exc).__name__}") from exc
        except OSError as exc:  # requests: the configured CA bundle cannot be read
            raise NetworkError(f"could not use the CA bundle {self.session.verify!r}: {exc.strerror or exc}") from exc
        headers = {k.lower(): v for k, v in r.headers.items()}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) != len(raw):
            raise NetworkError("the server's answer was cut off")
        if (length is None and "chunked" not in headers.get("transfer-encoding", "").lower()
                and r.status_code not in (204, 304) and request.method != "HEAD"):
            # The server always says how long its answer is; a connection closed inside the
            # header block leaves neither (http.client ends the headers at the end of the stream).
            raise NetworkError("the server's answer was cut off (no length)")
        body = bytes(raw)
        if headers.get("content-encoding", "").lower() == "gzip":
            body = _gunzip_limited(body, self.max_response_bytes)
        return Response(r.status_code, headers, body, len(raw))

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
        return await call_app(self.app, request, self.client_host)

    def close(self) -> None:
        self._loop.close()


async def call_app(app: Any, request: Request, client_host: str = "127.0.0.1") -> Response:
    """Run one request through an ASGI ``app`` on the running event loop (no socket)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": request.method, "scheme": "http", "path": request.path, "raw_path": request.path.encode(),
        "query_string": request.query.encode(), "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]
        + [(b"content-length", str(len(request.body)).encode()), (b"host", b"in-process")],
        "client": (client_host, 50000), "server": ("in-process", 80),
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

    await app(scope, receive, send)
    raw = b"".join(chunks)
    body = raw
    if headers.get("content-encoding") == "gzip":
        body = _gunzip_limited(raw, MAX_RESPONSE_BYTES)
    return Response(status, headers, body, len(raw))
