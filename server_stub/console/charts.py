"""Hand-made SVG bar charts for the console (no JavaScript, no CDN: the server draws them)."""

from __future__ import annotations

from html import escape
from typing import Sequence

__all__ = ["Bar", "bar_chart"]

Bar = tuple[str, int, int]  # label, value, total


def bar_chart(bars: Sequence[Bar], title: str, *, width: int = 1100, row: int = 30, label_width: int = 170,
              value_text: str = "{value}/{total}") -> str:
    """A horizontal bar chart of value/total per label, as inline SVG markup.

    Each bar's length is its share of its own total (coverage: visited households of a grid);
    the text after it gives the numbers and the percentage.
    """
    top = 8
    height = top + row * max(1, len(bars)) + 8
    bar_area = width - label_width - 150
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
             f'width="100%" aria-label="{escape(title)}">', f"<title>{escape(title)}</title>"]
    for i, (label, value, total) in enumerate(bars):
        y = top + i * row
        share = (value / total) if total else 0.0
        length = round(bar_area * min(1.0, share))
        colour = "#2e7d32" if share >= 0.8 else ("#f9a825" if share >= 0.5 else "#c62828")
        parts.append(f'<text x="{label_width - 8}" y="{y + row * 0.62:.1f}" text-anchor="end" class="chart-label">'
                     f"{escape(label)}</text>")
        parts.append(f'<rect x="{label_width}" y="{y + 5}" width="{bar_area}" height="{row - 10}" fill="#eceff1" rx="3"/>')
        parts.append(f'<rect x="{label_width}" y="{y + 5}" width="{length}" height="{row - 10}" fill="{colour}" rx="3"/>')
        text = value_text.format(value=value, total=total) + f"  {share:.0%}"
        parts.append(f'<text x="{label_width + bar_area + 8}" y="{y + row * 0.62:.1f}" class="chart-value">'
                     f"{escape(text)}</text>")
    parts.append("</svg>")
    return "".join(parts)
