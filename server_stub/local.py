"""A district server on this machine, for the demo and for tests that need a real one.

:class:`LocalServer` runs ``fieldsync-server serve`` as a child process on
127.0.0.1 and can stop and start it again on the same port (a network outage
as a tablet sees it).  The database is an ordinary one; the command centre's
actions go straight to it through :class:`~server_stub.district.District`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["LocalServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    def __init__(self, db_url: str, port: int | None = None, log: Path | None = None) -> None:
        self.db_url = db_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> "LocalServer":
        """Start the server and wait until it answers /v1/hello."""
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        env = {**os.environ, "FIELDSYNC_DB": self.db_url}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "server_stub.asgi:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the server stopped at start-up (exit {self._proc.returncode}); see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/v1/hello", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer at {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server (the port stops answering at once)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
