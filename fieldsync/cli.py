"""The ``fieldsync`` command: work with a device store from a shell.

The PIN comes from the FIELDSYNC_PIN environment variable (for scripts) or a
hidden prompt.  Every failure prints one line starting with ``Error:`` and
exits non-zero; no traceback reaches the user.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from .errors import FieldsyncError
from .store import Store

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

STORE_OPTION = click.option(
    "--store", "store_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Path of the store file, e.g. tablet.fsdb.",
)


def _pin(prompt: str = "PIN", confirm: bool = False) -> str:
    env = os.environ.get("FIELDSYNC_PIN")
    if env:
        return env
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


def _friendly(func: F) -> F:
    """Turn every expected failure into one clear line and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FieldsyncError as exc:
            raise click.ClickException(str(exc)) from exc
        except (ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def open_store(path: Path) -> Store:
    return Store.open(path, _pin())


def _parse_record(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"JSON is not valid: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise click.ClickException("the record must be a JSON object, like {\"grid_id\": \"g1\", ...}")
    return data


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fieldsync")
def main() -> None:
    """fieldsync: the encrypted offline store of a grid worker's tablet.

    Every command takes --store PATH.  The PIN is read from FIELDSYNC_PIN or
    asked for.  Collections: grids, households, residents, visits, reports,
    tasks.
    """


@main.command()
@STORE_OPTION
@_friendly
def init(store_path: Path) -> None:
    """Create a new encrypted store protected by a PIN (at least 4 characters)."""
    store = Store.create(store_path, _pin("Choose a PIN", confirm=True))
    store.close()
    click.echo(f"Created encrypted store {store_path}")


@main.command()
@STORE_OPTION
@click.argument("collection")
@click.argument("record_json", metavar="JSON")
@_friendly
def put(store_path: Path, collection: str, record_json: str) -> None:
    """Save a record (JSON object) into COLLECTION and print its id.

    Give "id" to update an existing record; only the fields given change.
    Use - as JSON to read it from standard input.
    """
    text = sys.stdin.read() if record_json == "-" else record_json
    record = _parse_record(text)
    with open_store(store_path) as store:
        click.echo(store.put(collection, record))


@main.command()
@STORE_OPTION
@click.argument("collection")
@click.argument("record_id")
@_friendly
def get(store_path: Path, collection: str, record_id: str) -> None:
    """Print one record as JSON."""
    with open_store(store_path) as store:
        click.echo(json.dumps(store.get(collection, record_id), ensure_ascii=False, indent=2))


@main.command()
@STORE_OPTION
@click.argument("collection")
@click.argument("field")
@click.argument("value")
@_friendly
def search(store_path: Path, collection: str, field: str, value: str) -> None:
    """Find records whose FIELD equals VALUE (names, phones, ID numbers; normalised).

    Example: fieldsync search --store t.fsdb residents id_number 42010619800101001X
    """
    with open_store(store_path) as store:
        found = store.find(collection, field, value)
    click.echo(json.dumps(found, ensure_ascii=False, indent=2))
    click.echo(f"{len(found)} found", err=True)


@main.command("change-pin")
@STORE_OPTION
@_friendly
def change_pin(store_path: Path) -> None:
    """Change the PIN.  The data key is re-wrapped; no data is re-encrypted."""
    old = _pin("Current PIN")
    new = os.environ.get("FIELDSYNC_NEW_PIN") or click.prompt("New PIN", hide_input=True, confirmation_prompt=True)
    with Store.open(store_path, old) as store:
        store.change_pin(old, new)
    click.echo("PIN changed")


@main.command()
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_friendly
def status(store_path: Path, as_json: bool) -> None:
    """Show record counts, pending changes, last sync, rejections and conflicts."""
    from .identity import load_identity

    with open_store(store_path) as store:
        st = store.status()
        identity = load_identity(store)
        last = store.get_meta("last_synced_ms")
        rejections = store.rejections()
        conflicts = [c for c in store.list("conflicts") if c.get("status", "open") == "open"]
        grids = store.grids()
    records = {k: v for k, v in st.records.items() if k != "conflicts"}
    data = {
        "records": records, "pending_changes": st.outbox, "attachments": st.attachments,
        "enrolled": identity is not None, "server": identity.server_url if identity else None,
        "device_id": identity.device_id if identity else None, "grids": grids,
        "last_sync_ms": last, "rejections": len(rejections), "conflicts": len(conflicts),
    }
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    click.echo(f"Store: {store_path}")
    for name, n in records.items():
        click.echo(f"  {name:<12} {n:>7}")
    click.echo(f"Pending changes: {st.outbox}")
    click.echo(f"Attachments:     {st.attachments}")
    if identity is None:
        click.echo("Not enrolled (fieldsync enroll --store PATH --server URL --code CODE)")
        return
    click.echo(f"Server:          {identity.server_url} (device {identity.device_id}, grids {', '.join(grids) or '-'})")
    click.echo(f"Last sync:       {_when(last)}")
    click.echo(f"Rejections:      {len(rejections)}")
    for r in rejections:
        click.echo(f"  #{r.seq} {r.collection}/{r.id}: {r.code}: {r.message}")
    click.echo(f"Conflicts:       {len(conflicts)}")
    for c in conflicts:
        click.echo(f"  {c['collection']}/{c['record_id']}.{c['field']}: kept one value, another was overwritten")


def _when(ms: int | None) -> str:
    if not ms:
        return "never"
    from datetime import datetime

    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


@main.command()
@STORE_OPTION
@click.option("--server", "server_url", required=True, help="District server address, https://host[:port].")
@click.option("--code", required=True, help="One-time enrollment code from the command centre.")
@click.option("--name", "device_name", default="", help="A name for this device, shown to the command centre.")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM file of the district's own certificate authority.")
@_friendly
def enroll(store_path: Path, server_url: str, code: str, device_name: str, ca_bundle: str | None) -> None:
    """Enroll this store's device with the district server (once)."""
    from .sync import enroll as do_enroll

    with open_store(store_path) as store:
        identity = do_enroll(store, server_url, code, device_name=device_name, ca_bundle=ca_bundle)
    click.echo(f"Enrolled as device {identity.device_id} for worker {identity.worker_id}")


@main.command()
@STORE_OPTION
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@_friendly
def sync(store_path: Path, quiet: bool) -> None:
    """Send pending changes and fetch what changed on the server.  Exit status 1 on failure."""
    from .sync import SyncClient, SyncProgress

    def show(p: SyncProgress) -> None:
        if not quiet:
            click.echo(f"\r{p.phase:<10} {p.records:>7} records  {p.bytes_sent / 1024:>8.1f} KiB sent  "
                       f"{p.bytes_received / 1024:>8.1f} KiB received", nl=False, err=True)

    with open_store(store_path) as store:
        result = SyncClient(store).sync(progress=show)
    if not quiet:
        click.echo("", err=True)
    click.echo(f"Synced: {result.pushed} sent, {result.rejected} rejected, {result.pulled} received, "
               f"{result.removed} removed, {result.repaired} repaired in {result.seconds:.1f} s "
               f"({result.requests} requests)")


if __name__ == "__main__":  # pragma: no cover
    main()
