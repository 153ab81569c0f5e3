"""RI: every block random (the architecture's default init, drawn under the run's seed)."""

from __future__ import annotations

from medtransfer.init.traits import Init


def plan(blocks: list[str], k: int | None) -> list[str]:
    return ["random"] * len(blocks)


INIT = Init("RI", plan, order=1)
