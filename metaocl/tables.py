"""The one plain-text table of the command line (trial tables, outcome tables, data summaries).

    >>> print(text_table(["trial", "seed"], [["s0", "0"], ["s10", "10"]], align="<>"))
    trial  seed
    s0        0
    s10      10
"""

from __future__ import annotations

from typing import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """Columns two spaces apart, each as wide as its widest cell; ``align`` gives ``<`` or ``>`` per
    column (default left). The last column is not padded and trailing spaces are dropped, so a long
    free-text last column (an error message) does not widen anything."""
    table = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    n = len(table[0])
    widths = [max(len(r[i]) for r in table) for i in range(n)]
    lines = []
    for r in table:
        cells = []
        for i, cell in enumerate(r):
            right = i < len(align) and align[i] == ">"
            if right:
                cells.append(cell.rjust(widths[i]))
            elif i == n - 1:
                cells.append(cell)
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
