"""Label tables of downloaded datasets (CheXpert, APTOS, ISIC, CBIS-DDSM): read them with checks.

Every problem ends in a DataError naming the file, and the row where there is one (row 1 is the
header, so the first data row is row 2, as a spreadsheet shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtransfer.data.formats import md5_of_listing
from medtransfer.errors import DataError


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


def row_names(path: str | Path, count: int) -> list[str]:
    """``"{path} row {i + 2}"`` for each data row (the header is row 1)."""
    return [f"{path} row {i + 2}" for i in range(count)]


def listing_checksum(root: str | Path, paths: Sequence[Path], rows: Sequence[str]) -> str:
    """md5 of the image files' names and sizes (:func:`formats.md5_of_listing`) after checking each
    exists, so that a missing file stops before hours of conversion, naming its row."""
    for path, row in zip(paths, rows):
        if not path.is_file():
            raise DataError(f"{row}: image {path} does not exist; is the download complete and 'root' its folder?")
    return md5_of_listing(root, paths)
