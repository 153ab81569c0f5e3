"""Deprecated: the planner is the :mod:`medtransfer.study` package now; import from there.

For one release this module re-exports the package's public names (``medtransfer.study.__all__``)
and the three it used to define before they got modules of their own (:func:`medtransfer.specs.spec_hash`,
:data:`medtransfer.columns.RUN_COLUMNS`, :func:`medtransfer.columns.run_columns`); then it goes.
"""

from __future__ import annotations

from medtransfer import study as _study
from medtransfer.columns import RUN_COLUMNS, run_columns
from medtransfer.specs import spec_hash
from medtransfer.study import *  # exactly the names in medtransfer.study.__all__

__all__ = _study.__all__ + ["RUN_COLUMNS", "run_columns", "spec_hash"]
