"""The figure catalog (medtransfer.figures.catalog): every row resolves to a drawing function and
a caption, has a report section, reads a tidy CSV that the column contracts know; and reading it
(as the Snakefile does, with the report layout) imports neither torch, pandas nor matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medtransfer import columns
from medtransfer.figures.catalog import CATALOG, FIGURES
from medtransfer.report.caption_tools import Caption
from medtransfer.report.places import CATEGORIES

#: The columns each figure input's producer writes, where they are fixed (metrics and history
#: columns depend on the task: they start with the run columns).
WRITTEN = {"metrics": None, "history": None, "similarity_init_final": columns.INIT_FINAL_COLUMNS,
           "similarity_pairs": columns.PAIRS_COLUMNS, "weight_drift": columns.WEIGHT_DRIFT_COLUMNS,
           "reinit": columns.REINIT_COLUMNS, "layer_knn": columns.LAYER_KNN_COLUMNS,
           "filter_kernels": columns.FILTER_KERNEL_COLUMNS, "fid_gain": columns.FID_GAIN_COLUMNS,
           "prediction_similarity": columns.PREDICTION_SIMILARITY_COLUMNS,
           "representation_gain_runs": columns.REPRESENTATION_GAIN_RUNS_COLUMNS}


def test_reading_the_catalog_and_the_report_layout_stays_light():
    code = ("import sys; import medtransfer.figures.catalog, medtransfer.report.layout; "
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_every_figure_has_one_row():
    assert len(FIGURES) == len(CATALOG)


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_row_resolves(name):
    figure = FIGURES[name]
    assert figure.name == name
    assert callable(figure.function)
    assert figure.caption is None or isinstance(figure.caption, Caption)
    assert figure.place.category in CATEGORIES and figure.place.title
    assert figure.input in WRITTEN


@pytest.mark.parametrize("name", [name for name, figure in FIGURES.items() if figure.caption_ref])
def test_every_caption_reads_columns_of_its_csv(name):
    """What a caption checks for is among the columns the CSV's producer writes (where they are fixed)."""
    figure = FIGURES[name]
    written = WRITTEN[figure.input]
    if written is None:
        assert set(figure.caption.columns) >= set(columns.RUN_COLUMNS)
        return
    assert set(figure.caption.columns) <= set(written)


def test_a_column_that_is_not_the_csvs_is_refused():
    with pytest.raises(ValueError, match="not columns of the CSV: nope"):
        columns._without(columns.REINIT_COLUMNS, "nope")
