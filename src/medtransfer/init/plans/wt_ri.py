"""WT-RI: blocks[:k] copied from the source, the rest random, new head.

Option ``slim``: the blocks from k on are built with ``slim`` × channels (the model must be
created with ``create(..., **create_kwargs("WT-RI", k=k, slim=factor))``).
"""

from __future__ import annotations

from medtransfer.init.traits import Init


def plan(blocks: list[str], k: int | None) -> list[str]:
    assert k is not None
    return ["source" if i < k else "random" for i in range(len(blocks))]


INIT = Init("WT-RI", plan, order=5, source="required", takes_k=True, options=("slim",))
