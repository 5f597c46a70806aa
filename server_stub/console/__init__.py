"""The web console of the district server (``/console``): see :mod:`server_stub.console.app`."""

from .app import create_console

__all__ = ["create_console"]
