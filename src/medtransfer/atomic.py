"""Atomic, durable file writes: write to a temp file in the target folder, sync it, ``os.replace``.

A killed job therefore never leaves a half-written output that looks finished, and a power cut
after the rename never leaves an output that is empty on disk. Temp files that killed writers
left beside a target are swept when the target is written again.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

#: A temp file that no one has touched for this long is a dead writer's, whoever wrote it.
STALE_AFTER_S = 24 * 3600.0


def _process_umask() -> int:
    # /proc tells without changing it; os.umask can only read by setting, which for a moment
    # applies to every thread's new files, so it is done at most once, at import
    with suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process umask, read once: outputs get ``0o666 & ~UMASK`` like any file the job creates.
UMASK = _process_umask()
_HOST = socket.gethostname()


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is synced and renamed to ``path`` (and the
    folder synced), on error removed. The temp name ``.{name}.{host}.{pid}.{random}{suffix}``
    says whose it is, so that a later write of ``path`` can sweep those of writers that died."""
    path = Path(path)
    suffix = suffix or ".tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(path, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; outputs should get the usual permissions (shared result folders)
        os.chmod(tmp_path, 0o666 & ~UMASK)
        _fsync(tmp_path)  # the data on disk before the name points at it
        os.replace(tmp_path, path)
        _fsync(path.parent, directory=True)  # and the rename itself
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as error:
        # some filesystems cannot sync a folder; the file itself is synced already
        if not (directory and error.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def _sweep_stale_temps(path: Path, suffix: str) -> None:
    """Remove the temp files of ``path`` whose writer is gone: a process of this host that no longer
    runs, or (another host's, an older naming's) a file untouched for :data:`STALE_AFTER_S`."""
    prefix = f".{path.name}."
    with suppress(OSError):
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]
        for temp in candidates:
            owner = temp.name[len(prefix):-len(suffix)].rsplit(".", 2)  # host, pid, random
            ours = len(owner) == 3 and owner[0] == _HOST and owner[1].isdigit()
            with suppress(OSError):  # gone already, or not ours to remove: leave it
                if (not _running(int(owner[1])) if ours else
                        time.time() - temp.stat().st_mtime > STALE_AFTER_S):
                    temp.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
