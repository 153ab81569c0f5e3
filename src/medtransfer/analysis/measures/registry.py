"""The similarity-measure registry: each measure's name, function and traits, filled by decorators.

Torch-free: the planner reads names and traits from here without importing the numerics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medtransfer.registry import Registry

#: Measure families, in the order they are listed, and how each reads conv maps (n, C, H, W).
FAMILIES: dict[str, str] = {
    "cka": "kernel alignment over examples, each flattened to (n, C*H*W)",
    "cca": "canonical correlations with channels as neurons and (example, h, w) as data points, (n*H*W, C)",
}


@dataclass(frozen=True)
class MeasureTraits:
    """What the planner and the analyses need to know about a measure without running it.

    ``family``: a key of ``FAMILIES``; the CCA family is what ``analysis.cca_subsample`` applies to.
    """

    family: str


class MeasureRegistry(Registry):
    """Name -> function ``(x, y) -> float``, and name -> :class:`MeasureTraits`."""

    def __init__(self) -> None:
        super().__init__("similarity measure")
        self._traits: dict[str, MeasureTraits] = {}

    def register(self, name: str, *, family: str) -> Callable[[Callable], Callable]:  # type: ignore[override]
        """Decorator: register the function as measure ``name`` of ``family``."""
        if family not in FAMILIES:
            raise ValueError(f"similarity measure {name!r}: unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
        add = super().register(name)

        def decorator(function: Callable) -> Callable:
            add(function)
            self._traits[name] = MeasureTraits(family)
            return function

        return decorator

    def traits(self, name: str, *, key: str | None = None) -> MeasureTraits:
        """The traits of ``name``; an unknown name raises like :meth:`get`."""
        self.get(name, key=key)
        return self._traits[name]

    def listed(self, family: str | None = None) -> tuple[str, ...]:
        """Names family by family (``FAMILIES`` order), each family in registration order, e.g.
        for the allowed names of an error message; only ``family``'s when given."""
        order = list(FAMILIES)
        names = sorted(self._traits, key=lambda name: order.index(self._traits[name].family))  # stable
        return tuple(name for name in names if family is None or self._traits[name].family == family)


MEASURES = MeasureRegistry()
