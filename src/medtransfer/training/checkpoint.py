"""Resumable training state: saved atomically, restored exactly.

A checkpoint holds everything that decides what the next batch does: model and optimizer
state, scheduler, the position (epoch, batch), the RNG states, the history so far and the best
weights. Data order and augmentation are pure functions of (seed, epoch) in the loader, so with
these restored a resumed run takes exactly the steps an uninterrupted run takes (on CPU).
The checkpoint records the hash of the job spec; a checkpoint of another spec is ignored.
A job of several processes (DDP) is written by rank 0 with every process's RNG states under
``rng_ranks`` (each process has streams of its own); everything else is the same on every rank.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtransfer.atomic import torch_save

FORMAT_VERSION = 2  # 2: the objective's state (best weights, SSL teacher...) under "objective"


def rng_states() -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    torch_save({"format_version": FORMAT_VERSION, "rng": rng_states(), **state}, path)


def load_checkpoint(path: str | Path, spec_hash: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, is readable and belongs to ``spec_hash``.

    An unreadable file (a kill during a write on a filesystem without atomic rename, a disk
    that filled up) or one from another spec is set aside rather than trusted.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - any unreadable checkpoint means "start over"
        path.rename(path.with_suffix(".corrupt"))
        return None
    if state.get("format_version") != FORMAT_VERSION or state.get("spec_hash") != spec_hash:
        return None
    return state
