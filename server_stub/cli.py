"""The ``fieldsync-server`` command: run and administer a district server.

Every command takes ``--db URL``: ``sqlite:///path/district.db`` (the
embedded default) or ``postgresql://user@host/dbname``.  Failures print one
line starting with ``Error:`` and exit non-zero.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import click

from .auth import CODE_TTL_S, ApiError
from .district import District

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

DB_OPTION = click.option("--db", "db_url", required=True, envvar="FIELDSYNC_DB",
                         help="Database URL: sqlite:///district.db or postgresql://user@host/db (env FIELDSYNC_DB).")


def _friendly(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(exc.message) from exc
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:  # database unreachable, bad URL, ...
            if type(exc).__module__.startswith(("psycopg", "sqlite3")):
                raise click.ClickException(f"database error: {exc}") from exc
            raise

    return wrapper  # type: ignore[return-value]


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """fieldsync-server: the district server for grid workers' tablets.

    Typical first run:

      fieldsync-server init-demo --db sqlite:///district.db
      fieldsync-server serve --db sqlite:///district.db --host 127.0.0.1 --port 8700
      fieldsync-server enroll-code --db sqlite:///district.db --worker w-lijing
    """


@main.command("init-demo")
@DB_OPTION
@click.option("--households", default=300, show_default=True, help="Households per grid.")
@click.option("--seed", default=2019, show_default=True, help="Random seed for the generated residents.")
@_friendly
def init_demo(db_url: str, households: int, seed: int) -> None:
    """Create a demo district: streets, communities, grids of households with residents,
    visits and reports, workers assigned to grids, and the command centre and departments."""
    from .accounts import set_demo_passwords
    from .demo import DEPARTMENTS, STAFF, build_demo

    district = District(db_url)
    try:
        summary = build_demo(district, households_per_grid=households, seed=seed,
                             progress=lambda msg: click.echo(msg, err=True))
        staff = [sid for sid, _, _ in STAFF] + [f"dept-{i + 1}" for i in range(len(DEPARTMENTS))]
        passwords = set_demo_passwords(district.db, staff)
    finally:
        district.close()
    for line in summary:
        click.echo(line)
    click.echo("Console (/console) sign-in, demo passwords (change with 'fieldsync-server user set-password'):")
    for i, (sid, password) in enumerate(passwords):
        dept = DEPARTMENTS[i - len(STAFF)] if i >= len(STAFF) else "指挥中心"
        click.echo(f"  {sid:<10} {password}  ({dept})")


@main.command()
@DB_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8700, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes (uvicorn workers).")
@click.option("--ssl-certfile", default=None, help="TLS certificate (PEM); serve HTTPS.")
@click.option("--ssl-keyfile", default=None, help="TLS private key (PEM).")
@click.option("--attachments", "attachments_dir", default=None, envvar="FIELDSYNC_ATTACHMENTS",
              type=click.Path(file_okay=False),
              help="Folder for uploaded photos (env FIELDSYNC_ATTACHMENTS); default <db file>-attachments for "
                   "SQLite, ./attachments for PostgreSQL. Several server processes must share one folder.")
@_friendly
def serve(db_url: str, host: str, port: int, workers: int, ssl_certfile: str | None, ssl_keyfile: str | None,
          attachments_dir: str | None) -> None:
    """Serve the sync API (and /openapi.json) with uvicorn."""
    import os

    import uvicorn

    from .attachments import ATTACHMENTS_ENV, DirectoryStorage

    district = District(db_url, attachments=attachments_dir)  # create the schema once, fail early on a bad URL
    try:
        storage = district.attachments
        if isinstance(storage, DirectoryStorage):
            try:
                storage.ensure()  # fail early on a folder the server cannot write
            except OSError as exc:
                raise click.ClickException(
                    f"cannot use the attachments folder {storage.root}: {exc.strerror or exc}") from exc
            os.environ[ATTACHMENTS_ENV] = str(storage.root)  # every worker process uses the same folder
            click.echo(f"attachments in {storage.root}", err=True)
    finally:
        district.close()
    os.environ["FIELDSYNC_DB"] = db_url
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run("server_stub.asgi:app", host=host, port=port, workers=workers, log_level="info",
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, access_log=False)


@main.command("enroll-code")
@DB_OPTION
@click.option("--worker", "worker_id", required=True, help="Worker id the device will belong to.")
@click.option("--ttl", default=CODE_TTL_S, show_default=True, type=click.IntRange(60, 7 * 24 * 3600),
              help="Seconds the code stays valid.")
@_friendly
def enroll_code(db_url: str, worker_id: str, ttl: int) -> None:
    """Print a one-time enrollment code for a worker's tablet."""
    district = District(db_url)
    try:
        code, expires = district.issue_code(worker_id, ttl)
    finally:
        district.close()
    click.echo(code)
    click.echo(f"valid once, until {_when(expires)}", err=True)


@main.command()
@DB_OPTION
@click.option("--worker", "worker_id", required=True, help="Worker id.")
@click.option("--grid", "grid_id", required=True, help="Grid id to add to the worker's scope.")
@click.option("--remove", is_flag=True, help="Take the grid out of the worker's scope instead.")
@_friendly
def assign(db_url: str, worker_id: str, grid_id: str, remove: bool) -> None:
    """Assign a grid to a worker (or --remove it); devices follow on their next sync."""
    district = District(db_url)
    try:
        if remove:
            district.unassign(worker_id, grid_id)
            click.echo(f"{grid_id} removed from {worker_id}")
        else:
            district.assign(worker_id, grid_id)
            click.echo(f"{grid_id} assigned to {worker_id}")
    finally:
        district.close()


@main.command()
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_friendly
def devices(db_url: str, as_json: bool) -> None:
    """List enrolled devices with their worker, last contact and state."""
    district = District(db_url)
    try:
        rows = district.devices()
    finally:
        district.close()
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'DEVICE':<20} {'WORKER':<14} {'ENROLLED':<17} {'LAST SEEN':<17} {'SEQ':>6}  STATE")
    for r in rows:
        state = "active" if r["revoked_ms"] is None else ("revoked+wipe" if r["wipe"] else "revoked")
        click.echo(f"{r['id']:<20} {r['worker_id']:<14} {_when(r['enrolled_ms']):<17} "
                   f"{_when(r['last_seen_ms']):<17} {r['last_seq']:>6}  {state}")
    click.echo(f"{len(rows)} devices", err=True)


@main.command()
@DB_OPTION
@click.option("--device", "device_id", required=True, help="Device id (see 'devices').")
@click.option("--wipe", is_flag=True, help="Also tell the tablet to erase its data after its final push.")
@_friendly
def revoke(db_url: str, device_id: str, wipe: bool) -> None:
    """Revoke a device: it may send its last changes, then every request is refused."""
    district = District(db_url)
    try:
        district.revoke(device_id, wipe)
    finally:
        district.close()
    click.echo(f"{device_id} revoked{' (wipe requested)' if wipe else ''}")


# -- jobs and console users (server_stub/jobs.py, server_stub/accounts.py) ----------------------

@main.group()
def jobs() -> None:
    """Reconciliation jobs; run them from cron or a systemd timer (see docs/operations.md).

    Every job is safe to run twice and while tablets sync.
    """


@jobs.command("list")
def jobs_list() -> None:
    """List the jobs."""
    from .jobs import JOBS

    for name, func in JOBS.items():
        click.echo(f"{name:<11} {(func.__doc__ or '').strip().splitlines()[0]}")


@jobs.command("run")
@click.argument("name", type=click.Choice(["dispatch", "escalate", "duplicates", "compact", "coverage"]))
@DB_OPTION
@click.option("--rules", "rules_path", default=None, type=click.Path(dir_okay=False),
              help="dispatch: a JSON file of category rules overriding the defaults.")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 366),
              help="coverage: count visits of the last N days.")
@click.option("--active-days", default=30, show_default=True, type=click.IntRange(1, 3650),
              help="compact: devices seen in the last N days hold the compaction back.")
@_friendly
def jobs_run(name: str, db_url: str, rules_path: str | None, days: int, active_days: int) -> None:
    """Run one job (dispatch, escalate, duplicates, compact, coverage) and print its result as JSON."""
    from . import jobs as jobmod

    options: dict[str, Any] = {}
    if name == "dispatch" and rules_path:
        options["rules"] = jobmod.DispatchRules.load(rules_path)
    elif name == "coverage":
        options["days"] = days
    elif name == "compact":
        options["active_days"] = active_days
    district = District(db_url)
    try:
        result = jobmod.run(name, district, **options)
    finally:
        district.close()
    click.echo(json.dumps(result, ensure_ascii=False, sort_keys=True))


@main.group()
def user() -> None:
    """Console users: command-centre and department staff."""


@user.command("set-password")
@DB_OPTION
@click.option("--user", "user_id", required=True, help="Staff id (role command or department), e.g. cc-wangcc.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@_friendly
def user_set_password(db_url: str, user_id: str, password_stdin: bool) -> None:
    """Set a staff member's console password (asked twice, not echoed); signs out their sessions."""
    from .accounts import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    district = District(db_url)
    try:
        set_password(district.db, user_id, password)
    finally:
        district.close()
    click.echo(f"password set for {user_id}")


# -- the audit log (server_stub/audit.py) -------------------------------------------------------

@main.group("audit")
def audit_group() -> None:
    """The audit log: enrollments, revocations, refusals, exports and admin actions (no personal data)."""


@audit_group.command("verify")
@DB_OPTION
@click.option("--expect", "recorded", multiple=True, metavar="N:HASH",
              help="A head printed by an earlier run (repeatable): the chain must still pass through it.")
@_friendly
def audit_verify(db_url: str, recorded: tuple[str, ...]) -> None:
    """Check the audit log's hash chain; exit 1 naming the first broken entry."""
    from . import audit

    district = District(db_url)
    try:
        verdict = audit.verify(district.db)
        for head in recorded if verdict.ok else ():
            verdict = audit.check_recorded_head(district.db, head) or verdict
    finally:
        district.close()
    if not verdict.ok:
        click.echo(f"audit log BROKEN at entry {verdict.broken_at}: {verdict.message}", err=True)
        sys.exit(1)
    click.echo(verdict.message)


@audit_group.command("show")
@DB_OPTION
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000),
              help="How many of the newest entries to print.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@_friendly
def audit_show(db_url: str, limit: int, as_json: bool) -> None:
    """Print the newest audit entries, oldest first: number, time, actor, action, object, detail."""
    from . import audit

    district = District(db_url)
    try:
        found = audit.recent(district.db, limit)
    finally:
        district.close()
    for e in found:
        if as_json:
            click.echo(json.dumps({"n": e.n, "at_ms": e.at_ms, "actor": e.actor, "action": e.action,
                                   "object": e.object, "detail": json.loads(e.detail)}, ensure_ascii=False))
        else:
            at = datetime.fromtimestamp(e.at_ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")
            click.echo(f"{e.n:>7} {at} {e.actor:<24} {e.action:<28} {e.object} {e.detail}")


if __name__ == "__main__":  # pragma: no cover
    main()
