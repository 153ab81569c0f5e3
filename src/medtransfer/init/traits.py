"""What an init declares beside its plan: the traits the planner and :func:`~medtransfer.init.apply` check.

Torch-free, so the study planner (imported by the Snakefile) reads them without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

#: An init's plan: (body block names from the input, k) -> one origin per body block
#: ("source", "stats", "random", "gabor"); the head's origin follows from ``source``.
InitPlan = Callable[[list[str], "int | None"], list[str]]

#: Whether an init reads a weight source: always, if one is given, or never.
SourceUse = Literal["required", "optional", "none"]


@dataclass(frozen=True)
class Init:
    """One initialisation: its config name, plan and traits; calling it runs the plan.

    ``order`` places the init where inits are listed (the planner's error messages, the config
    docs): RI 1, WT 2, ST 3, WT-ST 4, WT-RI 5, Gabor 6; a new init takes the next free number.
    ``options`` are the keyword options :func:`~medtransfer.init.apply` takes besides ``k``
    (also config keys of the init's entry in ``study.inits``).
    """

    name: str
    plan: InitPlan
    order: int
    source: SourceUse = "none"
    takes_k: bool = False
    options: tuple[str, ...] = ()

    def __call__(self, blocks: list[str], k: int | None) -> list[str]:
        return self.plan(blocks, k)

    @property
    def needs_source(self) -> bool:
        return self.source == "required"
