"""Job specs as data: the stable hash that ties a job's files to the spec that made them.

The planner writes a spec (a JSON-able dict) for every job and the job's stage reads it; both
sides hash it with :func:`spec_hash` (checkpoint resume, provenance, feature caches), so this
module depends on nothing else in the package.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def spec_hash(spec: Any) -> str:
    """A short, stable hash of a JSON-able spec (key order does not matter): 16 hex digits."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
