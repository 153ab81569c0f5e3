"""The grid's axes of issue 26: absolute training sizes (``study.fractions`` > 1) and
cross-validation folds (``study.folds``, ``datasets.<name>.folds``).

Sizes: exact, stratified, nested with each other and with the fractions of the same seed.
Folds: disjoint, covering, stratified and grouped partitions, checked against properties
scikit-learn's splitters guarantee and a direct count; fold CSVs in Juodelyte et al.'s format;
the cache's pool; the planner's paths, specs and errors.
"""

from __future__ import annotations

import copy
import itertools
import os

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from medtransfer import paths
from medtransfer.data import folds as fold_lib
from medtransfer.data.cache import POOL, read_folds, read_info, read_labels
from medtransfer.data.fractions import segmentation_subset, subset_indices
from medtransfer.data.raw import RawDataset
from medtransfer.data.streaming import write_cache
from medtransfer.errors import ConfigError, DataError
from medtransfer.study import Study

# ---- absolute training sizes ---------------------------------------------------------------------


def _labels(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(4, size=997, p=[0.55, 0.25, 0.15, 0.05]).astype(np.int64)


def test_a_count_takes_exactly_that_many_images_in_proportion_with_every_class():
    labels = _labels()
    n_class = np.bincount(labels, minlength=4)
    for count in (4, 50, 333, 996):
        subset = subset_indices(labels, count, seed=3, num_classes=4)
        assert len(subset) == count == len(np.unique(subset))
        kept = np.bincount(labels[subset], minlength=4)
        assert (kept >= 1).all()
        # stratified: each class within one image (plus the one every class keeps) of its share
        assert np.all(np.abs(kept - count * n_class / len(labels)) <= 1.5), (count, kept)


def test_counts_and_fractions_of_one_seed_are_nested():
    labels = _labels(1)
    sizes = [0.01, 0.05, 4, 20, 0.1, 150, 0.5, 500, 0.9, 1.0]
    subsets = {size: set(subset_indices(labels, size, seed=7, num_classes=4).tolist()) for size in sizes}
    for a, b in itertools.combinations(sizes, 2):
        small, large = sorted((subsets[a], subsets[b]), key=len)
        assert small <= large, (a, b)
    # another seed draws other images
    assert set(subset_indices(labels, 150, seed=8, num_classes=4).tolist()) != subsets[150]


def test_a_count_larger_than_the_split_or_below_the_classes_is_refused():
    labels = _labels()
    with pytest.raises(DataError, match=r"study.fractions: 998 training images .* has 997"):
        subset_indices(labels, 998, seed=0, num_classes=4)
    with pytest.raises(ConfigError, match="at least 4"):
        subset_indices(labels, 3, seed=0, num_classes=4)
    with pytest.raises(ConfigError, match="neither a fraction"):
        subset_indices(labels, 2.5, seed=0)


def test_a_segmentation_count_is_a_nested_prefix():
    foreground = np.random.default_rng(0).random(300) < 0.4
    small, large = (set(segmentation_subset(foreground, n, seed=2).tolist()) for n in (30, 120))
    half = set(segmentation_subset(foreground, 0.5, seed=2).tolist())
    assert len(small) == 30 and len(large) == 120 and small <= large <= half


# ---- folds made here -----------------------------------------------------------------------------


def _check_partition(roles: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> None:
    n, k = roles.shape
    test = roles == fold_lib.TEST
    # covering and disjoint: every image is tested in exactly one fold
    assert (test.sum(axis=1) == 1).all()
    # every image has a role in every fold (made folds use every image)
    assert np.isin(roles, [fold_lib.TRAIN, fold_lib.VAL, fold_lib.TEST]).all()
    for fold in range(k):
        rows = fold_lib.fold_rows(roles, fold)
        assert sum(len(r) for r in rows.values()) == n
        assert len(rows["val"]) > 0 and len(rows["train"]) > len(rows["val"])
        if groups is not None:  # no patient on two sides of a fold
            sides = [set(groups[r]) for r in rows.values()]
            assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    if groups is not None:  # no patient in two test folds
        fold_of_image = test.argmax(axis=1)
        assert pd.Series(fold_of_image).groupby(groups).nunique().max() == 1


def test_made_folds_are_stratified_disjoint_and_covering():
    labels = _labels()
    roles = fold_lib.make_folds(labels, None, k=5, seed=0)
    _check_partition(roles, labels, None)
    # StratifiedKFold's guarantee: per class, test-fold sizes differ by at most one
    per_fold = np.stack([np.bincount(labels[roles[:, f] == fold_lib.TEST], minlength=4) for f in range(5)])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 1).all()
    # validation carved from the training folds, stratified: each class near 10 % of them
    for fold in range(5):
        rows = fold_lib.fold_rows(roles, fold)
        rest = np.concatenate([rows["train"], rows["val"]])
        expected = np.round(0.1 * np.bincount(labels[rest], minlength=4))
        assert np.array_equal(np.bincount(labels[rows["val"]], minlength=4), expected)
    assert np.array_equal(roles, fold_lib.make_folds(labels, None, k=5, seed=0))  # seeded
    assert not np.array_equal(roles, fold_lib.make_folds(labels, None, k=5, seed=1))


def test_made_folds_keep_patients_whole_and_stay_near_stratified():
    rng = np.random.default_rng(4)
    patients = np.repeat(np.arange(150), rng.integers(1, 5, size=150))
    patient_class = rng.choice(3, size=150, p=[0.6, 0.3, 0.1])
    labels = patient_class[patients].astype(np.int64)
    roles = fold_lib.make_folds(labels, patients.astype(str), k=4, seed=0)
    _check_partition(roles, labels, patients)
    # near stratified: each test fold's class shares within 10 points of the whole set's
    overall = np.bincount(labels, minlength=3) / len(labels)
    for fold in range(4):
        share = np.bincount(labels[roles[:, fold] == fold_lib.TEST], minlength=3) / (roles[:, fold] == 2).sum()
        assert np.abs(share - overall).max() < 0.1


def test_too_many_folds_are_refused():
    with pytest.raises(DataError, match="3 patients"):
        fold_lib.make_folds(np.array([0, 1, 0, 1, 0, 1]), np.array(list("aabbcc")), k=4, seed=0)


# ---- fold files (Juodelyte et al.'s CSVs) --------------------------------------------------------


def _juodelyte_files(root, names, classes, k=2):
    """Fold CSVs as DovileDo/revisiting-transfer's make_dataframe.py writes them (index, path,
    class), with its '../../../data/<target>/' path prefix, then split into val/test per fold."""
    folder = root / "folds"
    folder.mkdir()
    order = np.random.default_rng(0).permutation(len(names))
    held = np.array_split(order, k)
    for fold in range(k):
        test_val = held[fold]
        test, val = test_val[: len(test_val) * 4 // 5], test_val[len(test_val) * 4 // 5:]
        train = np.setdiff1d(order, test_val)
        for role, rows in (("train", train), ("val", val), ("test", test)):
            frame = pd.DataFrame({"path": [f"../../../data/breast/{names[i].split('/')[-1]}" for i in rows],
                                  "class": [classes[i] for i in rows]}, index=rows)
            frame.to_csv(folder / f"{role}_fold{fold + 1}.csv")
    return held


def test_fold_files_are_read_with_their_paths_rewritten_against_root(tmp_path):
    names = [f"{c}/{c} ({i}).png" for i, c in enumerate(["benign", "malignant"] * 20)]
    classes = [n.split("/")[0] for n in names]
    held = _juodelyte_files(tmp_path, names, classes)
    entry = {"files": {r: f"folds/{r}_fold{{n}}.csv" for r in ("train", "val", "test")}, "count": 2}
    fold_lib.check_folds_entry("breast", entry)
    roles = fold_lib.read_fold_files("breast", entry, tmp_path, names)
    for fold in range(2):
        held_out = set(held[fold].tolist())
        assert set(np.flatnonzero(roles[:, fold] != fold_lib.TRAIN).tolist()) == held_out
        assert (roles[:, fold] == fold_lib.TEST).sum() == len(held[fold]) * 4 // 5
    # a row naming an image the dataset lacks is named with its file and row
    frame = pd.read_csv(tmp_path / "folds" / "val_fold1.csv", index_col=0)
    frame.loc[len(frame) + 100] = ["../../../data/breast/missing.png", "benign"]
    frame.to_csv(tmp_path / "folds" / "val_fold1.csv")
    with pytest.raises(DataError, match=r"val_fold1.csv row \d+: '../../../data/breast/missing.png'"):
        fold_lib.read_fold_files("breast", entry, tmp_path, names)


@pytest.mark.parametrize("bad, match", [
    ({"k": 1}, "k: 1"), ({"k": 3, "files": {}}, "give"), ({"k": 3, "shuffle": True}, "unknown key"),
    ({"files": {"train": "a{n}", "val": "b{n}"}, "count": 5}, "files"),
    ({"files": {"train": "a", "val": "b{n}", "test": "c{n}"}, "count": 5}, "needs {n}"),
])
def test_bad_fold_entries_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        fold_lib.check_folds_entry("busi", bad)


# ---- the cache's pool -------------------------------------------------------------------------


def _raw(n=(40, 12, 12), groups=True) -> RawDataset:
    rng = np.random.default_rng(0)
    splits, group_ids, start = {}, {}, 0
    for split, size in zip(("train", "val", "test"), n):
        images = rng.integers(0, 255, size=(size, 1, 8, 8), dtype=np.uint8)
        labels = (np.arange(start, start + size) % 2).astype(np.int64)
        splits[split] = (images, labels)
        group_ids[split] = np.array([f"p{i // 2}" for i in range(start, start + size)])
        start += size
    return RawDataset(splits=splits, task="binary", class_names=["a", "b"], source="memory", checksum="x",
                      groups=group_ids if groups else None)


def test_a_dataset_with_folds_caches_a_pool_over_its_splits(tmp_path):
    raw = _raw()
    out = tmp_path / "d.h5"
    write_cache("d", {"format": "synthetic", "folds": {"k": 3}}, raw, out, progress=False)
    info = read_info(out)
    assert info.split_sizes == {"train": 40, "val": 12, "test": 12, POOL: 64}
    with h5py.File(out) as h5:
        pooled = h5[POOL]["images"][...]
        assert h5["train"]["groups"].asstr()[0] == "p0"  # the patients, kept per split
    assert np.array_equal(pooled, np.concatenate([raw.splits[s][0] for s in ("train", "val", "test")]))
    labels = read_labels(out, POOL)
    groups = np.concatenate([raw.groups[s] for s in ("train", "val", "test")])
    roles = read_folds(out)
    _check_partition(roles, labels, groups)
    rows = fold_lib.run_rows(out, "binary", 10, seed=0, fold=1, num_classes=2)
    assert rows["split"] == POOL and len(rows["train"]) == 10
    assert set(rows["train"]) <= set(np.flatnonzero(roles[:, 1] == fold_lib.TRAIN))
    assert np.array_equal(rows["test"], np.flatnonzero(roles[:, 1] == fold_lib.TEST))
    with pytest.raises(DataError, match="training split has"):
        fold_lib.run_rows(out, "binary", 60, seed=0, fold=1, num_classes=2)
    # the loader reads the pool's rows like any split's
    from medtransfer.data import make_loader

    loader = make_loader(out, POOL, batch_size=64, shuffle=False, indices=rows["test"], channels=1,
                         normalize={"mean": 0.0, "std": 1.0}, num_workers=0)
    x, _ = next(iter(loader))
    assert np.allclose(x.numpy() * 1.0, pooled[rows["test"]] / 255.0, atol=1e-6)
    # without folds: no pool, and a cache without groups reads as before
    plain = tmp_path / "plain.h5"
    write_cache("d", {"format": "synthetic"}, _raw(groups=False), plain, progress=False)
    assert POOL not in read_info(plain).split_sizes
    with pytest.raises(DataError, match="has no folds"):
        read_folds(plain)


# ---- the planner ------------------------------------------------------------------------------


def test_run_paths_spell_counts_and_folds_and_parse_back():
    run = paths.Run("chest", "resnet50", "WT_imagenet", "5000", 2, 3)
    assert run.id == "chest/resnet50/WT_imagenet/n5000/s2_fold3"
    assert paths.Run("chest", "resnet50", "RI", "0.1", 0).id == "chest/resnet50/RI/f0.1/s0"  # as before
    assert paths.Run.pattern().id == "{dataset}/{arch}/{init}/{fraction}/s{seed}"
    assert paths.Run.from_wildcards("chest", "resnet50", "WT_imagenet", "n5000", "2_fold3") == run
    assert paths.Run.from_wildcards("chest", "resnet50", "RI", "f1", "0") == paths.Run("chest", "resnet50", "RI", "1", 0)
    assert paths.group_analysis("x", "chest", "resnet50", "5000").endswith("/n5000.csv")


def _folded(config: dict | None = None) -> dict:
    config = copy.deepcopy(config or tiny_config())
    config["datasets"]["lesions"]["folds"] = {"k": 2}
    config["study"].update(folds=[0, 1], fractions=[0.5, 20])
    return config


def test_fold_runs_carry_their_fold_and_other_runs_do_not():
    study = Study(_folded())
    assert {(run.fraction, run.fold) for run in study.runs} == {(f, k) for f in ("0.5", "20") for k in (0, 1)}
    run = next(r for r in study.runs if r.fold == 1 and r.fraction == "20")
    spec = study.run_spec(run)
    assert spec["fold"] == 1 and spec["fraction"] == 20.0 and spec["run"].endswith("/n20/s0_fold1")
    assert study.run_columns(run)["fold"] == 1
    plain = Study(tiny_config())
    assert all(run.fold is None for run in plain.runs)
    assert all("fold" not in plain.run_spec(run) and "fold" not in plain.run_columns(run) for run in plain.runs)
    # pairs and prediction comparisons stay within a fold
    comparisons = study.pairs_spec("lesions", "cbr_tiny", "f0.5")["comparisons"]
    assert {c["fold"] for c in comparisons} == {0, 1}
    assert all(f"_fold{c['fold']}/" in c["a"] and f"_fold{c['fold']}/" in c["b"] for c in comparisons)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["study"].update(fractions=[1.5]), r"study.fractions\[0\]: 1.5 is neither"),
    (lambda c: c["study"].update(fractions=[0.5, 0.5]), "appears twice"),
    (lambda c: c["study"].update(folds=[0, 2]), r"fold 2 of 'lesions', which has 2 folds .* allowed: 0..1"),
    (lambda c: c["study"].update(folds=[0, 0]), "different fold numbers"),
    (lambda c: c["datasets"]["lesions"].pop("folds"), "target 'lesions' .* has no folds"),
    (lambda c: c["study"].pop("folds"), "have folds .* study.folds is not set"),
])
def test_bad_axes_stop_the_plan_naming_the_key(edit, match):
    config = _folded()
    edit(config)
    with pytest.raises(ConfigError, match=match):
        Study(config)


def test_a_count_larger_than_an_existing_cache_stops_the_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("results/data")
    write_cache("lesions", {"format": "synthetic"}, _raw(groups=False), "results/data/lesions.h5", progress=False)
    config = tiny_config()
    config["study"]["fractions"] = [0.5, 41]
    with pytest.raises(ConfigError, match=r"study.fractions\[1\]: 41 training images of 'lesions' .* holds 40"):
        Study(config)
    config["study"]["fractions"] = [0.5, 40]
    Study(config)  # fits
    # with folds: the fold's training images count
    write_cache("lesions", {"format": "synthetic", "folds": {"k": 2}}, _raw(), "results/data/lesions.h5",
                progress=False)
    roles = read_folds("results/data/lesions.h5")
    train_0 = int((roles[:, 0] == fold_lib.TRAIN).sum())
    config = _folded()
    config["study"]["fractions"] = [train_0 + 1]
    config["study"]["folds"] = [0]
    with pytest.raises(ConfigError, match=f"training folds of fold 0 holds {train_0}"):
        Study(config)


# ---- the tables ----------------------------------------------------------------------------------


def test_tables_aggregate_over_seeds_and_folds():
    from medtransfer.figures.io import check_unique
    from medtransfer.figures.tables import summarise, to_markdown

    rows = [{"dataset": "d", "arch": "a", "protocol": "finetune", "init": "RI", "init_name": "RI", "source": "",
             "k": "", "fraction": 20.0, "seed": s, "fold": f, "test_auc": 0.5 + 0.1 * f + 0.01 * s, "test_acc": 0.5,
             "val_auc": 0.5, "train_seconds": 1.0} for s in (0, 1) for f in (0, 1, 2)]
    frame = pd.DataFrame(rows)
    check_unique(frame, ("dataset", "arch", "init", "fraction", "seed"), "metrics.csv")  # fold keeps them apart
    with pytest.raises(DataError):
        check_unique(frame.drop(columns="fold"), ("dataset", "arch", "init", "fraction", "seed"), "metrics.csv")
    table = summarise(frame)
    assert table.loc[0, "n_seeds"] == 2 and table.loc[0, "n_folds"] == 3
    assert table.loc[0, "test_auc_mean"] == pytest.approx(np.mean([r["test_auc"] for r in rows]))
    assert table.loc[0, "test_auc_sd"] == pytest.approx(np.std([r["test_auc"] for r in rows], ddof=1))
    assert "seeds × folds" in to_markdown(table) and "n folds" in to_markdown(table)
    assert "n_folds" not in summarise(frame[frame["fold"] == 0].drop(columns="fold")).columns  # no folds: as before


# ---- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cross_validated_study_with_an_absolute_size_runs_end_to_end(tmp_path):
    import yaml

    from conftest import run_snakemake

    config = {
        "datasets": {"lesions": {"format": "synthetic", "task": "lesion_presence", "n_train": 80, "n_val": 30,
                                 "n_test": 30, "size": 16, "folds": {"k": 2}}},
        "architectures": {"cbr_tiny": {"width": 0.125}},
        "study": {"targets": ["lesions"], "architectures": ["cbr_tiny"], "inits": ["RI"], "fractions": [0.5, 20],
                  "seeds": [0], "folds": [0, 1], "protocols": ["finetune", "knn"]},
        "train": {"epochs": 1, "batch_size": 16, "num_workers": 0},
        "knn": {"k": 5},
        "analysis": {"measures": [], "weight_drift": False, "reinit": False, "layer_knn": False, "filters": False,
                     "fid": False, "prediction_similarity": False, "representation_gain": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "--cores", "2", "--resources", "gpu=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "results" / "analysis" / "metrics.csv")
    assert len(metrics) == 2 * 2 * 2  # protocols × sizes × folds
    assert "fold" in metrics.columns and set(metrics["fold"]) == {0, 1}
    counted = metrics[metrics["fraction"] == 20]
    assert len(counted) == 4 and (counted["n_train"] == 20).all() and (counted["num_train"] == 20).all()
    roles = read_folds(tmp_path / "results" / "data" / "lesions.h5")
    for fold in (0, 1):  # half of each fold's training images, stratified (one per class rounding)
        half = metrics[(metrics["fraction"] == 0.5) & (metrics["fold"] == fold)]
        assert (abs(half["num_train"] - 0.5 * (roles[:, fold] == fold_lib.TRAIN).sum()) <= 1).all()
    assert (tmp_path / "results" / "runs" / "lesions" / "cbr_tiny" / "RI" / "n20" / "s0_fold1" / "metrics.json").is_file()
    summary = pd.read_csv(tmp_path / "results" / "tables" / "summary.csv")
    assert (summary["n_folds"] == 2).all() and len(summary) == 2 * 2
