"""The invariants a chaos run must keep, checked on the healed, quiet system (and reads, all along).

=========================== ==================================================================
reads_were_written          no tablet ever shows a value nobody wrote (checked every round)
device_equals_server        each tablet holds exactly the server's live records of its grids
checksum, cursor_caught_up  its grid checksums equal the server's; its cursors reached the counters
integrity, scope            PRAGMA integrity_check is ok; it holds exactly its worker's grids
outbox_drains               every outbox is empty after one clean sync
server_seq_unique/_counter  per grid, server_seqs are unique and the counter is the highest one
rejections_reach_device     the device holds exactly the rejections the server recorded for it
must_refuse                 writes into a grid nobody is assigned to were refused (out_of_scope)
acked_seq                   the server's last_seq for a device is the highest seq it ever used
exactly_once                the server applied each change once: the push answers' ``applied``
                            add up to the changes sent minus the ones refused
applied_present             a field some applied write wrote is on the server
final_was_applied           the server's value of a field was written by an applied write
refused_not_applied         a refused write's value is not on the server
no_phantom_records          every record on the server was created by someone
own_writes_in_order         a writer's later write of a field never loses to its own earlier one
no_silent_loss              an applied write that is not the final value was overwritten by a
                            writer who had seen it, or is in the conflict log as the lost value
informed_overwrite_wins     a writer who saw a value and overwrote it wins over it, unless its
                            clock was behind (it clamps what it observes to its wall + 5 min)
no_server_error             the server never logged an unexpected error (a 500) during the run
concurrent_in_conflict_log  two applied writes of a field that did not see each other (different
                            values, different writers) leave a conflict record for that field
=========================== ==================================================================

The identity checks use the unique values of :data:`chaos_model.UNIQUE` fields.  "Saw" is exact:
the tablet's value of the field just before its write (read in the same transaction).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from chaos_model import ABSENT, FOREIGN_GRID, TRACKED, UNIQUE, Report, Tablet, Write, value_key

from fieldsync.merge import DELETED
from server_stub.district import District

__all__ = ["Invariants"]

Row = tuple[str, str, str, int, int, dict[str, Any]]  # collection, id, grid, server_seq, deleted, body


class Invariants:
    """Mixed into the campaign: what it checks, given its tablets, writes, district and ledger."""

    report: Report
    tablets: list[Tablet]
    writes: list[Write]
    district: District
    ledger: Any
    _lock: threading.Lock

    def violation(self, text: str) -> None:
        with self._lock:
            if len(self.report.violations) < 200:
                self.report.violations.append(text)

    def check(self, name: str, ok: bool, text: str = "") -> bool:
        """Count one check of invariant ``name``; record ``text`` as a violation if it failed."""
        self.report.checks[name] += 1
        if not ok:
            self.violation(f"[{name}] {text}")
        return ok

    # -- reads ---------------------------------------------------------------------------
    def written_values(self) -> dict[tuple[str, str, str], set[str]]:
        out: dict[tuple[str, str, str], set[str]] = {}
        for w in self.writes:
            out.setdefault((w.collection, w.rid, w.field), set()).add(value_key(w.value))
        return out

    def check_reads(self, when: str) -> None:
        """No tablet shows a value nobody wrote (the server's own timeline is not a write)."""
        written = self.written_values()
        for t in self.tablets:
            for collection in TRACKED:
                for rec in t.store.list(collection):
                    for f, v in rec.items():
                        if f in ("id", "timeline"):
                            continue
                        ok = value_key(v) in written.get((collection, rec["id"], f), set())
                        self.check("reads_were_written", ok, "" if ok else
                                   f"{when}: {t.name} shows {collection}/{rec['id']}.{f} = {v!r}, which nobody wrote")
            for c in t.store.list("conflicts"):
                for side in ("kept_value", "lost_value"):
                    if side not in c or c["field"] in ("status", "timeline"):
                        continue
                    ok = value_key(c[side]) in written.get((c["collection"], c["record_id"], c["field"]), set())
                    self.check("reads_were_written", ok, "" if ok else
                               f"{when}: {t.name} conflict {c['id']} {side} {c[side]!r} was never written")

    # -- after healing --------------------------------------------------------------------
    def _server_rows(self) -> list[Row]:
        with self.district.db.transaction() as tx:
            found = tx.all("SELECT collection, id, grid, server_seq, deleted, body FROM records")
        return [(c, rid, g, int(seq), int(d), json.loads(body)) for c, rid, g, seq, d, body in found]

    def check_all(self) -> None:
        rows = self._server_rows()
        counters = self._check_server_sequences(rows)
        self._check_tablets(rows, counters)
        rejected = self._check_acks_and_rejections()
        for w in self.writes:
            if w.seq is not None:
                w.applied = w.seq not in rejected[w.writer]
        # The server creates each conflict record with status "open": that is a write too.
        for c, rid, _, _, _, _ in rows:
            if c == "conflicts":
                self.writes.append(Write(0, "server", c, rid, "status", "open", ABSENT, applied=True))
        self._check_writes(rows)
        self.check_reads("after healing")

    def _check_server_sequences(self, rows: list[Row]) -> dict[str, int]:
        with self.district.db.transaction() as tx:
            counters = {g: int(s) for g, s in tx.all("SELECT grid, seq FROM grid_state")}
            departures = tx.all("SELECT grid, server_seq FROM departures")
        seen: dict[str, list[int]] = {}
        for _, _, g, seq, _, _ in rows:
            seen.setdefault(g, []).append(seq)
        for g, seq in departures:
            seen.setdefault(g, []).append(int(seq))
        for g, seqs in seen.items():
            self.check("server_seq_unique", len(seqs) == len(set(seqs)), f"grid {g}: two rows share a server_seq")
            self.check("server_seq_counter", counters.get(g) == max(seqs),
                       f"grid {g}: counter {counters.get(g)} but highest server_seq {max(seqs)}")
        return counters

    def _check_tablets(self, rows: list[Row], counters: dict[str, int]) -> None:
        with self.district.db.transaction() as tx:
            checksums = {g: int(c) for g, c in tx.all("SELECT grid, checksum FROM grid_state")}
        for t in self.tablets:
            name = t.name
            self.check("integrity", t.store.integrity_check() == "ok", f"{name}: PRAGMA integrity_check failed")
            self.check("scope", t.store.grids() == sorted(t.grids), f"{name}: holds grids {t.store.grids()}")
            theirs = {(c, rid): {"id": rid, **{k: w[0] for k, w in body.items() if k != DELETED}}
                      for c, rid, g, _, deleted, body in rows if not deleted and g in t.grids}
            mine = {(c, r["id"]): r for c in t.store.registry.names() for r in t.store.list(c)}
            self.check("device_equals_server", set(mine) == set(theirs),
                       f"{name}: only on device {sorted(set(mine) - set(theirs))[:4]}, "
                       f"only on server {sorted(set(theirs) - set(mine))[:4]}")
            for key in sorted(set(mine) & set(theirs)):
                ok = mine[key] == theirs[key]
                self.check("device_equals_server", ok, "" if ok else
                           f"{name}: {key} device {mine[key]} != server {theirs[key]}")
            cursors = t.store.cursors()
            for g in t.grids:
                self.check("checksum", t.store.grid_checksum(g) == checksums.get(g, 0),
                           f"{name}: checksum of {g} differs from the server's")
                self.check("cursor_caught_up", cursors.get(g) == counters.get(g, 0),
                           f"{name}: cursor {cursors.get(g)} for {g}, server at {counters.get(g)}")

    def _check_acks_and_rejections(self) -> dict[str, set[int]]:
        with self.district.db.transaction() as tx:
            server_rej = tx.all("SELECT device_id, seq, code FROM rejections")
        last_seq = {d["id"]: int(d["last_seq"]) for d in self.district.devices()}
        out: dict[str, set[int]] = {}
        for t in self.tablets:
            dev = t.identity.device_id
            theirs = {int(s): code for d, s, code in server_rej if d == dev}
            mine = {r.seq: r.code for r in t.store.rejections(include_dismissed=True)}
            self.check("rejections_reach_device", mine == theirs,
                       f"{t.name}: device rejections {sorted(mine)} != server {sorted(theirs)}")
            for seq in sorted(t.must_refuse):
                self.check("must_refuse", theirs.get(seq) == "out_of_scope",
                           f"{t.name}: seq {seq} (a record in {FOREIGN_GRID}) was not refused as out_of_scope")
            highest = max(t.seqs) if t.seqs else 0
            self.check("acked_seq", last_seq.get(dev, 0) == highest,
                       f"{t.name}: server last_seq {last_seq.get(dev)} != highest seq sent {highest}")
            applied = self.ledger.applied_by(dev)
            expected = len(t.seqs - set(theirs))
            self.check("exactly_once", applied == expected,
                       f"{t.name}: the server applied {applied} changes; {expected} were sent and not refused")
            out[t.name] = set(theirs)
        return out

    def _check_writes(self, rows: list[Row]) -> None:
        state = {(c, rid): body for c, rid, _, _, _, body in rows}
        lost: dict[tuple[str, str, str], set[str]] = {}
        conflicted: set[tuple[str, str, str]] = set()
        for c, _, _, _, _, body in rows:
            if c == "conflicts":
                key = (body["collection"][0], body["record_id"][0], body["field"][0])
                conflicted.add(key)
                if "lost_value" in body:
                    lost.setdefault(key, set()).add(value_key(body["lost_value"][0]))
        by_field: dict[tuple[str, str, str], list[Write]] = {}
        for w in self.writes:
            by_field.setdefault((w.collection, w.rid, w.field), []).append(w)
        created = {(w.collection, w.rid) for w in self.writes}
        for c, rid, _, _, _, _ in rows:
            if c in TRACKED:
                self.check("no_phantom_records", (c, rid) in created, f"{c}/{rid} on the server was never created")
        for (c, rid, f), ws in by_field.items():
            final = state.get((c, rid), {}).get(f)
            self._check_field(c, rid, f, ws, final, lost.get((c, rid, f), set()))
            if f in UNIQUE.get(c, ()):
                self._check_concurrent(c, rid, f, ws, (c, rid, f) in conflicted)

    def _check_field(self, c: str, rid: str, f: str, ws: list[Write], final: list[Any] | None,
                     lost: set[str]) -> None:
        where = f"{c}/{rid}.{f}"
        applied = [w for w in ws if w.applied]
        if not applied:
            ok = final is None or value_key(final[0]) not in {value_key(w.value) for w in ws}
            self.check("refused_not_applied", ok, "" if ok else f"{where}: a refused write's value {final!r} is there")
            return
        if not self.check("applied_present", final is not None, f"{where}: applied writes, but the field is absent"):
            return
        assert final is not None
        ok = value_key(final[0]) in {value_key(w.value) for w in applied}
        self.check("final_was_applied", ok, "" if ok else f"{where}: the server holds {final[0]!r}, "
                                                         "which no applied write wrote")
        if f not in UNIQUE.get(c, ()):
            return
        winner = next((w for w in applied if value_key(w.value) == value_key(final[0])), None)
        if winner is None:
            return
        later = [w for w in applied if w.writer == winner.writer and w.n > winner.n]
        self.check("own_writes_in_order", not later, "" if not later else
                   f"{where}: {winner.writer}'s write {winner.value!r} (seq {winner.seq}) beat its own later "
                   f"write {later[0].value!r} (seq {later[0].seq}); final stamp {final[1]}")
        for w in applied:
            if w is winner:
                continue
            knowing = any(z.applied and z is not w and z.saw is not ABSENT and value_key(z.saw) == value_key(w.value)
                          for z in ws)
            ok = knowing or value_key(w.value) in lost
            self.check("no_silent_loss", ok, "" if ok else
                       f"{where}: acknowledged write {w.value!r} by {w.writer} (seq {w.seq}) vanished: not final "
                       f"({final[0]!r} by {winner.writer}), not overwritten by a writer who saw it, not in the "
                       "conflict log")
            if w.saw is not ABSENT and value_key(w.saw) == value_key(winner.value):
                # A clock that is (or was, since the tablet saw the value) behind the server's clamps
                # what it observes (a fast tablet's stamps reach server time + 5 min), so its overwrite
                # can carry an older stamp; a tablet whose clock was never slow cannot lose this way.
                slow = w.skew < 0
                if slow:
                    self.report.observations["slow_clock_overwrite_lost"] += 1
                self.check("informed_overwrite_wins", slow,
                           f"{where}: {w.writer} saw {winner.value!r} and overwrote it with {w.value!r}, "
                           f"but {winner.value!r} is still there")

    def _check_concurrent(self, c: str, rid: str, f: str, ws: list[Write], conflicted: bool) -> None:
        """Two applied writes that did not see each other (different values) leave a conflict record."""
        parents: dict[int, list[Write]] = {}
        for w in ws:
            parents[w.n] = [z for z in ws if z is not w and (
                (w.saw is not ABSENT and value_key(z.value) == value_key(w.saw)) or (z.writer == w.writer and z.n < w.n))]
        memo: dict[int, set[int]] = {}

        def ancestors(w: Write) -> set[int]:
            if w.n not in memo:
                memo[w.n] = set()
                found: set[int] = set()
                for p in parents[w.n]:
                    found.add(p.n)
                    found |= ancestors(p)
                memo[w.n] = found
            return memo[w.n]

        applied = [w for w in ws if w.applied]
        for i, a in enumerate(applied):
            for b in applied[i + 1:]:
                if a.writer == b.writer or value_key(a.value) == value_key(b.value):
                    continue
                if a.n in ancestors(b) or b.n in ancestors(a):
                    continue
                self.check("concurrent_in_conflict_log", conflicted,
                           f"{c}/{rid}.{f}: {a.writer} wrote {a.value!r} and {b.writer} wrote {b.value!r} "
                           "without seeing each other; no conflict was recorded")
                return
