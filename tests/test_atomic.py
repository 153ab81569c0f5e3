"""Durable atomic writes: the data reaches the disk before the rename makes it the output, the
rename reaches it after; the process umask is never changed, even for a moment; and temp files
that killed writers left beside an output are swept when it is written again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtransfer import atomic
from medtransfer.atomic import torch_save, write_json, write_text


def test_the_file_is_synced_before_the_rename_and_its_folder_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "metrics.json"
    write_json(target, {"auc": 0.9})
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1].parent == tmp_path and events[0][1].name.startswith(".metrics.json.")
    assert events[1][1] == target and events[2][1] == tmp_path


def test_the_umask_is_never_changed_and_outputs_get_the_usual_permissions(tmp_path, monkeypatch):
    def no_umask(mask):
        raise AssertionError("os.umask changes the process umask (for every thread) while it is read")

    monkeypatch.setattr(os, "umask", no_umask)
    write_text(tmp_path / "a.txt", "x")
    torch_save({"x": 1}, tmp_path / "b.pt")
    for name in ("a.txt", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~atomic.UMASK


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temp_files_of_gone_writers_are_swept_when_the_target_is_written_again(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".metrics.json.{host}.{_dead_pid()}.k1ll3d00.tmp"
    alive = tmp_path / f".metrics.json.{host}.{os.getpid()}.wr1t1ng0.tmp"  # a writer still at work
    old = tmp_path / ".metrics.json.a8b7c6d5.tmp"  # another host's, or an older version's, days old
    other = tmp_path / f".history.csv.{host}.{_dead_pid()}.k1ll3d00.tmp"  # another target's
    for path in (dead, alive, old, other):
        path.write_text("partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    write_json(tmp_path / "metrics.json", {"auc": 0.9})
    assert not dead.exists() and not old.exists()
    assert alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "metrics.json"])


def test_a_failed_write_leaves_neither_output_nor_temp(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
