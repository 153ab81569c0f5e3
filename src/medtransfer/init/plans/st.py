"""ST: every block redrawn from the source tensors' mean and std (stats transfer), new head."""

from __future__ import annotations

from medtransfer.init.traits import Init


def plan(blocks: list[str], k: int | None) -> list[str]:
    return ["stats"] * len(blocks)


INIT = Init("ST", plan, order=3, source="required")
