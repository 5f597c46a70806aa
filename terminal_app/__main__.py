"""``python -m terminal_app [--data DIR]``: run the grid worker's app."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(prog="terminal_app", description="fieldsync grid worker app")
    parser.add_argument("--data", default=os.environ.get("FIELDSYNC_APP_DATA", str(Path.home() / ".fieldsync-app")),
                        help="folder for the encrypted store and settings")
    args, _ = parser.parse_known_args()
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    from .app import GridWorkerApp

    GridWorkerApp(args.data).run()


if __name__ == "__main__":
    main()
