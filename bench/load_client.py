"""A small asyncio HTTP/1.1 client for the load generator (bench/load.py): keep-alive, gzip, nothing else.

Written on raw asyncio streams instead of httpx so that the load generator's own CPU per request
stays small next to the server's on a 2-core machine; every byte it sends and receives is counted.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from dataclasses import dataclass, field

__all__ = ["Answer", "Connection", "HttpError"]


class HttpError(Exception):
    """The server broke the HTTP exchange (not an error status: those are answers)."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes  # decompressed
    wire_bytes: int  # head + body as received


@dataclass
class Connection:
    """One TCP connection to ``host:port`` from ``local_host`` (a loopback address of the device's own)."""

    host: str
    port: int
    local_host: str | None = None
    timeout_s: float = 60.0
    sent: int = 0
    received: int = 0
    _reader: asyncio.StreamReader | None = field(default=None, repr=False)
    _writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    async def open(self) -> None:
        local = (self.local_host, 0) if self.local_host else None
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, local_addr=local), self.timeout_s)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = self._reader = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._writer.write(head + body)
        self.sent += len(head) + len(body)
        return await asyncio.wait_for(self._read_answer(), self.timeout_s)

    async def _read_answer(self) -> Answer:
        reader = self._reader
        assert reader is not None
        raw_head = await reader.readuntil(b"\r\n\r\n")
        size = len(raw_head)
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"not an HTTP answer: {status_line!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
            size += len(body)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = await reader.readuntil(b"\r\n")
                n = int(line.split(b";")[0], 16)
                data = await reader.readexactly(n + 2)
                size += len(line) + len(data)
                if n == 0:
                    break
                chunks.append(data[:-2])
            body = b"".join(chunks)
        else:
            raise HttpError("an answer without Content-Length or chunked encoding")
        self.received += size
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                raise HttpError(f"corrupt gzip answer: {exc}") from exc
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, headers, body, size)
