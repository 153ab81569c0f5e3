"""What the format readers share: the decoding and split keys of an entry, the task of
single-label data, checksums of source files, label tables read with checks, and image paths
from them kept inside the dataset's folder.

Every problem ends in a ConfigError naming the config key, or a DataError naming the file and the
row where there is one (row 1 of a CSV is the header, so the first data row is row 2, as a
spreadsheet shows it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from medtransfer.data.images import PIL_FILTERS
from medtransfer.data.raw import require
from medtransfer.errors import ConfigError, DataError
from medtransfer.provenance import file_digest

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


# --- entry keys ------------------------------------------------------------------------------------

def check_decoding_keys(name: str, entry: Mapping[str, Any]) -> None:
    """The decoding keys of an entry of images read from files (``ConfigError``), before any image
    is read: ``size`` (required), ``channels`` (1 or 3), ``resize`` (a PIL filter)."""
    int(require(entry, "size", name))
    if int(entry.get("channels", 3)) not in (1, 3):
        raise ConfigError(f"datasets.{name}.channels is {entry['channels']}; allowed: 1, 3")
    resize = entry.get("resize", "bilinear")
    if resize not in PIL_FILTERS:
        raise ConfigError(f"datasets.{name}.resize is {resize!r}; allowed: {', '.join(PIL_FILTERS)}")


def decoding_keys(entry: Mapping[str, Any], name: str) -> tuple[int, int, str, int | None]:
    """``(size, channels, resize, workers)`` of an entry after :func:`check_decoding_keys`;
    ``workers`` None = :func:`~medtransfer.data.images.default_decode_threads`."""
    check_decoding_keys(name, entry)
    workers = entry.get("workers")
    size, channels, resize = int(entry["size"]), int(entry.get("channels", 3)), entry.get("resize", "bilinear")
    return size, channels, resize, int(workers) if workers else None


def split_keys(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`~medtransfer.data.splits.complete_splits` (and
    :func:`~medtransfer.data.splits.split_source_train`) an entry gives: fractions and seed."""
    return {"val_fraction": float(entry.get("val_fraction", 0.1)),
            "test_fraction": float(entry.get("test_fraction", 0.2)),
            "seed": int(entry.get("split_seed", 0))}


def task_for(num_classes: int, override: str | None, where: str) -> str:
    """'binary' for 2 classes, else 'multiclass', unless the config overrides it."""
    if override is None:
        return "binary" if num_classes == 2 else "multiclass"
    if override not in ("binary", "multiclass", "ordinal"):
        raise ConfigError(f"{where}.task is {override!r}; allowed for single-label data: binary, multiclass, ordinal")
    if override == "binary" and num_classes != 2:
        raise ConfigError(f"{where}.task is 'binary' but the data has {num_classes} classes")
    return override


# --- checksums -------------------------------------------------------------------------------------

def md5_file(path: str | Path) -> str:
    """md5 hex digest of a file (a dataset's fingerprint, not a security check)."""
    return file_digest(path, "md5")


def md5_of_listing(root: str | Path, files: Iterable[str | Path]) -> str:
    """Digest of a file list: each file's path relative to ``root`` and its size, sorted.

    Cheap (no file is read), independent of where ``root`` lives, and changes when a file is
    added, removed, renamed or resized. ``files`` are paths as opened (absolute or relative to
    the working directory).
    """
    base = Path(root).resolve()
    entries = sorted(
        f"{Path(os.path.relpath(Path(f).resolve(), base)).as_posix()}\t{Path(f).stat().st_size}\n" for f in files
    )
    digest = hashlib.md5()
    for line in entries:
        digest.update(line.encode())
    return digest.hexdigest()


# --- label tables ----------------------------------------------------------------------------------

def read_table(path: str | Path, columns: Sequence[str], *, hint: str = "", dtype: Any = str) -> Any:
    """A CSV file as a pandas DataFrame of strings (empty cell = NaN) with ``columns`` present.

    ``hint`` is appended to the message when the file is missing (e.g. where to download it).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist" + (f"; {hint}" if hint else ""))
    try:
        table = pd.read_csv(path, dtype=dtype, keep_default_na=True, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: column(s) {', '.join(map(repr, missing))} missing; the file has "
                        f"{', '.join(map(repr, table.columns))}. Is it the file as downloaded?")
    if table.empty:
        raise DataError(f"{path}: no rows")
    return table


def grades(values: Sequence[Any], rows: Sequence[str], column: str, count: int, what: str) -> np.ndarray:
    """A CSV column of integer grades 0..count-1 (``2``, ``2.0``) -> int64 [N]; DataError naming the
    row of any other value (``what`` says what the grades are, e.g. ``"APTOS grades"``)."""
    out = np.empty(len(values), np.int64)
    for i, value in enumerate(values):
        try:
            grade = float(value)
        except (TypeError, ValueError):
            grade = np.nan
        if not grade.is_integer() or not 0 <= grade < count:
            raise DataError(f"{rows[i]}: {column!r} is {value!r}; {what} are {', '.join(map(str, range(count)))}")
        out[i] = int(grade)
    return out


def row_names(path: str | Path, count: int) -> list[str]:
    """``"{path} row {i + 2}"`` for each data row (the header is row 1)."""
    return [f"{path} row {i + 2}" for i in range(count)]


def path_inside(folder: Path, relative: str | PurePath, where: str, value: Any = None) -> Path:
    """``folder / relative`` for an image path a downloaded dataset's CSV gives, or a DataError
    when it names no file inside ``folder``: an absolute path, or ``..`` leading out of it.

    A release lists its images relative to its own folder, so such a value is an edited or
    foreign CSV, and following it would let a shared CSV make the reader open (or, for
    CBIS-DDSM, search) files anywhere. The test is on the names (``os.path.normpath``), not
    the resolved files: a symlink inside ``folder`` is the user's own layout and is followed.
    ``where`` names the dataset, CSV row and column; ``value`` is the cell as the CSV holds it
    (default ``relative``). Returns the path with ``.`` and inner ``..`` normalised away.
    """
    text = os.fspath(relative)
    normal = os.path.normpath(text) if text else os.curdir
    if os.path.isabs(text) or normal == os.curdir or normal == os.pardir or normal.startswith(os.pardir + os.sep):
        shown = text if value is None else value
        raise DataError(f"{where} is {shown!r}, which names no file inside {folder}: the dataset's image paths "
                        f"are relative to that folder, without '..'; restore the CSV as downloaded (or fix the row)")
    return folder / normal


def listing_checksum(root: str | Path, paths: Sequence[Path], rows: Sequence[str]) -> str:
    """md5 of the image files' names and sizes (:func:`md5_of_listing`) after checking each
    exists, so that a missing file stops before hours of conversion, naming its row."""
    for path, row in zip(paths, rows):
        if not path.is_file():
            raise DataError(f"{row}: image {path} does not exist; is the download complete and 'root' its folder?")
    return md5_of_listing(root, paths)
