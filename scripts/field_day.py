"""The main demo (``scripts/demo``): a district server and a grid worker's tablet app, on SQLite.

1. The command centre builds the demo district (four grids of the seed
   article's communities) in ``demo-data/district.db`` and starts the server.
2. With a display, the app opens: enroll with the printed code and choose a
   PIN, then work.  With no display (or ``--offscreen``), the real app plays
   a scripted field day offscreen — enroll, unlock, find a resident by ID
   number, record a visit while the server is down, report an incident with a
   photo, come back online (the app syncs by itself), see the report
   dispatched by the command centre — and writes a screenshot of every screen
   to ``demo-data/screenshots/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path("demo-data")
WORKER = "w-lijing"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offscreen", action="store_true", help="play the scripted field day even with a display")
    args = parser.parse_args()
    offscreen = args.offscreen or not os.environ.get("DISPLAY")

    from server_stub.demo import build_demo
    from server_stub.district import District
    from server_stub.local import LocalServer

    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir()
    db_url = f"sqlite:///{(ROOT / 'district.db').resolve()}"
    print("fieldsync demo — 武昌区 grid work, offline-first", flush=True)
    district = District(db_url)
    for line in build_demo(district, progress=lambda m: print("  " + m, flush=True)):
        print(line, flush=True)
    server = LocalServer(db_url, port=8700 if not offscreen else None, log=ROOT / "server.log").start()
    print(f"\nDistrict server running at {server.url} (log: {server.log})", flush=True)
    code, _ = district.issue_code(WORKER)
    try:
        if not offscreen:
            print(f"\nOpening the app.  Server address: {server.url}   enrollment code for 李璟: {code}\n"
                  "Choose any PIN of 6+ digits.", flush=True)
            from terminal_app.app import GridWorkerApp

            GridWorkerApp(ROOT / "tablet").run()
            return 0
        return field_day(district, server, code)
    finally:
        server.stop()
        district.close()


def field_day(district: object, server: object, code: str) -> int:
    from terminal_app.driver import offscreen

    offscreen(quiet=True)
    from PIL import Image, ImageDraw

    from server_stub.demo_data import households, residents
    from server_stub.replica import Actor
    from terminal_app.app import GridWorkerApp
    from terminal_app.driver import AppDriver
    from terminal_app.fieldday import FieldDay

    shots = ROOT / "screenshots"
    photo = ROOT / "patrol-photo.jpg"
    image = Image.new("RGB", (1600, 1200), (196, 184, 160))
    draw = ImageDraw.Draw(image)
    for i in range(14):
        draw.rectangle([80 + (i % 7) * 210, 200 + (i // 7) * 420, 250 + (i % 7) * 210, 520 + (i // 7) * 420],
                       fill=(240, 240, 230), outline=(200, 30, 30), width=6)
    image.save(photo, quality=85)

    app = GridWorkerApp(ROOT / "tablet")
    app.config_file.probe_interval_s = 1
    day = FieldDay(AppDriver(app), shots, say=lambda m: print("  · " + m, flush=True))
    print("\nThe tablet's field day (the real app, offscreen):", flush=True)
    day.enroll(server.url, code)  # type: ignore[attr-defined]
    day.lock_and_unlock()
    grid = app.grid_ids[0] if app.grid_ids else None
    from server_stub.demo import WORKERS

    gi = next(i for wid, _, i in WORKERS if wid == WORKER)
    from server_stub.demo_data import GRIDS

    grid = GRIDS[gi]["id"]
    person = residents(households(300, grid, 2019 + gi), seed=2019 + gi)[0]
    day.find_household(person["id_number"])
    server.stop()  # type: ignore[attr-defined]
    print("  · the stairwell has no signal: the server is unreachable now", flush=True)
    day.record_visit()
    day.report_incident(photo)
    server.start()  # type: ignore[attr-defined]
    print("  · signal is back", flush=True)
    day.wait_synced()
    store = app.session.require_store()
    rid = sorted((r for r in store.list("reports") if r.get("reporter_id") == app.worker_id),
                 key=lambda r: r.get("reported_at") or "")[-1]["id"]
    district.write(Actor("cc-wangcc", "command"), "reports", rid, {"status": "dispatched", "department": "城管"})  # type: ignore[attr-defined]
    print("  · the command centre dispatched the report to 城管", flush=True)
    day.see_status("dispatched")
    district.write(Actor("dept-1", "department"), "reports", rid, {"status": "in_progress"})  # type: ignore[attr-defined]
    print("  · 城管 started work on it", flush=True)
    day.see_status("in_progress")
    day.tour()
    day.driver.close()
    print(f"\nScreenshots of every screen ({len(day.shots)}): {shots}/", flush=True)
    for shot in day.shots:
        print(f"  {shot.path}", flush=True)
    time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
