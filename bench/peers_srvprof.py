"""``server_stub``'s ASGI app with cProfile switched on and off by signals (``bench.peers --profile``).

``python -m uvicorn bench.peers_srvprof:app`` with ``FIELDSYNC_DB`` and ``FIELDSYNC_PROFILE_OUT``
(a path prefix).  SIGUSR1 starts profiling; SIGUSR2 stops it and writes ``<prefix>-<n>.prof``
(n counts from 1).  Two profilers run: one on the event loop's thread (routing, middleware,
gzip, JSON rendering) and one that every request handler turns on inside the worker thread
that runs it (``run_in_threadpool``; the benchmark's clients send one request at a time), and
the file holds both.  server_stub is not changed: the wrapper replaces the name
``run_in_threadpool`` in ``server_stub.app`` before the app is built.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import signal
from typing import Any, Callable

import server_stub.app as server_app
from server_stub.district import District

_orig = server_app.run_in_threadpool
_state: dict[str, Any] = {"main": None, "work": None, "n": 0}


async def _profiled(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    prof = _state["work"]
    if prof is None:
        return await _orig(func, *args, **kwargs)

    def call() -> Any:
        prof.enable()
        try:
            return func(*args, **kwargs)
        finally:
            prof.disable()

    return await _orig(call)


def _start(signum: int, frame: Any) -> None:
    _state["work"] = cProfile.Profile()
    _state["main"] = cProfile.Profile()
    _state["main"].enable()


def _stop(signum: int, frame: Any) -> None:
    main, work = _state["main"], _state["work"]
    if main is None:
        return
    main.disable()
    _state["main"] = _state["work"] = None
    _state["n"] += 1
    stats = pstats.Stats(main)
    stats.add(work)
    stats.dump_stats(f"{os.environ['FIELDSYNC_PROFILE_OUT']}-{_state['n']}.prof")


server_app.run_in_threadpool = _profiled  # type: ignore[attr-defined]
signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
app = server_app.create_app(District(os.environ.get("FIELDSYNC_DB", "sqlite:///district.db")))
