"""The embedding example runs for real: a uvicorn server, two tablets, sync and search."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_water_meters_example_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, "examples/water_meters.py", "--fast-kdf"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "error:" not in proc.stderr, output
    # The reading saved offline on tablet A was found on tablet B through the blind index,
    # with the value tablet A recorded.
    found = re.search(r"FOUND on tablet B: meter (\S+) at .*: reading ([0-9.]+) m3", proc.stdout)
    assert found is not None, output
    assert found.group(1) == "WM-2024-0042"
    assert float(found.group(2)) == 1234.5
    # The out-of-scope reading came back as a rejection, not as an error.
    assert "rejected by the server: out_of_scope" in proc.stdout, output


def test_water_meters_example_reports_failure_in_one_line(tmp_path: Path) -> None:
    # A work folder that already holds tablet A's store: creating it again must fail cleanly.
    (tmp_path / "tablet-a.fsdb").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "examples/water_meters.py", "--fast-kdf", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: StoreError:"), proc.stderr
