"""Every initialisation with its traits, found by importing each module of :mod:`medtransfer.init.plans`.

Torch-free: the study planner (imported by the Snakefile) reads it. Public API::

    INITS: Registry[Init]          # name -> Init (plan + traits); names() sorted, as every registry
    LISTED: tuple[str, ...]        # names in listing order (Init.order): RI, WT, ST, WT-ST, WT-RI, Gabor
    needs_source(name) -> bool     # the init refuses to run without a weight source
    takes_k(name) -> bool          # the init needs k, the number of blocks taken from the source
    options(name) -> tuple         # apply() keyword options besides k, e.g. ("slim",) for WT-RI

    # the shapes the planner checks config entries against (listing order):
    INITS_WITH_SOURCE              # ("WT", "ST", "WT-ST", "WT-RI")
    INITS_WITHOUT_SOURCE           # ("RI", "Gabor"): a config entry names no source
    INITS_WITH_K                   # ("WT-ST", "WT-RI")
    INIT_OPTIONS                   # ("k", "slim", "architectures"): keys of an init's config entry

Lookups of an unknown name raise :class:`medtransfer.registry.UnknownNameError` listing the
allowed names.
"""

from __future__ import annotations

import importlib
import pkgutil

from medtransfer.init import plans
from medtransfer.init.traits import Init
from medtransfer.registry import Registry


def _discover() -> Registry[Init]:
    """Every module of :mod:`medtransfer.init.plans`, registered by its ``INIT``."""
    found: Registry[Init] = Registry("initialisation")
    for module in pkgutil.iter_modules(plans.__path__):
        init = importlib.import_module(f"{plans.__name__}.{module.name}").INIT
        found.register(init.name)(init)
    return found


INITS: Registry[Init] = _discover()

LISTED: tuple[str, ...] = tuple(sorted(INITS, key=lambda name: INITS.get(name).order))
if len({INITS.get(name).order for name in LISTED}) != len(LISTED):
    raise ValueError(f"two inits share a listing order: {[(n, INITS.get(n).order) for n in LISTED]}")


def needs_source(name: str) -> bool:
    return INITS.get(name).needs_source


def reads_source(name: str) -> bool:
    """Whether a config entry may name a source for ``name`` (required or optional)."""
    return INITS.get(name).source != "none"


def takes_k(name: str) -> bool:
    return INITS.get(name).takes_k


def options(name: str) -> tuple[str, ...]:
    return INITS.get(name).options


INITS_WITH_SOURCE: tuple[str, ...] = tuple(name for name in LISTED if needs_source(name))
# Gabor is among these and still takes a source when its entry names one ({Gabor: natural}:
# the filter ranges are fitted to the source's first conv): see reads_source.
INITS_WITHOUT_SOURCE: tuple[str, ...] = tuple(name for name in LISTED if not needs_source(name))
INITS_WITH_K: tuple[str, ...] = tuple(name for name in LISTED if takes_k(name))
# Every init's config entry may restrict the architectures it runs on (the planner's key).
INIT_OPTIONS: tuple[str, ...] = (
    ("k",) + tuple(dict.fromkeys(option for name in LISTED for option in options(name))) + ("architectures",)
)

__all__ = ["INITS", "INITS_WITHOUT_SOURCE", "INITS_WITH_K", "INITS_WITH_SOURCE", "INIT_OPTIONS", "LISTED",
           "needs_source", "reads_source", "options", "takes_k"]
