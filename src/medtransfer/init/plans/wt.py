"""WT: every block copied from the source (weight transfer), with a new random head."""

from __future__ import annotations

from medtransfer.init.traits import Init


def plan(blocks: list[str], k: int | None) -> list[str]:
    return ["source"] * len(blocks)


INIT = Init("WT", plan, order=2, source="required")
