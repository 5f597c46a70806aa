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
import time
import zlib
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fieldsync.protocol import MAX_BODY_BYTES, PROTOCOL_VERSION, dumps
from fieldsync.schema import SCHEMA_VERSION

from .auth import ApiError, Device
from .district import District
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
    return _answer({"error": {"code": exc.code, "message": exc.message, **exc.extra}}, exc.status)


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

    async def openapi(request: Request) -> Response:
        return _answer(openapi_document())

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
        return _error(ApiError(status, code, f"{request.method} {request.url.path}: {code.replace('_', ' ')}"))

    async def on_error(request: Request, exc: Exception) -> Response:
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
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(GZipMiddleware, minimum_size=1024)],
        exception_handlers={HTTPException: on_http_error, Exception: on_error},
    )
