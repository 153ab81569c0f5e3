"""WT-ST: blocks[:k] copied from the source, the rest redrawn from its statistics, new head."""

from __future__ import annotations

from medtransfer.init.traits import Init


def plan(blocks: list[str], k: int | None) -> list[str]:
    assert k is not None
    return ["source" if i < k else "stats" for i in range(len(blocks))]


INIT = Init("WT-ST", plan, order=4, source="required", takes_k=True)
