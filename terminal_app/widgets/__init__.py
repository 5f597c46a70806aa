"""Widgets shared by the screens: the sync bar, the navigation bar, list rows and styles."""
