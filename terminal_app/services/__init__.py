"""Models and services of the terminal app.  Nothing here imports Kivy, so plain pytest covers it."""
