"""Child program for tests/security/test_stolen_tablet.py: a tablet app that dies inside a save.

Usage: python stolen_tablet_child.py MODE STORE_PATH DATA_JSON

The PIN comes in FIELDSYNC_PIN (never on the command line), the personal
values in the JSON file DATA_JSON, so neither this source file nor a
traceback's source lines carry them: whatever personal data ends up in the
crash output came from the library, not from the test.

Modes:

``raise``
    Inside one ``store.atomic()`` block: save a visit, keep a draft
    (``put_local``), then save a resident whose ID number fails its check
    digit.  The ``ValidationError`` is not caught: the interpreter prints
    its traceback to stderr (the parent sends stderr to a file), exactly
    what an app crash leaves behind.
``kill``
    Prints ``ready``, then saves visits, drafts and photos for ever, printing
    each acknowledged step, until the parent kills it with SIGKILL.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys


def main() -> None:
    from fieldsync import Store

    mode, path, data_path = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(data_path, encoding="utf-8") as fh:
        data = json.load(fh)
    # The app's own logging, at its most verbose, into the same file as the parent's.
    logging.basicConfig(filename=os.environ["FIELDSYNC_LOG"], level=logging.DEBUG,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    store = Store.open(path, os.environ["FIELDSYNC_PIN"])
    if mode == "raise":
        with store.atomic():
            store.put("visits", data["visit"])
            store.put_local("draft:visit:crash", data["draft"])
            store.put("residents", data["bad_resident"])  # raises ValidationError: the crash
        return
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    photo = data["photo"].encode("latin-1")
    for i in range(1_000_000):
        visit = {**data["visit"], "id": f"{data['visit']['id']}-k{i:05d}"}
        store.put("visits", visit)
        store.put_local(f"draft:visit:k{i % 3}", {**data["draft"], "n": i})
        if i % 4 == 0:
            # a different photo every time: a new encrypted file, written to .tmp-* then renamed
            store.attachments.add(io.BytesIO(photo + i.to_bytes(4, "big")))
        out.write(visit["id"] + "\n")
        out.flush()


if __name__ == "__main__":
    main()
