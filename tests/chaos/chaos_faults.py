"""A fault-injecting transport and a server-side ledger of push answers.

:class:`FaultyTransport` wraps any :class:`~fieldsync.transport.Transport` (the in-process app,
or HTTP to a real server) and, drawing from a seeded ``random.Random``, does to each request
what a bad network does::

    drop_request        the request never reaches the server (NetworkError)
    drop_response       the server committed; the answer is lost (NetworkError)
    duplicate           the request is sent twice (concurrently, with ``concurrent``); the client gets
                        one of the two answers
    delay               the request waits a little before and after the server
    reorder             the request is held (the client sees a timeout) and delivered after a
                        later request of the same device went first
    truncate_request    the body is cut in the middle: the server must refuse it
    truncate_response   the answer's body is cut in the middle: the client must refuse it
    server_error        a proxy answers 503 without asking the server
    server_error_after  the server committed; a proxy answers 502 instead of its answer
    timeout             the client gives up; the request reaches the server later (with
                        ``concurrent``: possibly while the client's retry runs, a real race)
    partition           set per round: "full" (nothing gets through) or "responses"
                        (requests arrive and commit, no answer ever comes back)

One draw per request decides the fault, so the same seed gives the same faults for the same
sequence of requests.  Every fault is counted in ``stats`` (a shared ``Counter``).  What the
server must never do (accept a truncated body) is collected in ``violations``.

:class:`PushLedger` wraps the district's ASGI app and records every push answer the server
produced, whether or not the network delivered it: the sum of ``applied`` per device is the
exactly-once check (a change merged twice would be counted twice).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from fieldsync.errors import NetworkError
from fieldsync.transport import Request, Response, Transport, call_app

__all__ = ["FAULT_KINDS", "PROFILES", "FaultyTransport", "PushLedger", "PushAnswer", "LoopTransport"]

FAULT_KINDS = (
    "drop_request", "drop_response", "duplicate", "delay", "reorder", "truncate_request",
    "truncate_response", "server_error", "server_error_after", "timeout",
)

# Per-request probabilities.  "calm" still faults now and then; "storm" faults one request in two.
PROFILES: dict[str, dict[str, float]] = {
    "calm": {k: 0.01 for k in FAULT_KINDS},
    "rough": {"drop_request": 0.04, "drop_response": 0.05, "duplicate": 0.03, "delay": 0.04, "reorder": 0.03,
              "truncate_request": 0.02, "truncate_response": 0.03, "server_error": 0.03,
              "server_error_after": 0.03, "timeout": 0.04},
    "storm": {"drop_request": 0.06, "drop_response": 0.08, "duplicate": 0.05, "delay": 0.04, "reorder": 0.05,
              "truncate_request": 0.04, "truncate_response": 0.05, "server_error": 0.05,
              "server_error_after": 0.05, "timeout": 0.06},
}

MAX_DELAY_S = 0.02


class FaultyTransport:
    """Wraps ``inner``; injects the faults of ``rates`` (kind -> probability per request)."""

    def __init__(self, inner: Transport, rng: random.Random, rates: Mapping[str, float],
                 stats: Counter[str], *, name: str = "", concurrent: bool = True) -> None:
        unknown = set(rates) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.inner = inner
        self.rng = rng
        self.rates = dict(rates)
        self.stats = stats
        self.name = name
        # With concurrent=False the two copies of a duplicate go one after the other and a timed-out
        # request reaches the server before the client retries: the same seed then replays exactly.
        self.concurrent = concurrent
        self.enabled = True
        self.partition: str | None = None  # None | "full" | "responses"
        self.violations: list[str] = []
        self.truncated_200 = 0  # answers with status 200 whose body was cut: the client must refuse them
        self._held: list[Request] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- bookkeeping -------------------------------------------------------------
    def _count(self, kind: str) -> None:
        with self._lock:
            self.stats[kind] += 1

    def _pick(self) -> str | None:
        u = self.rng.random()
        for kind in FAULT_KINDS:
            rate = self.rates.get(kind, 0.0)
            if u < rate:
                return kind
            u -= rate
        return None

    def _background(self, request: Request, delay_s: float) -> None:
        def deliver() -> None:
            time.sleep(delay_s)
            self._deliver_quietly(request)

        t = threading.Thread(target=deliver, name=f"late-{self.name}", daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _deliver_quietly(self, request: Request) -> None:
        try:
            self.inner.handle(request)
        except Exception:  # noqa: BLE001 - a late copy's fate does not matter to anyone
            pass

    def _release_held(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for request in held:
            self._deliver_quietly(request)

    def heal(self) -> None:
        """Stop injecting faults; deliver held requests and wait for late ones."""
        self.enabled = False
        self.partition = None
        self._release_held()
        with self._lock:
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout=60)
            if t.is_alive():
                self.violations.append("a late request did not finish within 60 s")

    # -- the seam ------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        self._count("requests")
        if not self.enabled:
            return self.inner.handle(request)
        if self.partition == "full":
            self._count("partition_full")
            raise NetworkError("partition: no route to the server")
        if self.partition == "responses":
            self._count("partition_responses")
            self.inner.handle(request)
            raise NetworkError("partition: the answer never came back")
        kind = self._pick()
        if kind is None:
            response = self.inner.handle(request)
            self._release_held()
            return response
        self._count(kind)
        try:
            return getattr(self, f"_{kind}")(request)
        finally:
            if kind != "reorder":
                self._release_held()

    # -- one method per fault --------------------------------------------------------
    def _drop_request(self, request: Request) -> Response:
        raise NetworkError("connection reset before the request was sent")

    def _drop_response(self, request: Request) -> Response:
        self.inner.handle(request)
        raise NetworkError("connection reset after the server answered")

    def _duplicate(self, request: Request) -> Response:
        keep = self.rng.randrange(2)
        answers: list[Response | BaseException | None] = [None, None]

        def send(i: int) -> None:
            try:
                answers[i] = self.inner.handle(request)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                answers[i] = exc

        if self.concurrent:
            threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            send(0)
            send(1)
        for other in answers:
            # A replayed copy may be refused (nonce_replayed) but must never be applied twice:
            # the push ledger checks that; here only a 5xx would be wrong.
            if isinstance(other, Response) and other.status >= 500:
                self.violations.append(f"a duplicated {request.path} got {other.status}")
        chosen = answers[keep]
        if isinstance(chosen, BaseException):
            raise chosen
        assert chosen is not None
        return chosen

    def _delay(self, request: Request) -> Response:
        time.sleep(self.rng.uniform(0, MAX_DELAY_S))
        response = self.inner.handle(request)
        time.sleep(self.rng.uniform(0, MAX_DELAY_S))
        return response

    def _reorder(self, request: Request) -> Response:
        with self._lock:
            self._held.append(request)
        raise NetworkError("timed out (the request is stuck in the network)")

    def _truncate_request(self, request: Request) -> Response:
        cut = self.rng.randrange(0, max(1, len(request.body)))
        response = self.inner.handle(Request(request.method, request.path, request.query, request.headers,
                                             request.body[:cut]))
        if response.status == 200 or response.status >= 500:
            self.violations.append(f"{request.path} with a body cut at {cut}/{len(request.body)} "
                                   f"was answered {response.status}")
        return response

    def _truncate_response(self, request: Request) -> Response:
        response = self.inner.handle(request)
        cut = self.rng.randrange(0, max(1, len(response.body)))
        if response.status == 200:
            with self._lock:
                self.truncated_200 += 1
        return Response(response.status, response.headers, response.body[:cut], response.wire_bytes)

    def _server_error(self, request: Request) -> Response:
        return Response(503, {"content-type": "text/plain"}, b"503 Service Unavailable (proxy)")

    def _server_error_after(self, request: Request) -> Response:
        self.inner.handle(request)
        return Response(502, {"content-type": "text/plain"}, b"502 Bad Gateway (proxy)")

    def _timeout(self, request: Request) -> Response:
        delay = self.rng.uniform(0, MAX_DELAY_S)
        if self.concurrent:
            self._background(request, delay)
        else:
            time.sleep(delay)
            self._deliver_quietly(request)
        raise NetworkError("read timed out")


@dataclass(frozen=True)
class PushAnswer:
    device_id: str
    acked_seq: int
    applied: int
    rejected_seqs: tuple[int, ...]


@dataclass
class PushLedger:
    """An ASGI wrapper recording every 200 answer to /v1/push the server produced."""

    app: Any
    answers: list[PushAnswer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != "/v1/push":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        device = headers.get("x-fieldsync-device", "")
        status = 0
        gz = False
        chunks: list[bytes] = []

        async def tapped(message: dict[str, Any]) -> None:
            nonlocal status, gz
            if message["type"] == "http.response.start":
                status = message["status"]
                out = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
                gz = out.get("content-encoding", "") == "gzip"
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if status == 200 and not message.get("more_body", False):
                    # Recorded before the last byte leaves: whoever sees the answer sees it counted.
                    self._record(device, b"".join(chunks), gz)
            await send(message)

        await self.app(scope, receive, tapped)

    def _record(self, device: str, body: bytes, gz: bool) -> None:
        data = json.loads(gzip.decompress(body) if gz else body)
        answer = PushAnswer(device, int(data["acked_seq"]), int(data["applied"]),
                            tuple(int(r["seq"]) for r in data["rejections"]))
        with self.lock:
            self.answers.append(answer)

    def applied_by(self, device_id: str) -> int:
        with self.lock:
            return sum(a.applied for a in self.answers if a.device_id == device_id)


class LoopTransport:
    """The district's ASGI app in this process, on ONE event loop that runs in its own thread.

    Unlike :class:`fieldsync.transport.ASGITransport` (a loop per transport, a root task per
    request), requests from many threads run concurrently here, and the app's worker threads
    are reused between requests, as under uvicorn.  (With a root task per request every
    request gets a new worker thread, and the server opens a new database connection per
    thread: see tests/chaos/test_chaos_regressions.py, seed 5.)
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        ready = threading.Event()

        async def main() -> None:
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),),
                                        name="asgi-loop", daemon=True)
        self._thread.start()
        ready.wait(10)

    def handle(self, request: Request) -> Response:
        return asyncio.run_coroutine_threadsafe(call_app(self.app, request), self._loop).result(timeout=300)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self._loop.close()
