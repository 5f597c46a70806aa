"""Child process for test_draft_survives_kill: types a visit form, or reads it back.

``draft_child.py DATA_DIR type``  unlocks, opens the first household's visit
form, fills it, lets the draft save, prints TYPED and waits to be killed.
``draft_child.py DATA_DIR read``  unlocks, opens the same form and prints its
fields as JSON.
"""

from __future__ import annotations

import json
import sys
import time

from terminal_app.driver import offscreen

offscreen(quiet=not sys.argv[3:])

from terminal_app.app import GridWorkerApp  # noqa: E402
from terminal_app.driver import AppDriver  # noqa: E402
from terminal_app.fieldday import PIN  # noqa: E402
from terminal_app.screens.overview import HouseholdRowView  # noqa: E402

NOTES = "独居老人王秀英，腿脚不便，需要每周送菜上门"


def main() -> None:
    data_dir, mode = sys.argv[1], sys.argv[2]
    app = GridWorkerApp(data_dir, sync_in_background=False)
    d = AppDriver(app)
    d.type(app.screen.ids.pin, PIN)
    d.tap(app.t("unlock.button"))
    d.wait_until(lambda: app.manager.current == "overview" and bool(app.screen.rows), what="the overview")
    d.tap(d.find(cls=HouseholdRowView))
    # With a draft waiting, the household's button says so.
    d.tap(app.t("household.new_visit" if mode == "type" else "household.continue_visit"))
    visit = app.screen
    if mode == "type":
        app.sync_now()  # the server is unreachable: this sync fails, the form must not care
        d.tap(app.t("visit.purpose.独居老人探访"))
        d.type(visit.ids.notes, NOTES)
        d.tap(app.t("visit.need.助餐"))
        end = time.monotonic() + 1.5  # the draft is saved half a second after the last change
        while time.monotonic() < end:
            d.pump(1)
            time.sleep(0.02)
        print("TYPED", app.last_sync_error is not None, flush=True)
        while True:  # killed here, mid-form, with no chance to clean up
            d.pump(1)
            time.sleep(0.05)
    shown = visit.form()  # what the widgets show now
    print(json.dumps({"notes": visit.ids.notes.text, "purpose": shown.purpose, "needs": sorted(shown.needs),
                      "household": visit.household_id}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
