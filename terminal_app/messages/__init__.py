"""Message catalog entries, one module per screen or area (see terminal_app.i18n)."""
