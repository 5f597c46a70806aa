"""The chaos campaign's vocabulary: the district it plays in, tablets, recorded writes, reports.

Every value a run writes into a field named in :data:`UNIQUE` is unique in that run, so a value
names the write that made it: the invariants (chaos_invariants.py) can tell which write
survived, which one a writer saw when it overwrote a field, and which one went missing.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chaos_proxy import FaultProxy

from fieldsync import Store
from fieldsync.identity import Identity
from fieldsync.sync import SyncClient
from server_stub.district import District
from server_stub.replica import Actor

__all__ = ["PIN", "DAY_MS", "WORKERS", "TABLETS", "GRIDS", "FOREIGN_GRID", "TRACKED", "UNIQUE", "ALLOWED_REFUSALS",
           "QUIET_ROUNDS", "REASSIGNABLE", "ABSENT", "SEED_ENV", "base_seed", "value_key", "real_ms", "Write", "Tablet", "Report",
           "setup_district"]

PIN = "2580"
DAY_MS = 24 * 3600 * 1000
WORKERS = {"w1": ("g1",), "w2": ("g1",), "w3": ("g2",), "w4": ("g2", "g3"), "w5": ("g3",)}
TABLETS = (("t1", "w1"), ("t2", "w2"), ("t3", "w3"), ("t4", "w4"), ("t5", "w5"), ("t6", "w1"))
GRIDS = ("g1", "g2", "g3")
FOREIGN_GRID = "g9"  # exists, assigned to nobody: every device write there must be refused
REASSIGNABLE = (("w5", "g1"), ("w3", "g3"), ("w4", "g3"))  # scope changes the command centre makes
TRACKED = ("households", "visits", "reports")
# Fields whose every written value is unique in a run: a value names the write that made it.
UNIQUE = {"households": ("address", "head_name", "phone", "members", "notes"),
          "visits": ("purpose", "notes"),
          "reports": ("description", "department")}
ALLOWED_REFUSALS = {"signature_invalid", "nonce_replayed"}  # only after a truncated or duplicated request
QUIET_ROUNDS = 4
ABSENT = object()


SEED_ENV = "FIELDSYNC_CHAOS_SEED"


def base_seed() -> int:
    """The seed of this run: FIELDSYNC_CHAOS_SEED, or a fresh random one (callers print it)."""
    text = os.environ.get(SEED_ENV)
    return int(text) if text else random.SystemRandom().randrange(1, 10**9)


def value_key(value: Any) -> str:
    """A value's canonical JSON: equal values, equal keys."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def real_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Write:
    """One field write by a tablet (``seq``) or by the server (``writer`` cc / dept)."""

    n: int
    writer: str
    collection: str
    rid: str
    field: str
    value: Any
    saw: Any  # the writer's value of the field just before, or ABSENT
    seq: int | None = None
    applied: bool | None = None
    skew: int = 0  # the lowest clock error (ms) the writer ever had up to this write


@dataclass
class Tablet:
    name: str
    worker: str
    grids: tuple[str, ...]
    store: Store
    client: SyncClient
    transport: Any  # FaultyTransport, or RequestsTransport through a FaultProxy
    identity: Identity
    skew: list[int]
    proxy: FaultProxy | None = None
    lowest_skew: int = 0
    offline_until: int = -1
    partition_until: int = -1
    last_seq: int = 0
    seqs: set[int] = field(default_factory=set)
    must_refuse: set[int] = field(default_factory=set)


@dataclass
class Report:
    seed: int
    backend: str
    transport: str
    profile: str = ""
    concurrent: bool = False
    rounds: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    syncs: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    server_statuses: Counter[str] = field(default_factory=Counter)
    observations: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def replay(self) -> str:
        """The command that plays this run again."""
        return (f"scripts/chaos --seed {self.seed} --backend {self.backend} --transport {self.transport} "
                f"--rounds {self.rounds} --profile {self.profile} {'--threads' if self.concurrent else '--no-threads'}")

    def summary(self) -> str:
        faults = {k: v for k, v in sorted(self.faults.items()) if v}
        head = (f"chaos seed {self.seed} [{self.backend}/{self.transport}/{self.profile}"
                f"{'/threads' if self.concurrent else ''}, {self.rounds} rounds, {self.seconds:.1f} s]: "
                f"{'OK' if self.ok else f'{len(self.violations)} VIOLATION(S)'}")
        lines = [head, f"  ops {dict(sorted(self.ops.items()))}", f"  syncs {dict(sorted(self.syncs.items()))}",
                 f"  faults {faults}", f"  checks {sum(self.checks.values())} {dict(sorted(self.checks.items()))}"]
        if self.observations:
            lines.append(f"  observations {dict(sorted(self.observations.items()))}")
        for v in self.violations[:20]:
            lines.append(f"  VIOLATION {v}")
        if not self.ok:
            lines.append(f"  replay: {self.replay()}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "backend": self.backend, "transport": self.transport, "profile": self.profile,
                "concurrent": self.concurrent, "rounds": self.rounds, "faults": dict(self.faults),
                "ops": dict(self.ops), "syncs": dict(self.syncs), "checks": dict(self.checks),
                "server_statuses": dict(self.server_statuses), "observations": dict(self.observations),
                "violations": self.violations, "seconds": round(self.seconds, 3)}


def setup_district(district: District) -> None:
    """Workers w1, w2 (g1), w3 (g2), w4 (g2, g3), w5 (g3); cc (command); dept (department);
    grid records g1-g3 and g9 (assigned to nobody)."""
    for worker, grids in WORKERS.items():
        district.add_worker(worker, f"网格员{worker}")
        for g in grids:
            district.assign(worker, g)
    district.add_worker("cc", "指挥中心", role="command")
    district.add_worker("dept", "城管科", role="department", department="城管")
    district.write_many(Actor("admin", "command"), "grids",
                        [{"id": g, "name": f"花园山{g}网格"} for g in (*GRIDS, FOREIGN_GRID)])
