"""The machine under the benchmarks (Linux): free ports, CPU seconds of a process and of the machine,
load average, CPU model, git state."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

__all__ = ["CLK_TCK", "free_port", "proc_cpu", "machine_cpu", "machine_busy", "loadavg", "cpu_model", "git"]

REPO = Path(__file__).resolve().parents[1]

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (0.0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, idle, iowait) CPU seconds of the whole machine so far, all cores (``/proc/stat``)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0, 0.0, 0.0
    v = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK, v[3] / CLK_TCK, v[4] / CLK_TCK


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far, all cores."""
    return machine_cpu()[0]


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git(*args: str) -> str:
    """``git args...`` in the repository: its output, or "" when git is missing or fails."""
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
