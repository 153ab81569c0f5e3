"""The columns that identify a run in every tidy CSV, spelled once.

The planner puts them in the specs it writes, the stages write them into their CSVs, and the
figures and captions read them back; all import them from here (no torch, no pandas).
"""

from __future__ import annotations

#: One run of any protocol, in the order every per-run CSV starts with.
RUN_COLUMNS = ("dataset", "arch", "protocol", "init", "init_name", "source", "k", "fraction", "seed")


def run_columns(run_spec: dict) -> dict:
    """The columns that identify a run in every tidy CSV, from its spec (``Study.run_spec``)."""
    init = run_spec["init"]
    return {
        "dataset": run_spec["dataset"],
        "arch": run_spec["arch"],
        "protocol": run_spec.get("protocol", "finetune"),
        "init": init["label"],
        "init_name": init["name"],
        "source": init["source"] or "+".join(init.get("sources") or []),
        "k": "" if init["k"] is None else init["k"],
        "fraction": float(run_spec["fraction"]),
        "seed": int(run_spec["seed"]),
    }
