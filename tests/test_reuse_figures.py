"""Feature-reuse figures: each is written (PDF + PNG) from synthetic tidy CSVs, an empty CSV
draws "no data", a missing column or metric is a DataError naming it, and the kernel tiles are
min-max normalised per kernel."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtransfer.columns import (
    FILTER_KERNEL_COLUMNS,
    LAYER_KNN_READ_COLUMNS,
    REINIT_READ_COLUMNS,
    RUN_COLUMNS,
    WEIGHT_DRIFT_READ_COLUMNS,
)
from medtransfer.errors import DataError
from medtransfer.figures.catalog import FIGURES
from medtransfer.figures.reuse import kernel_tiles

from test_figures import assert_written

INITS = {"RI": ("RI", ""), "ST_natural": ("ST", "natural"), "WT_natural": ("WT", "natural")}
BLOCKS = {"resnet18": ["stem", "layer1.0", "layer2.0", "head"], "cbr_small": ["block1", "block2", "head"]}
COLUMNS = {"weight_drift": WEIGHT_DRIFT_READ_COLUMNS, "reinit": REINIT_READ_COLUMNS,
           "layer_knn": LAYER_KNN_READ_COLUMNS, "filter_kernels": FILTER_KERNEL_COLUMNS}
REUSE_FIGURES = sorted(name for name, spec in FIGURES.items() if spec.input in COLUMNS)


def make_reuse_results(folder: Path, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    tables: dict[str, list[dict]] = {kind: [] for kind in COLUMNS}
    for dataset, arch, (init, (name, source)), fraction, s in itertools.product(
            ("lesions", "grades"), BLOCKS, INITS.items(), (0.1, 1.0), (0, 1, 2)):
        run = dict(dataset=dataset, arch=arch, protocol="finetune", init=init, init_name=name, source=source,
                   k="", fraction=fraction, seed=s, run=f"{dataset}/{arch}/{init}/f{fraction:g}/s{s}")
        blocks = BLOCKS[arch]
        for i, block in enumerate(blocks):
            l2 = (0.5 if name == "WT" else 2.0) * (1 + i) * rng.uniform(0.8, 1.2)
            tables["weight_drift"].append(run | dict(block=block, block_index=i, l2=l2, init_l2=10.0,
                                                     relative=l2 / 10.0, n_params=100 * (i + 1)))
            for state in ("init", "final"):
                value = 0.55 + 0.05 * i + (0.1 if state == "final" else 0.0) + rng.normal(0, 0.01)
                for metric in ("auc", "acc"):
                    tables["layer_knn"].append(run | dict(state=state, split="test", block=block, block_index=i,
                                                          metric=metric, value=value, knn_k=200))
        scored = [("none", -1)] + [(block, i) for i, block in enumerate(blocks)] + [("all", len(blocks))]
        for block, index in scored:
            value = 0.8 if block == "none" else 0.8 - rng.uniform(0, 0.3)
            for metric in ("auc", "acc"):
                tables["reinit"].append(run | dict(split="test", block=block, block_index=index, metric=metric,
                                                   value=value, drop=0.8 - value))
        if (dataset, arch, fraction, s) == ("lesions", "resnet18", 1.0, 0):
            for state in ("init", "final"):
                weights = rng.normal(size=(10, 3, 3, 3))
                for (f, c, r, col), value in np.ndenumerate(weights):
                    tables["filter_kernels"].append(run | dict(layer="conv1", state=state, filter=f, channel=c,
                                                               row=r, col=col, value=value))
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, rows in tables.items():
        out[kind] = folder / f"{kind}.csv"
        pd.DataFrame(rows).to_csv(out[kind], index=False)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    return make_reuse_results(tmp_path_factory.mktemp("reuse_results"))


def test_the_reuse_figures_are_registered():
    assert REUSE_FIGURES == ["filters", "layer_knn", "reinit", "weight_drift"]


@pytest.mark.parametrize("name", REUSE_FIGURES)
def test_every_reuse_figure_writes_pdf_and_png(name, results, tmp_path):
    function, kind = FIGURES[name].function, FIGURES[name].input
    out = tmp_path / "figures" / f"{name}.pdf"
    assert function(results[kind], out) == out
    assert_written(out)


@pytest.mark.parametrize("name", REUSE_FIGURES)
def test_empty_csv_draws_no_data_and_a_missing_column_is_named(name, tmp_path):
    function, kind = FIGURES[name].function, FIGURES[name].input
    empty = tmp_path / f"{kind}.csv"
    empty.write_text(",".join(COLUMNS[kind]) + "\n")
    function(empty, tmp_path / "empty.pdf")
    assert_written(tmp_path / "empty.pdf")
    dropped = {"weight_drift": "relative", "reinit": "drop", "layer_knn": "state", "filter_kernels": "channel"}[kind]
    broken = tmp_path / "broken.csv"
    broken.write_text(",".join(c for c in COLUMNS[kind] if c != dropped) + "\n")
    with pytest.raises(DataError, match=rf"broken\.csv.*{dropped}"):
        function(broken, tmp_path / "broken.pdf")
    assert not (tmp_path / "broken.pdf").exists()


def test_a_metric_not_in_the_csv_is_named(results, tmp_path):
    with pytest.raises(DataError, match="kappa.*acc, auc"):
        FIGURES["reinit"].function(results["reinit"], tmp_path / "x.pdf", metric="kappa")


def test_kernel_tiles_normalise_each_kernel_on_its_own():
    rng = np.random.default_rng(0)
    rgb = rng.normal(size=(5, 3, 4, 4)) * np.arange(1, 6)[:, None, None, None]  # different scales
    tile = kernel_tiles(rgb, columns=3)
    assert tile.shape == (2 * 4 + 1, 3 * 4 + 2, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        image = tile[r * 5:r * 5 + 4, c * 5:c * 5 + 4]
        expected = (rgb[i].transpose(1, 2, 0) - rgb[i].min()) / (rgb[i].max() - rgb[i].min())
        np.testing.assert_allclose(image, expected, atol=1e-12)
    assert np.isnan(tile[4]).all() and np.isnan(tile[5:, 10:]).all()  # gaps and the empty sixth slot
    gray = kernel_tiles(rng.normal(size=(2, 1, 3, 3)))
    assert gray.shape == (3, 7) and np.nanmin(gray) == 0.0 and np.nanmax(gray) == 1.0
    flat = kernel_tiles(np.ones((1, 3, 2, 2)))  # a constant kernel has no range: drawn as 0, not NaN
    assert (flat == 0).all()


def test_run_columns_lead_every_reuse_table():
    for columns in COLUMNS.values():
        assert columns[:len(RUN_COLUMNS)] == RUN_COLUMNS and columns[len(RUN_COLUMNS)] == "run"
