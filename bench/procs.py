"""Processes and CPU time on Linux, for the benchmarks: free ports, a process's CPU seconds, the machine's."""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["CLK_TCK", "free_port", "proc_cpu", "machine_cpu", "machine_busy"]

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
