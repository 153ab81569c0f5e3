"""Reading the tidy result CSVs that the figures and tables are drawn from.

Every reader checks the columns it needs (from :mod:`medtransfer.columns`, where the stages that
write the CSVs take them too), so a CSV of the wrong kind or from an older version stops with a
message naming the file and the missing columns instead of drawing a wrong figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from medtransfer.errors import DataError

# One run's identity; init already spells out init_name, source and k.
RUN_KEY: tuple[str, ...] = ("dataset", "arch", "init", "fraction", "seed")

_TEXT_COLUMNS = (
    "dataset", "arch", "protocol", "init", "init_name", "source", "task", "block", "measure", "pair", "kind",
    "init_a", "init_b", "block_a", "block_b", "config_hash", "git_commit", "precision",
)  # fmt: skip
# the cross-run analyses' CSVs (medtransfer.figures.domain)
_TEXT_COLUMNS += ("run_a", "run_b", "split", "note", "features", "source_dataset", "metric", "state")
# the feature-reuse CSVs (medtransfer.figures.reuse)
_TEXT_COLUMNS += ("run", "state", "metric", "split", "layer")
_INTEGER_COLUMNS = ("seed", "fold", "seed_a", "seed_b", "epoch", "block_index", "block_a_index", "block_b_index")
_INTEGER_COLUMNS += ("n_params", "filter", "channel", "row", "col")


def read_results(path: str | Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a tidy result CSV and check it has the ``required`` columns.

    A file of zero bytes or with a header only gives an empty frame with (at least) the required
    columns, so callers draw a "no data" figure. Text columns stay text (an empty ``source`` is
    ""), numeric columns are numeric (an empty ``k`` is NaN).

    Raises:
        DataError: the file is missing, lacks a required column, or has a non-numeric value in
            a numeric column.
    """
    path = Path(path)
    required = list(required)
    if not path.is_file():
        raise DataError(f"{path}: result file not found; run the stage that writes it first")
    try:
        frame = pd.read_csv(
            path, dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False, na_values=[""]
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in required})
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}. "
            "Regenerate it with the current medtransfer, or pass the right CSV."
        )
    for column in frame.columns:
        if column in _TEXT_COLUMNS:
            frame[column] = frame[column].fillna("").astype(str)
        elif not pd.api.types.is_numeric_dtype(frame[column]):
            try:
                frame[column] = pd.to_numeric(frame[column])
            except (TypeError, ValueError) as error:
                raise DataError(f"{path}: column {column} must be numeric ({error})") from None
    for column in _INTEGER_COLUMNS:
        if column in frame.columns and len(frame) and frame[column].notna().all():
            frame[column] = frame[column].astype(int)
    return frame


def with_protocol(frame: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv rows with a ``protocol`` column: runs recorded without one (metrics.csv from
    before protocols existed) are fine-tuning runs."""
    if "protocol" not in frame.columns:
        return frame.assign(protocol="finetune")
    return frame.assign(protocol=frame["protocol"].replace("", "finetune"))


def check_unique(frame: pd.DataFrame, keys: Sequence[str], path: str | Path) -> None:
    """Raise DataError when two rows share ``keys`` (a run counted twice would bias the means); a
    cross-validated study's ``fold`` column is part of every run key."""
    keys = list(keys) + (["fold"] if "fold" in frame.columns and "fold" not in keys else [])
    duplicated = frame.duplicated(keys, keep=False)
    if duplicated.any():
        example = frame.loc[duplicated, list(keys)].iloc[0].to_dict()
        raise DataError(
            f"{path}: {int(duplicated.sum())} rows repeat the same {', '.join(keys)} (e.g. {example}); "
            "each run must appear once. Recollect the results."
        )


def appearance_order(values: pd.Series) -> list:
    """Unique values in the order they first appear (the order the study config lists them)."""
    return list(pd.unique(values))


def facet_rows(frame: pd.DataFrame, with_fraction: bool = True) -> list[tuple[str, float | None]]:
    """Row facets: one per dataset, or per (dataset, fraction) when the data has several
    fractions and ``with_fraction``; fractions ascend within a dataset."""
    several = with_fraction and frame["fraction"].nunique() > 1
    rows: list[tuple[str, float | None]] = []
    for dataset in appearance_order(frame["dataset"]):
        if several:
            fractions = sorted(frame.loc[frame["dataset"] == dataset, "fraction"].unique())
            rows.extend((dataset, float(f)) for f in fractions)
        else:
            rows.append((dataset, None))
    return rows


def select_row(frame: pd.DataFrame, row: tuple[str, float | None]) -> pd.DataFrame:
    """Rows of one row facet (see :func:`facet_rows`)."""
    dataset, fraction = row
    mask = frame["dataset"] == dataset
    if fraction is not None:
        mask &= frame["fraction"] == fraction
    return frame[mask]

