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

import logging
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtransfer.atomic import torch_save
from medtransfer.models.weights import CHECKPOINT_GLOBALS

log = logging.getLogger(__name__)

# 2: the objective's state (best weights, SSL teacher...) under "objective"
# 3: numpy's RNG state as a tensor and plain values, so the file reads with weights_only
FORMAT_VERSION = 3


def rng_states() -> dict[str, Any]:
    """Every RNG stream a training step draws from, as tensors and plain values (what torch's
    weights_only loader reads back)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state((numpy["bit_generator"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    torch_save({"format_version": FORMAT_VERSION, "rng": rng_states(), **state}, path)


def load_checkpoint(path: str | Path, spec_hash: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists and belongs to ``spec_hash`` (else None, logged).

    A corrupt file (a kill during a write on a filesystem without atomic rename, a disk that
    filled up, a pickle that needs more than tensors and plain values) is set aside as
    ``.corrupt``, with the reason in the job log, and the job starts over. Any other error
    reading it (an ``OSError`` of a network filesystem on a whole file, a ``MemoryError``)
    propagates: the job fails and its retry resumes, rather than dropping the work done so far.
    Under DDP rank 0 calls this first and the other ranks after it (``training.loop``), so only
    rank 0 ever sets a file aside.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):  # numpy scalars in the history
            state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - sorted below: corrupt files only are set aside
        why = _damage(path) or (f"it holds more than tensors and plain values ({error})"
                                if isinstance(error, pickle.UnpicklingError) else None)
        if why is None:
            raise  # the file is whole: a read error of the moment, which the job's retry gets past
        path.rename(path.with_suffix(".corrupt"))
        log.warning("resume file %s is corrupt: %s; set aside as %s, training starts at epoch 0",
                    path, why, path.with_suffix(".corrupt").name)
        return None
    if state.get("format_version") != FORMAT_VERSION or state.get("spec_hash") != spec_hash:
        log.warning("resume file %s is of another spec or format (format %s, spec %s; this job: format %s, "
                    "spec %s); training starts at epoch 0 and overwrites it", path, state.get("format_version"),
                    state.get("spec_hash"), FORMAT_VERSION, spec_hash)
        return None
    return state


def _damage(path: Path) -> str | None:
    """Why ``path`` is not a whole checkpoint archive (torch.save writes a zip), or None if it is.
    An OSError reading it propagates: that says nothing about the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as error:
        return f"not a whole checkpoint archive ({error or type(error).__name__})"
    return f"its member {bad} fails its checksum" if bad else None
