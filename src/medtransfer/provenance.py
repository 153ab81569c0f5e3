"""What produced a result: code version, packages, machine, device, seed, config hash, and the
sha256 of the weight files a run started from.

Every JSON output of the workflow embeds ``provenance(...)`` so that a number can be traced to
a config, a seed and a code version (docs/DESIGN.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGES = ("medtransfer", "torch", "torchvision", "timm", "numpy", "h5py", "scikit-learn", "pandas")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the code that runs (``+dirty`` when the tree has changes), or 'unknown'."""
    where = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(*, spec_hash: str, seed: int | None = None, device: str | None = None,
               wall_seconds: float | None = None, commit: str | None = None, world_size: int = 1,
               backend: str | None = None) -> dict:
    """``commit``: the code version read when the job started (``git_commit()`` then); a long
    run must not take the commit of a checkout that moved on while it trained. ``world_size``
    and ``backend``: the processes that trained the job together (torchrun; 1 and None alone)."""
    return {
        "config_hash": spec_hash,
        "seed": seed,
        "git_commit": commit or git_commit(),
        "packages": package_versions(),
        "host": socket.gethostname(),
        "device": device,
        "world_size": int(world_size),
        "backend": backend,
        "wall_seconds": wall_seconds,
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def file_digest(path: str | Path, algorithm: str = "sha256", chunk_bytes: int = 1 << 20) -> str:
    """The ``algorithm`` hex digest of a file's bytes, read in chunks: weight files can be gigabytes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file (hex): the provenance of every weight file a run starts from."""
    return file_digest(path, "sha256")
