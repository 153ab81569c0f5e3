"""Strings from a config or a CSV, made inert in reStructuredText.

The report's front page and captions are rst that Snakemake renders to HTML. A study name,
dataset name or CSV cell is data, never markup: a newline in it would start a new block (where
``.. raw:: html`` or ``.. include::`` are live), and ``*``, backticks, ``|`` or ``:role:`` would be
read as inline markup. :func:`text` backslash-escapes every punctuation character (rst reads
``\\x`` as a literal ``x``) and shows control characters as their escapes (``\\n``), so the
string renders as the characters it holds; :func:`literal` does the same for inline literals,
which cannot hold backslash escapes. The HTML writer then escapes ``<`` and ``&`` as usual.
No imports beyond the standard library: the Snakefile's report code reads this module.
"""

from __future__ import annotations

import re
import string

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")


def visible_controls(value: object) -> str:
    """``value`` as a string on one line: control characters shown as Python escapes."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def text(value: object) -> str:
    """``value`` as plain rst text that renders exactly as its characters."""
    return _PUNCTUATION.sub(r"\\\1", visible_controls(value))


def literal(value: object) -> str:
    """``value`` as an rst inline literal (monospace), or as escaped text where a literal cannot
    hold it (backticks, leading or trailing space, an empty string)."""
    shown = visible_controls(value)
    if not shown or "`" in shown or shown != shown.strip():
        return text(value)
    return f"``{shown}``"


def has_control_characters(value: str) -> bool:
    """Whether ``value`` holds a character that would break a line or a block in rst."""
    return bool(_CONTROL.search(value))
