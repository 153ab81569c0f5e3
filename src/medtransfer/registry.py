"""A small name -> callable registry, filled by decorators (as timm's ``register_model``).

Dataset formats, initialisations and similarity measures are registries: adding one is adding
one decorated function, and the config's allowed names come from the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Callable)


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the allowed names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to callables. ``kind`` is used in error messages ("dataset format", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return decorator

    def get(self, name: str, *, key: str | None = None) -> T:
        """Return the callable for ``name``; ``key`` names the config key for the error message."""
        try:
            return self._items[name]
        except KeyError:
            where = f" (config key {key})" if key else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{where}; allowed: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
