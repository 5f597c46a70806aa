"""What :mod:`bench.peers` shares between systems: the counting proxy, child processes, CPU counters."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from .procs import proc_cpu

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("FIELDSYNC_BENCH_CACHE", Path.home() / ".cache" / "fieldsync-bench"))
START_TIMEOUT_S = 60.0


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (a server started through a launcher may run in a child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree_cpu(pid: int) -> float:
    return sum(proc_cpu(p) for p in tree_pids(pid))


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float = START_TIMEOUT_S) -> None:
    """Wait until ``url`` answers 200 (or raise with the log when the process dies or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Proxy:
    """``bench/peers_proxy.py`` in its own process between a client and 127.0.0.1:``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "peers_proxy.py"), str(target_port)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2:
            stop(self.proc)
            raise RuntimeError("the counting proxy did not start")
        self.port, self.control = int(line[0]), int(line[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def counters(self) -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", self.control), timeout=10) as s:
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return dict(json.loads(data))

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def close(self) -> None:
        stop(self.proc)


class LineClient:
    """A client program in its own process: one command per line in, one JSON line out."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._err: IO[bytes] = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, env={**os.environ, **(env or {})}, cwd=REPO)
        ready = self._read()
        if ready.get("cmd") != "ready":
            raise RuntimeError(f"{argv[:2]} did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"client exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
        return dict(json.loads(line))

    def call(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if not out.get("ok"):
            raise RuntimeError(f"client command {cmd!r} failed: {out.get('error')}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop(self.proc)
        self._err.close()


@contextmanager
def pg_database(base_url: str, prefix: str) -> Iterator[str]:
    """A new database on ``base_url``'s cluster; yields its URL, dropped afterwards."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(base_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
