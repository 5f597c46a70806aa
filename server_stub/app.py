"""The district server's HTTP API (Starlette, served by uvicorn).

``create_app(district)`` builds the ASGI app.  Bodies are JSON, optionally
gzip-compressed both ways; every answer carries the server time in
``X-Fieldsync-Server-Time`` so devices can correct their clock offset.
Errors are ``{"error": {"code", "message", ...}}`` with a 4xx status; an
unexpected failure is a 500 that names no personal data.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fieldsync.protocol import MAX_BODY_BYTES, MAX_CHUNK_BYTES, PROTOCOL_VERSION, dumps
from fieldsync.schema import SCHEMA_VERSION

from .auth import ApiError, Device
from .console import create_console
from .district import H_ATTACHMENT_SIZE, District
from .openapi import openapi_document
from .watch import GridWatch

__all__ = ["create_app"]

log = logging.getLogger("fieldsync.server")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


def _answer(content: Any, status: int = 200) -> Response:
    return _Json(content, status_code=status, headers={"X-Fieldsync-Server-Time": str(_now_ms())})


def _error(exc: ApiError) -> Response:
    answer = _answer({"error": {"code": exc.code, "message": exc.message, **exc.extra}}, exc.status)
    if isinstance(exc.extra.get("retry_after"), int):
        answer.headers["Retry-After"] = str(exc.extra["retry_after"])  # RFC 9110 §10.2.3, for proxies and tools
    return answer


async def _raw_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise ApiError(400, "bad_request", "Content-Length is not a number")
    if length is not None and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _raw_chunk(request: Request) -> bytes:
    """An attachment chunk: raw bytes, at most MAX_CHUNK_BYTES (checked before authentication)."""
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise ApiError(400, "bad_request", "Content-Length is not a number")
    too_large = ApiError(413, "chunk_too_large", f"an attachment chunk is limited to {MAX_CHUNK_BYTES} bytes")
    if length is not None and int(length) > MAX_CHUNK_BYTES:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CHUNK_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class _Compress:
    """GZip answers (GZipMiddleware), except attachment bytes: photos are compressed already."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=1024, compresslevel=5)  # level 9 cost 4x the CPU for 10% fewer bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/v1/attachments/") and path != "/v1/attachments/status":
            await self.app(scope, receive, send)
        else:
            await self.gzip(scope, receive, send)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON: other clients could not read them back.
    raise ValueError(f"{name} is not allowed in JSON")


def _decode(raw: bytes, encoding: str | None) -> dict[str, Any]:
    if encoding and encoding.lower() == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(raw, MAX_BODY_BYTES)
        except zlib.error as exc:
            raise ApiError(400, "bad_request", "the gzip body is corrupt") from exc
        if inflater.unconsumed_tail or not inflater.eof:
            raise ApiError(400 if not inflater.unconsumed_tail else 413, "bad_request" if not inflater.unconsumed_tail else "too_large",
                           "the gzip body is truncated" if not inflater.unconsumed_tail else "the decompressed body is too large")
    elif encoding and encoding.lower() != "identity":
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported (use gzip)")
    try:
        data = json.loads(raw, parse_constant=_no_constants) if raw else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_request", f"the body is not valid JSON ({exc})") from exc
    except RecursionError:
        raise ApiError(400, "bad_request", "the body is not valid JSON (nested too deeply)") from None
    if _SURROGATE_ESCAPE.search(raw):
        # "\ud800" alone is valid JSON but not Unicode: it could be neither stored nor sent back as UTF-8.
        try:
            dumps(data)
        except UnicodeEncodeError:
            raise ApiError(400, "bad_request", "the body is not valid JSON (an unpaired surrogate escape)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return data


Handler = Callable[[Device, dict[str, Any]], "dict[str, Any] | bytes"]


def create_app(district: District) -> Starlette:
    """The ASGI app serving ``district``."""

    def signed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                raw = await _raw_body(request)
                headers = {k.lower(): v for k, v in request.headers.items()}
                device = await run_in_threadpool(
                    district.authenticate, request.method, request.url.path, request.url.query, raw, headers)
                body = _decode(raw, request.headers.get("content-encoding"))
                result = await run_in_threadpool(handler, device, body)
                if isinstance(result, bytes):  # already encoded (pull pages splice stored bodies in)
                    return Response(result, media_type="application/json",
                                    headers={"X-Fieldsync-Server-Time": str(_now_ms())})
                return _answer(result)
            except ApiError as exc:
                return _error(exc)
        return endpoint

    watch = GridWatch(district.db)

    async def wait(request: Request) -> Response:
        """Long-poll: answer when the device's grids change after its cursors, or at the timeout."""
        try:
            raw = await _raw_body(request)
            headers = {k.lower(): v for k, v in request.headers.items()}
            device = await run_in_threadpool(
                district.authenticate, request.method, request.url.path, request.url.query, raw, headers)
            body = _decode(raw, request.headers.get("content-encoding"))
            grids, cursors, timeout_ms = await run_in_threadpool(district.wait_request, device, body)
            changed = await watch.wait(grids, cursors, timeout_ms)
            return _answer({"changed": changed, "server_time_ms": _now_ms()})
        except ApiError as exc:
            return _error(exc)

    async def hello(request: Request) -> Response:
        return _answer({"service": "fieldsync-district", "protocol_version": PROTOCOL_VERSION,
                        "schema_version": SCHEMA_VERSION, "server_time_ms": _now_ms()})

    async def enroll(request: Request) -> Response:
        try:
            raw = await _raw_body(request)
            body = _decode(raw, request.headers.get("content-encoding"))
            source = request.client.host if request.client else "unknown"
            return _answer(await run_in_threadpool(district.enroll, body, source))
        except ApiError as exc:
            return _error(exc)

    def me(device: Device, body: dict[str, Any]) -> dict[str, Any]:
        device.refuse_if_revoked()
        with district.db.transaction() as tx:
            from .auth import scope_of

            grids = scope_of(tx, device.worker_id)
        return {"device_id": device.id, "worker_id": device.worker_id, "grids": grids, "server_time_ms": _now_ms()}

    async def attachment(request: Request) -> Response:
        """PUT: one raw chunk of an upload; GET: a range of a complete attachment (protocol §16)."""
        try:
            digest = request.path_params["hash"]
            upload = request.method == "PUT"
            raw = await (_raw_chunk(request) if upload else _raw_body(request))
            headers = {k.lower(): v for k, v in request.headers.items()}
            device = await run_in_threadpool(
                district.authenticate, request.method, request.url.path, request.url.query, raw, headers)
            if upload:
                encoding = headers.get("content-encoding")
                if encoding and encoding.lower() != "identity":
                    raise ApiError(415, "unsupported_encoding", "attachment chunks are sent as they are, not encoded")
                return _answer(await run_in_threadpool(district.attachment_put, device, digest, request.url.query,
                                                       headers.get(H_ATTACHMENT_SIZE.lower()), raw))
            data, size = await run_in_threadpool(district.attachment_get, device, digest, request.url.query)
            return Response(data, media_type="application/octet-stream",
                            headers={"X-Fieldsync-Server-Time": str(_now_ms()), H_ATTACHMENT_SIZE: str(size)})
        except ApiError as exc:
            return _error(exc)
        except ClientDisconnect:
            # A tablet that lost the network mid-chunk: nothing of the chunk was kept; it resumes later.
            log.info("attachment upload cut off by the client")
            return Response(status_code=400)

    async def openapi(request: Request) -> Response:
        return _answer(openapi_document())

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
        answer = _error(ApiError(status, code, f"{request.method} {request.url.path}: {code.replace('_', ' ')}"))
        answer.headers.update(getattr(exc, "headers", None) or {})  # 405: Allow, as RFC 9110 requires
        return answer

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientDisconnect):  # the network cut the request: nobody is there to answer
            log.info("%s %s cut off by the client", request.method, request.url.path)
            return Response(status_code=400)
        log.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return _answer({"error": {"code": "internal", "message": "the server failed; the request had no effect"}}, 500)

    routes = [
        Route("/v1/hello", hello, methods=["GET"]),
        Route("/v1/enroll", enroll, methods=["POST"]),
        Route("/v1/me", signed(me), methods=["POST"]),
        Route("/v1/push", signed(district.push), methods=["POST"]),
        Route("/v1/pull", signed(district.pull), methods=["POST"]),
        Route("/v1/buckets", signed(district.buckets), methods=["POST"]),
        Route("/v1/repair", signed(district.repair), methods=["POST"]),
        Route("/v1/wait", wait, methods=["POST"]),
        Route("/v1/attachments/status", signed(district.attachment_status), methods=["POST"]),
        Route("/v1/attachments/{hash}", attachment, methods=["GET", "PUT"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Mount("/console", app=create_console(district)),  # the web console (server_stub/console)
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Compress)],
        exception_handlers={HTTPException: on_http_error, Exception: on_error},
    )
