"""Gabor: random, with the first conv's weight replaced by Gabor filters.

A source, if given, sets the filter parameter ranges and scale (fitted to its first conv).
"""

from __future__ import annotations

from medtransfer.init.traits import Init


def plan(blocks: list[str], k: int | None) -> list[str]:
    return ["gabor"] + ["random"] * (len(blocks) - 1)


INIT = Init("Gabor", plan, order=6, source="optional")
