"""What every caption module shares: the :class:`Caption` record and its decorator, the
reStructuredText formatting of numbers, and the grouping of a tidy frame into a figure's panels.

Conventions in the text: means ± sample sd (ddof=1) over seeds to 3 decimals, differences signed
(``+0.067``), fractions as percentages of the training data, init labels as literals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtransfer.figures.style import sort_inits
from medtransfer.report import rst

Found = Callable[[pd.DataFrame, "str | None"], list[str]]


@dataclass(frozen=True)
class Caption:
    """A figure's caption: the columns it reads, two fixed paragraphs and the findings, a
    function of the figure's tidy CSV (read with ``columns`` checked) and the measure it draws
    -> one bullet line per panel."""

    columns: tuple[str, ...]
    shows: str
    paper: str
    found: Found


def caption(*, columns: Sequence[str], shows: str, paper: str) -> Callable[[Found], Caption]:
    """Make ``found`` (frame, measure) -> bullet lines a :class:`Caption` (name it in the figure's
    catalog row, :mod:`medtransfer.figures.catalog`)."""

    def make(found: Found) -> Caption:
        return Caption(tuple(columns), " ".join(shows.split()), " ".join(paper.split()), found)

    return make


def lit(text: object) -> str:
    """An init label, dataset name, ... from a CSV as an rst inline literal that renders as its
    characters (see :func:`medtransfer.report.rst.literal`)."""
    return rst.literal(text)


def num(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def signed(value: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.{digits}f}"


def mean_sd(values: Sequence[float] | np.ndarray, digits: int = 3) -> str:
    """'0.649 ± 0.020' over seeds (sample sd); one value has no spread: '0.649 (1 seed)'."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def pct(fraction: float) -> str:
    """'10 %' for 0.1; '5,000 images' for an absolute training size (> 1)."""
    if float(fraction) > 1:
        return f"{int(float(fraction)):,} images"
    return f"{100 * float(fraction):g} %"


def seeds_text(counts: Iterable[int]) -> str:
    """'2 seeds' or '2–3 seeds' for the number of seeds per cell."""
    counts = sorted({int(c) for c in counts})
    if not counts:
        return "no seeds"
    if len(counts) == 1:
        return f"{counts[0]} seed" + ("s" if counts[0] != 1 else "")
    return f"{counts[0]}–{counts[-1]} seeds"


def panel(dataset: str, arch: str, fraction: float | None = None) -> str:
    """'**lesions · cbr_tiny · 20 % data**', the figure's panel title in bold."""
    parts = [str(dataset), str(arch)] + ([f"{pct(fraction)} data"] if fraction is not None else [])
    return "**" + " · ".join(parts) + "**"


def bullets(lines: Sequence[str]) -> str:
    """An rst bullet list; a line starting with two spaces is a sub-bullet of the one before."""
    out: list[str] = []
    for line in lines:
        if line.startswith("  "):
            if out and not out[-1].startswith("  - "):
                out.append("")  # rst wants a blank line before a nested list
            out.append("  - " + line.strip())
        else:
            out += ["", "- " + line]
    return "\n".join(out).strip() + "\n"


def panel_groups(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key values, rows) per group: in the order the keys other than ``fraction`` first appear
    (the order of the study config), fractions ascending within them."""
    if frame.empty:
        return []
    keys = list(keys)
    others = [i for i, key in enumerate(keys) if key != "fraction"]
    groups = {key if isinstance(key, tuple) else (key,): rows
              for key, rows in frame.groupby(keys, sort=False, dropna=False)}  # fmt: skip
    first = {}
    for key in groups:
        first.setdefault(tuple(key[i] for i in others), len(first))
    fraction = keys.index("fraction") if "fraction" in keys else None

    def order(key: tuple) -> tuple:
        return (first[tuple(key[i] for i in others)], float(key[fraction]) if fraction is not None else 0.0)

    return [(key, groups[key]) for key in sorted(groups, key=order)]


def baseline_init(inits: Sequence[str]) -> str:
    """What the other inits are compared with: RI when the study has it."""
    return "RI" if "RI" in inits else sort_inits(inits)[0]
