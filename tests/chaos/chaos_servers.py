"""Real district servers for the chaos tests, and throwaway databases on both backends.

* :class:`ThreadServer` serves an ASGI app with uvicorn in a thread of this process, on a real
  socket (so the push ledger can wrap the app).
* :class:`ServerProcess` runs ``uvicorn server_stub.asgi:app`` as a child process that can be
  killed with SIGKILL in the middle of a request and started again on the same port.
* :class:`RawServer` answers every request with the same crafted bytes (broken answers).
* :func:`database` (from serverkit) yields a database URL: a SQLite file, or a fresh schema in the PostgreSQL
  cluster named by ``FIELDSYNC_TEST_PG`` (dropped afterwards).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from serverkit import PG_ENV, database

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ("sqlite", "postgresql")

__all__ = ["ThreadServer", "ServerProcess", "RawServer", "database", "free_port", "BACKENDS", "PG_ENV", "REPO"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_hello(url: str, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server at {url} stopped during start-up")
        try:
            with urllib.request.urlopen(url + "/v1/hello", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server at {url} did not answer /v1/hello within {timeout:.0f} s")


class ThreadServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a background thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off",
                                access_log=False, timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> "ThreadServer":
        self._thread.start()
        _wait_hello(self.url, 20, self._thread.is_alive)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> "ThreadServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """``uvicorn server_stub.asgi:app`` as a child process; :meth:`kill` is SIGKILL."""

    def __init__(self, db_url: str, log: Path, port: int | None = None) -> None:
        self.db_url = db_url
        self.log = log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        env = {**os.environ, "FIELDSYNC_DB": self.db_url}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "server_stub.asgi:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                env=env, cwd=REPO, stdout=out, stderr=out)
        proc = self.proc
        _wait_hello(self.url, timeout, lambda: proc.poll() is None)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no rollback, open transactions die with the process."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


class RawServer:
    """Answers every HTTP request on 127.0.0.1 with the same crafted bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests += 1
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()
