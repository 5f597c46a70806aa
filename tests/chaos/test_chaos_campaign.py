"""The bounded chaos campaign of the normal test run (the long one is ``scripts/chaos``).

Each seed plays a whole run of chaos_campaign: six tablets, three grids, faults, clock skew,
healing, and every invariant of docs/reliability.md.  Seeds are ``base + i``; the base is
random per run and printed (FIELDSYNC_CHAOS_SEED=<base> replays the same set, and the
``scripts/chaos --seed <seed> ...`` command printed with a failure replays that one run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos_campaign import base_seed, run_campaign

INPROC_SEEDS = 12  # per backend, through the fault-injecting transport
PROXY_SEEDS = 2  # per backend, through the TCP fault proxy and a real uvicorn
BASE = base_seed()

pytestmark = pytest.mark.slow


def _play(seed: int, backend: str, workdir: Path, **options: object) -> None:
    report = run_campaign(seed, backend, workdir, **options)
    print(report.summary())
    assert report.checks["device_equals_server"] > 0, "the run checked nothing"
    assert report.ok, f"\n{report.summary()}\n  this test's seeds: FIELDSYNC_CHAOS_SEED={BASE} pytest {__file__}"


@pytest.mark.parametrize("i", range(INPROC_SEEDS))
def test_campaign_inproc(i: int, backend: str, workdir: Path) -> None:
    _play(BASE + i, backend, workdir)


@pytest.mark.parametrize("i", range(PROXY_SEEDS))
def test_campaign_through_tcp_proxy(i: int, backend: str, workdir: Path) -> None:
    _play(BASE + 1000 + i, backend, workdir, transport="proxy", rounds=8)


def test_campaign_with_threads_and_a_storm(backend: str, workdir: Path) -> None:
    """All tablets sync at once while every kind of fault is frequent."""
    _play(BASE + 2000, backend, workdir, profile="storm", concurrent=True, rounds=12)
