"""One chaos run: six tablets over three grids, random work, faults, healing, then invariants.

``run_campaign(seed, backend, workdir)`` builds a fresh district (SQLite file or PostgreSQL
schema), enrolls six tablets (two of them the same worker's, one worker with two grids), and
plays ``rounds`` rounds.  In each round every tablet does a few random operations on its own
store (create, edit, delete households and visits, report incidents, confirm or reopen
resolved reports, move a household to its other grid, review a conflict, and now and then
something the server must refuse), then most tablets sync — sequentially or all at once in
threads — through a :class:`~chaos_faults.FaultyTransport` (in-process app) or a
:class:`~chaos_proxy.FaultProxy` (real uvicorn on 127.0.0.1).  Tablets go offline for several
rounds, networks partition, clocks run up to a day fast or slow and jump.  Between rounds the
command centre and a department work through ``District.write``.

Then the faults heal and every tablet syncs until the system is quiet, and the invariants are
checked (:meth:`Campaign.check`).  Every violation is collected with the seed; the run
replays from the seed (same operations, same fault decisions; with threads or real sockets the
interleaving, and so a few outcomes, may differ).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from chaos_faults import PROFILES, FaultyTransport, LoopTransport, PushLedger
from chaos_invariants import Invariants
from chaos_model import (
    ABSENT,
    ALLOWED_REFUSALS,
    DAY_MS,
    FOREIGN_GRID,
    GRIDS,
    PIN,
    QUIET_ROUNDS,
    REASSIGNABLE,
    SEED_ENV,
    TABLETS,
    WORKERS,
    Report,
    Tablet,
    Write,
    base_seed,
    real_ms,
    setup_district,
    value_key,
)
from chaos_proxy import TCP_PROFILES, FaultProxy
from chaos_servers import ThreadServer, database

from fieldsync import KdfParams, Store
from fieldsync.errors import NetworkError, ProtocolError, RecordNotFound, RequestRejected, ServerError
from fieldsync.merge import DELETED
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import RequestsTransport, Transport
from server_stub.app import create_app
from server_stub.auth import ApiError
from server_stub.district import District
from server_stub.replica import Actor, load_state

__all__ = ["run_campaign", "Campaign", "SEED_ENV", "base_seed", "setup_district"]


class _LogCounter(logging.Handler):
    """Counts what the server logs (an unexpected error is a 500 somebody would see)."""

    def __init__(self, report: Report) -> None:
        super().__init__(logging.WARNING)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.report.observations[f"server_log: {text.split(':')[0]} {text.rsplit(':', 1)[-1].strip()}"] += 1
        if text.startswith("unexpected error"):  # a 500: a server bug, not a fault of the network
            self.report.violations.append(f"[no_server_error] the server logged: {text}")


class Campaign(Invariants):
    """One seeded run; :meth:`run` returns its :class:`Report`."""

    def __init__(self, seed: int, backend: str, workdir: Path, *, transport: str = "inproc",
                 rounds: int = 10, profile: str | None = None, concurrent: bool | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if transport not in ("inproc", "proxy"):
            raise ValueError("transport must be inproc or proxy")
        self.seed = seed
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.log = log or (lambda s: None)
        self.report = Report(seed, backend, transport, rounds=rounds)
        # Always draw both, so a replay that names them explicitly sees the same random sequence.
        drawn_profile = self.rng.choice(("calm", "rough", "rough", "storm"))
        drawn_threads = self.rng.random() < 0.35
        self.report.profile = profile or drawn_profile
        self.report.concurrent = drawn_threads if concurrent is None else concurrent
        self.writes: list[Write] = []
        self.tablets: list[Tablet] = []
        self.assignments = {w: set(g) for w, g in WORKERS.items()}
        self._n = 0
        self._lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------
    def token(self, who: str) -> tuple[int, str]:
        self._n += 1
        return self._n, f"{who}-{self.seed % 100000}-{self._n}"

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{self.rng.getrandbits(60):015x}"

    # -- the run -----------------------------------------------------------------------
    def run(self) -> Report:
        start = time.monotonic()
        server_log = logging.getLogger("fieldsync.server")
        counter = _LogCounter(self.report)
        server_log.addHandler(counter)
        server_log.propagate, propagate = False, server_log.propagate
        try:
            return self._run(start)
        finally:
            server_log.removeHandler(counter)
            server_log.propagate = propagate

    def _run(self, start: float) -> Report:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with database(self.report.backend, self.workdir) as url:
            district = District(url)
            try:
                setup_district(district)
                self.district = district
                self.ledger = PushLedger(create_app(district))
                if self.report.transport == "proxy":
                    with ThreadServer(self.ledger) as server:
                        self._play(lambda: RequestsTransport(server.url), server.url)
                else:
                    shared = LoopTransport(self.ledger)
                    try:
                        self._play(lambda: shared, "http://in-process")
                    finally:
                        shared.close()
            finally:
                for t in self.tablets:
                    t.store.close()
                    if isinstance(t.transport, RequestsTransport):
                        t.transport.close()
                    if t.proxy is not None:
                        t.proxy.close()
                district.close()
        self.report.seconds = time.monotonic() - start
        return self.report

    def _play(self, clean: Callable[[], Transport], base_url: str) -> None:
        self._enroll_all(clean, base_url)
        self._seed_data()
        for r in range(self.report.rounds):
            self._round(r)
        self._heal()
        if self._quiesce():
            self.check_all()
        for t in self.tablets:
            if isinstance(t.transport, FaultyTransport):
                self.report.faults.update(t.transport.stats)
                for v in t.transport.violations:
                    self.violation(f"[network] {t.name}: {v}")
            if t.proxy is not None:
                self.report.faults.update(t.proxy.stats)

    def _enroll_all(self, clean: Callable[[], Transport], base_url: str) -> None:
        rng = self.rng
        profile = self.report.profile
        for name, worker in TABLETS:
            kind = rng.choice(("exact", "exact", "minutes", "day"))
            skew = [0 if kind == "exact" else int(rng.uniform(-1, 1) * (10 * 60_000 if kind == "minutes" else DAY_MS))]
            path = self.workdir / f"{name}.fsdb"
            store = Store.create(path, PIN, kdf=KdfParams(n=2**10), wall=lambda s=skew: real_ms() + s[0])
            code, _ = self.district.issue_code(worker)
            setup = clean()
            identity = enroll(store, base_url, code, transport=setup)
            fault_rng = random.Random(f"{self.seed}:{name}:faults")
            proxy = None
            if self.report.transport == "proxy":
                assert isinstance(setup, RequestsTransport)
                host, port = setup.base_url.rsplit(":", 1)
                rates = TCP_PROFILES["calm" if profile == "calm" else "rough"]
                proxy = FaultProxy(("127.0.0.1", int(port)), fault_rng, rates, Counter())
                transport: Any = RequestsTransport(proxy.url, timeout=1.0, connect_timeout=0.5)
                setup.close()
            else:
                transport = FaultyTransport(setup, fault_rng, PROFILES[profile], Counter(), name=name,
                                            concurrent=self.report.concurrent)
            client = SyncClient(store, transport, retries=rng.choice((0, 1, 2, 5)), sleep=lambda s: None,
                                rng=random.Random(f"{self.seed}:{name}:backoff"),
                                page_limit=rng.choice((3, 10, 2000)), push_batch=rng.choice((2, 7, 500)))
            self.tablets.append(Tablet(name, worker, WORKERS[worker], store, client, transport, identity, skew,
                                       proxy, lowest_skew=min(0, skew[0])))
            self.report.ops[f"skew_{kind}"] += 1

    # -- writes ----------------------------------------------------------------------
    def _server_write(self, who: str, actor: Actor, collection: str, rid: str, values: dict[str, Any]) -> bool:
        current = self.district.get(collection, rid) or {}
        pending = [Write(self.token(who)[0], who, collection, rid, f, v, current.get(f, ABSENT))
                   for f, v in values.items()]
        try:
            self.district.write(actor, collection, rid, values)
            ok = True
        except ApiError as exc:
            self.report.observations[f"server_write_refused_{exc.code}"] += 1
            ok = False
        for w in pending:
            w.applied = ok
        self.writes.extend(pending)
        return ok

    def _seed_data(self) -> None:
        for g in GRIDS:
            for _ in range(2):
                self._server_write("cc", Actor("cc", "command"), "households", self.new_id("h"),
                                   {"grid_id": g, **self._household_values("cc")})

    def _household_values(self, who: str, count: int | None = None) -> dict[str, Any]:
        n, tok = self.token(who)
        every = {"address": f"花园山{tok}号", "head_name": f"张{tok}"[:50], "phone": f"139{n:08d}",
                 "members": n, "notes": f"走访记录 {tok}"}
        if count is None:
            return every
        names = self.rng.sample(sorted(every), count)
        return {k: every[k] for k in names}

    def _local_write(self, t: Tablet, collection: str, values: dict[str, Any], *, delete: str | None = None,
                     must_refuse: bool = False) -> None:
        """A put (or delete) on tablet ``t``'s store, recorded with what the tablet saw."""
        rid = delete or values.get("id")
        current: dict[str, Any] = {}
        if rid is not None:
            try:
                current = t.store.get(collection, rid)
            except RecordNotFound:
                current = {}
        if delete is not None:
            t.store.delete(collection, delete)
            fields = {DELETED: True}
            rid = delete
        else:
            rid = t.store.put(collection, values)
            fields = {k: v for k, v in values.items() if k != "id"}
        entries = t.store.outbox(limit=100, after=t.last_seq)
        for e in entries:
            t.seqs.add(e.seq)
            t.last_seq = max(t.last_seq, e.seq)
            if must_refuse:
                t.must_refuse.add(e.seq)
        seq = entries[-1].seq if entries else None
        for f, v in fields.items():
            if f == DELETED:
                saw: Any = False if current else ABSENT
            else:
                saw = current.get(f, ABSENT)
            if saw is not ABSENT and value_key(saw) == value_key(v):
                continue
            self.writes.append(Write(self.token(t.name)[0], t.name, collection, rid, f, v, saw, seq,
                                     skew=t.lowest_skew))

    def _mine(self, t: Tablet, collection: str) -> list[dict[str, Any]]:
        return [r for r in t.store.list(collection) if r.get("grid_id") in t.grids]

    def _device_op(self, t: Tablet) -> None:
        """One random operation, atomic with respect to the tablet's own sync (which may be running
        in another thread): what the operation reads and writes is one consistent view."""
        with t.store.atomic():
            self._device_op_now(t)

    def _device_op_now(self, t: Tablet) -> None:
        rng = self.rng
        ops = (("create_household", 20), ("edit_household", 25), ("delete_household", 3), ("create_visit", 12),
               ("edit_visit", 8), ("delete_visit", 3), ("create_report", 8), ("worker_status", 8),
               ("move_household", 4), ("review_conflict", 3), ("edit_report", 3), ("refused_out_of_scope", 2),
               ("refused_protected", 2), ("refused_transition", 2))
        op = rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
        households = self._mine(t, "households")
        grid = rng.choice(t.grids)
        if op == "create_household" or (not households and op in ("edit_household", "delete_household",
                                                                   "create_visit", "move_household")):
            op = "create_household"
            every = self._household_values(t.name)
            keep = {"address", *rng.sample(sorted(every), rng.randint(0, 4))}
            self._local_write(t, "households", {"id": self.new_id("h"), "grid_id": grid,
                                                **{k: v for k, v in every.items() if k in keep}})
        elif op == "edit_household":
            h = rng.choice(households)
            self._local_write(t, "households", {"id": h["id"], **self._household_values(t.name, rng.randint(1, 3))})
        elif op == "delete_household":
            self._local_write(t, "households", {}, delete=rng.choice(households)["id"])
        elif op == "create_visit":
            h = rng.choice(households)
            n, tok = self.token(t.name)
            self._local_write(t, "visits", {"id": self.new_id("v"), "grid_id": h["grid_id"], "household_id": h["id"],
                                            "worker_id": t.worker, "visited_at": "2024-05-01T09:30:00+08:00",
                                            "purpose": f"走访{tok}"[:50], "notes": f"记录 {tok}"})
        elif op in ("edit_visit", "delete_visit"):
            visits = self._mine(t, "visits")
            if not visits:
                return self._count_op(t, "skipped")
            v = rng.choice(visits)
            if op == "delete_visit":
                self._local_write(t, "visits", {}, delete=v["id"])
            else:
                _, tok = self.token(t.name)
                self._local_write(t, "visits", {"id": v["id"], rng.choice(("purpose", "notes")): f"改{tok}"[:50]})
        elif op == "create_report":
            _, tok = self.token(t.name)
            self._local_write(t, "reports", {"id": self.new_id("r"), "grid_id": grid, "category": "违章张贴",
                                             "description": f"楼道小广告 {tok}", "status": "submitted",
                                             "reporter_id": t.worker})
        elif op == "edit_report":
            reports = self._mine(t, "reports")
            if not reports:
                return self._count_op(t, "skipped")
            _, tok = self.token(t.name)
            self._local_write(t, "reports", {"id": rng.choice(reports)["id"], "description": f"补充 {tok}"})
        elif op == "worker_status":
            resolved = [r for r in self._mine(t, "reports") if r.get("status") == "resolved"]
            if not resolved:
                return self._count_op(t, "skipped")
            self._local_write(t, "reports", {"id": rng.choice(resolved)["id"],
                                             "status": rng.choice(("confirmed", "reopened"))})
        elif op == "move_household":
            if len(t.grids) < 2:
                return self._count_op(t, "skipped")
            h = rng.choice(households)
            self._local_write(t, "households", {"id": h["id"], "grid_id": rng.choice(
                [g for g in t.grids if g != h["grid_id"]])})
        elif op == "review_conflict":
            open_ = [c for c in t.store.list("conflicts") if c.get("status") == "open" and c["grid_id"] in t.grids]
            if not open_:
                return self._count_op(t, "skipped")
            self._local_write(t, "conflicts", {"id": rng.choice(open_)["id"], "status": "kept"})
        elif op == "refused_out_of_scope":
            every = self._household_values(t.name)
            self._local_write(t, "households", {"id": self.new_id("x"), "grid_id": FOREIGN_GRID,
                                                "address": every["address"], "phone": every["phone"]},
                              must_refuse=True)
        elif op == "refused_protected":
            reports = self._mine(t, "reports")
            if not reports:
                return self._count_op(t, "skipped")
            _, tok = self.token(t.name)
            self._local_write(t, "reports", {"id": rng.choice(reports)["id"], "department": f"自派{tok}"[:50]})
        elif op == "refused_transition":
            submitted = [r for r in self._mine(t, "reports") if r.get("status") == "submitted"]
            if not submitted:
                return self._count_op(t, "skipped")
            self._local_write(t, "reports", {"id": rng.choice(submitted)["id"], "status": "dispatched"})
        self._count_op(t, op)

    def _count_op(self, t: Tablet, op: str) -> None:
        self.report.ops[op] += 1

    def _server_live(self, collection: str) -> list[dict[str, Any]]:
        with self.district.db.transaction() as tx:
            found = tx.all("SELECT id, body FROM records WHERE collection = ? AND deleted = 0 ORDER BY id",
                           (collection,))
        out = []
        for rid, body in found:
            state = load_state(body)
            out.append({"id": rid, **{k: w.value for k, w in state.items() if k != DELETED}})
        return out

    def _reassign(self, pair: tuple[str, str]) -> None:
        """The command centre gives a worker one more grid, or takes it back (scope enter / leave)."""
        worker, grid = pair
        if grid in self.assignments[worker]:
            self.district.unassign(worker, grid)
            self.assignments[worker].discard(grid)
            self.report.ops["cc_unassign"] += 1
        else:
            self.district.assign(worker, grid)
            self.assignments[worker].add(grid)
            self.report.ops["cc_assign"] += 1
        for t in self.tablets:
            if t.worker == worker:
                t.grids = tuple(sorted(self.assignments[worker]))

    def _server_op(self) -> None:
        rng = self.rng
        reports = self._server_live("reports")
        by_status: dict[str, list[str]] = {}
        for r in reports:
            by_status.setdefault(r.get("status", ""), []).append(r["id"])
        cc, dept = Actor("cc", "command"), Actor("dept", "department")
        choices: list[tuple[str, Actor, str, str, dict[str, Any]]] = []
        for rid in by_status.get("submitted", []) + by_status.get("reopened", []):
            choices.append(("cc_dispatch", cc, "reports", rid, {"status": "dispatched", "department": "城管"}))
        for rid in by_status.get("submitted", []):
            choices.append(("cc_reject", cc, "reports", rid, {"status": "rejected"}))
        for rid in by_status.get("dispatched", []):
            choices.append(("dept_start", dept, "reports", rid, {"status": "in_progress"}))
            choices.append(("dept_resolve", dept, "reports", rid, {"status": "resolved"}))
            choices.append(("cc_reroute", cc, "reports", rid, {"status": "dispatched", "department": "民政"}))
        for rid in by_status.get("in_progress", []):
            choices.append(("dept_resolve", dept, "reports", rid, {"status": "resolved"}))
        for rid in by_status.get("resolved", []):
            choices.append(("cc_confirm", cc, "reports", rid, {"status": "confirmed"}))
        households = self._server_live("households")
        for h in rng.sample(households, min(3, len(households))):
            choices.append(("cc_edit_household", cc, "households", h["id"], {}))
        choices.append(("cc_create_household", cc, "households", self.new_id("h"), {"grid_id": rng.choice(GRIDS)}))
        name, actor, collection, rid, values = rng.choice(choices)
        if "department" in values:
            values["department"] = f"{values['department']}{self.token('cc')[1]}"[:50]
        if name == "cc_edit_household":
            values = self._household_values("cc", rng.randint(1, 2))
        elif name == "cc_create_household":
            values = {**values, **self._household_values("cc")}
        self._server_write(actor.id, actor, collection, rid, values)
        self.report.ops[name] += 1

    # -- a round -----------------------------------------------------------------------
    def _round(self, r: int) -> None:
        rng = self.rng
        proxy_mode = self.report.transport == "proxy"
        everyone_cut = rng.random() < 0.05
        for t in self.tablets:
            if t.partition_until < r:
                self._set_partition(t, None)
            if everyone_cut or rng.random() < 0.07:
                t.partition_until = r + rng.randint(0, 2)
                kind = rng.choice(("refuse", "refuse", "refuse", "blackhole") if proxy_mode else ("full", "responses"))
                self._set_partition(t, kind)
                self.report.faults[f"partition_{kind}_rounds"] += t.partition_until - r + 1
            if t.offline_until < r and rng.random() < 0.12:
                t.offline_until = r + rng.randint(1, 4)
                self.report.ops["offline_stretch"] += 1
            if rng.random() < 0.03:
                t.skew[0] = int(rng.uniform(-1, 1) * rng.choice((60_000, DAY_MS)))
                t.lowest_skew = min(t.lowest_skew, t.skew[0])
                self.report.ops["clock_jump"] += 1
        for t in rng.sample(self.tablets, len(self.tablets)):
            for _ in range(rng.randrange(0, 4)):
                self._device_op(t)
        syncing = [t for t in self.tablets if t.offline_until < r and rng.random() < 0.8]
        if self.report.concurrent and len(syncing) > 1:
            threads = [threading.Thread(target=self._sync, args=(t,)) for t in syncing]
            for th in threads:
                th.start()
            # The worker keeps working while the tablet syncs in the background.
            for t in syncing:
                for _ in range(rng.randrange(0, 3)):
                    self._device_op(t)
                    self.report.ops["op_during_sync"] += 1
            for th in threads:
                th.join(timeout=300)
                if th.is_alive():
                    self.violation(f"round {r}: a sync hung for 300 s")
        else:
            for t in syncing:
                self._sync(t)
        for _ in range(rng.randrange(0, 4)):
            self._server_op()
        if rng.random() < 0.12:
            self._reassign(rng.choice(REASSIGNABLE))
        self.check_reads(f"round {r}")
        self.log(f"round {r}: {len(syncing)} synced, {len(self.writes)} writes so far")

    def _set_partition(self, t: Tablet, kind: str | None) -> None:
        if t.proxy is not None:
            t.proxy.partition = kind
        else:
            t.transport.partition = kind

    def _noise(self, t: Tablet) -> int:
        if isinstance(t.transport, FaultyTransport):
            s = t.transport.stats
            return s["truncate_request"] + s["truncate_response"] + s["duplicate"]
        assert t.proxy is not None
        # A response cut inside its head reaches the client as a complete, empty answer (see the
        # seed-1 proxy regression test): the client refuses it as a ProtocolError.
        return t.proxy.stats["tcp_duplicate"] + t.proxy.stats["tcp_cut_response"]

    def _sync(self, t: Tablet) -> None:
        noise = self._noise(t)
        truncated = t.transport.truncated_200 if isinstance(t.transport, FaultyTransport) else 0
        outcome = "ok"
        try:
            t.client.sync()
        except NetworkError:
            outcome = "network_error"
        except ServerError:
            outcome = "server_error"
        except ProtocolError as exc:
            outcome = "protocol_error"
            if self._noise(t) == noise:
                self.violation(f"[sync] {t.name}: ProtocolError without a damaged answer: {exc}")
        except RequestRejected as exc:
            outcome = f"refused_{exc.code}"
            if self._noise(t) == noise or (exc.code not in ALLOWED_REFUSALS and not exc.code.startswith("http_")):
                self.violation(f"[sync] {t.name}: refused {exc.status} {exc.code}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any other failure is a finding
            outcome = f"crash_{type(exc).__name__}"
            self.violation(f"[sync] {t.name}: sync raised {type(exc).__name__}: {exc}")
        if isinstance(t.transport, FaultyTransport) and t.transport.truncated_200 > truncated and outcome == "ok":
            self.violation(f"[sync] {t.name}: accepted a truncated answer")
        with self._lock:
            self.report.syncs[outcome] += 1

    # -- healing -----------------------------------------------------------------------
    def _heal(self) -> None:
        for t in self.tablets:
            t.offline_until = -1
            if isinstance(t.transport, FaultyTransport):
                t.transport.heal()
            if t.proxy is not None:
                t.proxy.heal()

    def _quiesce(self) -> bool:
        """Sync every tablet until nothing moves; False (with violations) if it never settles."""
        for rnd in range(QUIET_ROUNDS):
            moved = 0
            for t in self.tablets:
                try:
                    res = t.client.sync()
                except Exception as exc:  # noqa: BLE001 - after healing every sync must succeed
                    self.violation(f"[quiet] {t.name}: sync failed after the faults healed: "
                                   f"{type(exc).__name__}: {exc}")
                    return False
                moved += res.pushed + res.pulled + res.repaired + res.removed
            if rnd == 0:
                for t in self.tablets:
                    self.check("outbox_drains", t.store.outbox_size() == 0,
                               f"{t.name}: {t.store.outbox_size()} outbox entries left after a clean sync")
            if moved == 0:
                self.report.observations[f"quiet_after_{rnd + 1}_rounds"] += 1
                return True
        self.violation(f"[quiet] still moving after {QUIET_ROUNDS} clean rounds")
        return False


def run_campaign(seed: int, backend: str, workdir: Path, **options: Any) -> Report:
    """Play one seeded chaos run in ``workdir``; the report lists every violated invariant."""
    return Campaign(seed, backend, workdir, **options).run()
