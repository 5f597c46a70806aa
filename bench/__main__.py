"""``python -m bench``: the whole benchmark suite (see :mod:`bench.suite`)."""

from .suite import main

raise SystemExit(main())
