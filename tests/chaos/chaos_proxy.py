"""A real TCP fault proxy on 127.0.0.1, between devices and a real (uvicorn) district server.

The proxy reads each HTTP/1.1 request from the client connection (head and body, by
``Content-Length``), decides with a seeded ``random.Random`` what the network does to it,
forwards it on a fresh upstream connection and relays the answer (``Content-Length`` or
chunked).  Faults, per request::

    tcp_drop_request    the client's connection is closed; the server never sees the request
    tcp_cut_request     head and part of the body reach the server, then both sockets close
                        (the server sees a body shorter than Content-Length and must not apply it)
    tcp_drop_response   the server answers in full (it committed); the client's connection closes
    tcp_cut_response    the server answers; the client gets only part of the answer, then a close
    tcp_delay           a pause before the request and before the answer
    tcp_duplicate       the request goes upstream twice, on two connections at once; one answer
    tcp_reorder         the request is held and the client's connection closed; the held copy is
                        delivered after the next request got through

and, set from outside for several rounds, ``partition`` = ``"refuse"`` (every connection is
closed at once) or ``"blackhole"`` (connections are accepted and never answered: the client
times out).  ``on_forward(path)`` is called as a request goes upstream (the server-crash test
uses it to kill the server in the middle of a push).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from typing import Callable, Mapping

__all__ = ["FaultProxy", "TCP_FAULT_KINDS", "TCP_PROFILES"]

TCP_FAULT_KINDS = ("tcp_drop_request", "tcp_cut_request", "tcp_drop_response", "tcp_cut_response",
                   "tcp_delay", "tcp_duplicate", "tcp_reorder")

TCP_PROFILES: dict[str, dict[str, float]] = {
    "calm": {k: 0.01 for k in TCP_FAULT_KINDS},
    "rough": {"tcp_drop_request": 0.04, "tcp_cut_request": 0.04, "tcp_drop_response": 0.05,
              "tcp_cut_response": 0.05, "tcp_delay": 0.05, "tcp_duplicate": 0.04, "tcp_reorder": 0.03},
}

MAX_HEAD = 64 * 1024
IO_TIMEOUT_S = 30.0


class _Closed(Exception):
    """The other side closed the connection."""


def _recv_until(sock: socket.socket, buf: bytearray, marker: bytes) -> int:
    while True:
        at = buf.find(marker)
        if at >= 0:
            return at
        if len(buf) > MAX_HEAD:
            raise _Closed("head too large")
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed("eof")
        buf += chunk


def _recv_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed("eof")
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            out[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
    return out


def read_message(sock: socket.socket, buf: bytearray) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message from ``sock``: (head including the blank line, body as on the wire)."""
    end = _recv_until(sock, buf, b"\r\n\r\n")
    head = _recv_exact(sock, buf, end + 4)
    h = _headers(head)
    if "chunked" in h.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            at = _recv_until(sock, buf, b"\r\n")
            size_line = _recv_exact(sock, buf, at + 2)
            size = int(size_line.split(b";")[0].strip(), 16)
            chunk = _recv_exact(sock, buf, size + 2)
            body += size_line + chunk
            if size == 0:
                break
        return head, bytes(body)
    length = int(h.get("content-length", "0") or 0)
    return head, _recv_exact(sock, buf, length)


def _close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Listens on 127.0.0.1 (``url``) and forwards to ``upstream`` = (host, port)."""

    def __init__(self, upstream: tuple[str, int], rng: random.Random, rates: Mapping[str, float],
                 stats: Counter[str], *, on_forward: Callable[[str], None] | None = None) -> None:
        unknown = set(rates) - set(TCP_FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown TCP fault kinds {sorted(unknown)}")
        self.upstream = upstream
        self.rng = rng
        self.rates = dict(rates)
        self.stats = stats
        self.on_forward = on_forward
        self.enabled = True
        self.partition: str | None = None  # None | "refuse" | "blackhole"
        self._lock = threading.Lock()
        self._held: list[tuple[bytes, bytes]] = []
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._running = True
        self._acceptor = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self._acceptor.start()

    # -- lifecycle -----------------------------------------------------------------
    def heal(self) -> None:
        """No more faults or partitions; held requests are delivered now."""
        self.enabled = False
        self.partition = None
        self._deliver_held()

    def close(self) -> None:
        self._running = False
        self._acceptor.join(timeout=5)
        _close(self._listener)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _close(c)
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------
    def _count(self, kind: str) -> None:
        with self._lock:
            self.stats[kind] += 1

    def _pick(self) -> str | None:
        with self._lock:
            u = self.rng.random()
        for kind in TCP_FAULT_KINDS:
            rate = self.rates.get(kind, 0.0)
            if u < rate:
                return kind
            u -= rate
        return None

    def _accept_loop(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(IO_TIMEOUT_S)
            with self._lock:
                self._conns.add(client)
            t = threading.Thread(target=self._serve, args=(client,), name="proxy-conn", daemon=True)
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _exchange(self, head: bytes, body: bytes, *, cut_at: int | None = None) -> tuple[bytes, bytes]:
        """Send one request upstream on a fresh connection; its answer.  ``cut_at``: send only
        that many body bytes, then close (no answer is read)."""
        path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "?"
        if self.on_forward is not None:
            self.on_forward(path)
        up = socket.create_connection(self.upstream, timeout=IO_TIMEOUT_S)
        try:
            if cut_at is not None:
                up.sendall(head + body[:cut_at])
                return b"", b""
            up.sendall(head + body)
            return read_message(up, bytearray())
        finally:
            _close(up)

    def _deliver_held(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for head, body in held:
            try:
                self._exchange(head, body)
            except (OSError, _Closed):
                pass

    def _serve(self, client: socket.socket) -> None:
        buf = bytearray()
        try:
            while self._running:
                try:
                    head, body = read_message(client, buf)
                except (_Closed, OSError):
                    return
                if not self._one(client, head, body):
                    return
        finally:
            with self._lock:
                self._conns.discard(client)
            _close(client)

    def _one(self, client: socket.socket, head: bytes, body: bytes) -> bool:
        """Handle one request; False when the client connection must close."""
        self._count("tcp_requests")
        if self.enabled and self.partition == "refuse":
            self._count("tcp_partition_refuse")
            return False
        if self.enabled and self.partition == "blackhole":
            self._count("tcp_partition_blackhole")
            while self._running and self.partition == "blackhole":
                time.sleep(0.05)
            return False
        kind = self._pick() if self.enabled else None
        if kind is not None:
            self._count(kind)
        try:
            if kind == "tcp_drop_request":
                return False
            if kind == "tcp_cut_request":
                with self._lock:
                    cut = self.rng.randrange(0, max(1, len(body)))
                self._exchange(head, body, cut_at=cut)
                return False
            if kind == "tcp_reorder":
                with self._lock:
                    self._held.append((head, body))
                return False
            if kind == "tcp_delay":
                with self._lock:
                    d1, d2 = self.rng.uniform(0, 0.05), self.rng.uniform(0, 0.05)
                time.sleep(d1)
                rhead, rbody = self._exchange(head, body)
                time.sleep(d2)
            elif kind == "tcp_duplicate":
                twin: list[tuple[bytes, bytes] | None] = [None]

                def second() -> None:
                    try:
                        twin[0] = self._exchange(head, body)
                    except (OSError, _Closed):
                        pass

                t = threading.Thread(target=second, daemon=True)
                t.start()
                rhead, rbody = self._exchange(head, body)
                t.join(timeout=IO_TIMEOUT_S)
            else:
                rhead, rbody = self._exchange(head, body)
        except (OSError, _Closed):
            path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "?"
            self._count(f"upstream_lost:{path}")
            return False  # the server is gone (or crashed): the client sees a reset
        if kind != "tcp_reorder":
            self._deliver_held()
        if kind == "tcp_drop_response":
            return False
        answer = rhead + rbody
        if kind == "tcp_cut_response":
            with self._lock:
                cut = self.rng.randrange(len(rhead) // 2, max(len(rhead) // 2 + 1, len(answer)))
            try:
                client.sendall(answer[:cut])
            except OSError:
                pass
            return False
        try:
            client.sendall(answer)
        except OSError:
            return False
        return b"connection: close" not in rhead.lower()
