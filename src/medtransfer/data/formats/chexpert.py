"""CheXpert (format ``chexpert``): chest radiographs with 14 observations, as Stanford ships them.

Download CheXpert-v1.0 or CheXpert-v1.0-small (Stanford AIMI, after accepting the licence) and
unpack it; ``root`` is the folder holding ``train.csv`` and ``valid.csv`` (or the folder above it)::

    chexpert:
      format: chexpert
      root: /data/CheXpert-v1.0-small
      size: 224
      labels: competition          # or all (default), or a list of observation names
      uncertainty: U-Ones          # or U-Zeros, U-Ignore (default), or per label:
                                   # {Atelectasis: U-Ones, Edema: U-Ones, default: U-Zeros}
                                   # LSR-Ones / LSR-Zeros: soft labels drawn in training
      eval_labels: competition     # metrics over these labels only (default: all the labels)
      no_finding: derived          # "No Finding" = 1 on all-zero rows (default as_given)
      frontal_only: true           # default false
      val_fraction: 0.1            # of train.csv's images, made patient-disjoint (default 0.1)
      split_seed: 0

Labels are multilabel float32 [N, K] in the order of :data:`OBSERVATIONS` (or of ``labels``):
1.0 positive, 0.0 negative (and, by default, a blank cell: the report did not mention it;
``unmentioned: ignore`` makes blanks NaN), -1.0 uncertain -> the label's policy:
``U-Ones`` -> 1.0, ``U-Zeros`` -> 0.0, ``U-Ignore`` -> NaN (masked in the loss and the AUC),
after Irvin et al. (AAAI 2019). The preset ``competition`` is their 5 evaluation labels.
``LSR-Ones`` / ``LSR-Zeros`` (Hosseinzadeh Taher et al. 2021, BenchmarkTransferLearning
``dataloader.py``): the cache keeps uncertain entries as NaN and records the soft-label range per
label (attribute ``label_smoothing``); the fine-tuning train loader replaces them with draws from
U(0.55, 0.85) / U(0, 0.3) per image, label and epoch (:meth:`medtransfer.data.loader.BatchLoader.soft_labels`).
``eval_labels`` (a preset or a list of the labels): the cache records them (``evaluated_labels``)
and the metrics average over them only, as Hosseinzadeh Taher et al. report the 5 competition
labels of a 14-label model. ``no_finding: derived`` (U-Zeros / U-Ones, blanks negative): "No
Finding" = 1 on every row whose labels are all 0, as Matsoukas et al.'s feature-reuse code
(``defaults/datasets.py``).

Splits: ``train.csv`` gives train and val (val made from whole patients, stratified by the first
positive label, seeded; see :mod:`medtransfer.data.splits`); ``valid.csv`` (234 images, 200
patients, radiologist consensus labels) is the test split, since the official test set is not
public. No patient is in two splits (checked). Paths in the CSVs start with the release folder
(``CheXpert-v1.0-small/train/...``), which is dropped, so the folder can have any name; a path
that would leave ``root`` (absolute, or ``..``) is refused, naming its row.

Images are decoded lazily (:class:`~medtransfer.data.images.DecodedImages`): ``size`` (required),
``channels`` (default 1, gray; the loader repeats it to 3), ``resize`` (PIL filter), ``workers``
(threads). The keys' values are checked when the workflow plans, before any file is read.
Task ``multilabel``, metric ``auc`` (mean per-label ROC-AUC over labelled entries).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from medtransfer.data.formats.common import (check_decoding_keys, decoding_keys, listing_checksum, md5_file,
                                             path_inside, read_table, row_names)
from medtransfer.data.images import DecodedImages
from medtransfer.data.raw import RawDataset, register_format, require
from medtransfer.data.splits import check_disjoint, describe_split, grouped_split
from medtransfer.errors import ConfigError, DataError

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
PRESETS = {"all": OBSERVATIONS, "competition": COMPETITION}
POLICIES = {"u-ones": 1.0, "u-zeros": 0.0, "u-ignore": np.nan, "lsr-ones": np.nan, "lsr-zeros": np.nan}
POLICY_NAMES = {"u-ones": "U-Ones", "u-zeros": "U-Zeros", "u-ignore": "U-Ignore", "lsr-ones": "LSR-Ones",
                "lsr-zeros": "LSR-Zeros"}
#: the soft label an uncertain entry gets in training, drawn uniformly from [low, high) per image
#: and epoch (Hosseinzadeh Taher et al. 2021; their dataloader.py, CheXpertDataset.__getitem__)
SMOOTHING = {"lsr-ones": (0.55, 0.85), "lsr-zeros": (0.0, 0.3)}
EVAL_PRESETS = {"competition": COMPETITION}
METADATA = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
SPLIT_FOLDERS = ("train", "valid", "test")
DOWNLOAD = "https://stanfordmlgroup.github.io/competitions/chexpert/"
METRIC = "auc"


def _label_names(entry: Mapping[str, Any], name: str) -> list[str]:
    labels = entry.get("labels", "all")
    if isinstance(labels, str):
        if labels not in PRESETS:
            raise ConfigError(f"datasets.{name}.labels is {labels!r}; allowed: {', '.join(PRESETS)} "
                              "or a list of observations")
        return list(PRESETS[labels])
    unknown = [str(x) for x in labels if x not in OBSERVATIONS]
    if unknown or not labels:
        raise ConfigError(f"datasets.{name}.labels: {unknown or 'empty list'} not CheXpert observations; "
                          f"allowed: {', '.join(OBSERVATIONS)}")
    return [str(x) for x in labels]


def _policy(value: Any, key: str) -> str:
    policy = str(value).strip().lower().replace("_", "-")
    if policy not in POLICIES:
        raise ConfigError(f"{key} is {value!r}; allowed: {', '.join(POLICY_NAMES.values())}")
    return policy


def uncertainty_policies(entry: Mapping[str, Any], labels: list[str], name: str) -> dict[str, str]:
    """Policy per label (``u-ones``, ``u-zeros``, ``u-ignore``) from ``entry['uncertainty']``."""
    key = f"datasets.{name}.uncertainty"
    setting = entry.get("uncertainty", "U-Ignore")
    if not isinstance(setting, Mapping):
        return {label: _policy(setting, key) for label in labels}
    unknown = [k for k in setting if k != "default" and k not in labels]
    if unknown:
        raise ConfigError(f"{key}: {', '.join(map(repr, unknown))} not among the labels ({', '.join(labels)})")
    default = setting.get("default", "U-Ignore")
    return {label: _policy(setting.get(label, default), f"{key}.{label}") for label in labels}


def evaluated_labels(entry: Mapping[str, Any], labels: list[str], name: str) -> list[str] | None:
    """The labels ``eval_labels`` names (a preset or a list), all among ``labels``; None when unset."""
    setting = entry.get("eval_labels")
    if setting is None:
        return None
    key = f"datasets.{name}.eval_labels"
    if isinstance(setting, str):
        if setting not in EVAL_PRESETS:
            raise ConfigError(f"{key} is {setting!r}; allowed: {', '.join(EVAL_PRESETS)} or a list of the labels")
        chosen = list(EVAL_PRESETS[setting])
    else:
        chosen = [str(x) for x in setting]
    missing = [x for x in chosen if x not in labels]
    if missing or not chosen:
        raise ConfigError(f"{key}: {missing or 'empty list'} not among the labels trained on ({', '.join(labels)}); "
                          f"evaluated labels must be a non-empty subset of datasets.{name}.labels")
    return [x for x in labels if x in chosen]  # in the order of the labels (the model's outputs)


def check_no_finding(entry: Mapping[str, Any], labels: list[str], policies: Mapping[str, str], unmentioned: str,
                     name: str) -> bool:
    """Whether ``no_finding: derived`` is set, after checking it can be: "No Finding" among the
    labels, every uncertain and blank entry made 0 or 1 (U-Zeros / U-Ones, ``unmentioned: negative``)."""
    setting = entry.get("no_finding", "as_given")
    key = f"datasets.{name}.no_finding"
    if setting not in ("as_given", "derived"):
        raise ConfigError(f"{key} is {setting!r}; allowed: as_given (the CSV's column), derived")
    if setting == "as_given":
        return False
    if "No Finding" not in labels:
        raise ConfigError(f"{key}: derived needs 'No Finding' among datasets.{name}.labels")
    soft = sorted({POLICY_NAMES[p] for p in policies.values() if p not in ("u-ones", "u-zeros")})
    if soft or unmentioned != "negative":
        raise ConfigError(f"{key}: derived needs every label known (uncertainty U-Zeros or U-Ones, unmentioned: "
                          f"negative), got uncertainty {', '.join(soft) or 'U-Zeros/U-Ones'} and unmentioned: "
                          f"{unmentioned}")
    return True


def derive_no_finding(values: np.ndarray, labels: list[str]) -> np.ndarray:
    """Matsoukas et al.'s "No Finding": 1 for every row whose labels (after the uncertainty policy,
    blanks negative) are all 0, the CSV's value otherwise (ChrisMats/feature-reuse,
    defaults/datasets.py, CheXpert.get_data_as_list)."""
    out = values.copy()
    out[values.sum(axis=1) == 0, labels.index("No Finding")] = 1.0
    return out


def encode_labels(values: Any, labels: list[str], policies: Mapping[str, str], unmentioned: str,
                  rows: list[str]) -> np.ndarray:
    """CheXpert label cells (strings: 1.0, 0.0, -1.0, empty) -> float32 [N, K] with the policies.

    ``values`` is the table (a DataFrame with the ``labels`` columns), ``rows[i]`` names row i in
    error messages.
    """
    import pandas as pd

    cells = values[labels]
    numbers = cells.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    empty = cells.isna().to_numpy()
    bad = (np.isnan(numbers) & ~empty) | ~(np.isnan(numbers) | np.isin(numbers, (1.0, 0.0, -1.0)))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{rows[row]}: {labels[col]!r} is {cells.iat[row, col]!r}; CheXpert labels "
                        "are 1.0, 0.0, -1.0 or empty")
    out = numbers.copy()
    out[empty] = 0.0 if unmentioned == "negative" else np.nan
    for k, label in enumerate(labels):
        column = out[:, k]
        column[numbers[:, k] == -1.0] = POLICIES[policies[label]]
    return out.astype(np.float32)


def _find_root(root: Path) -> Path:
    if (root / "train.csv").is_file():
        return root
    inner = sorted(p.parent for p in root.glob("CheXpert-v1.0*/train.csv"))
    if len(inner) == 1:
        return inner[0]
    raise DataError(f"{root}: no train.csv (nor one CheXpert-v1.0*/train.csv below it); point 'root' at the "
                    f"unpacked CheXpert folder (download: {DOWNLOAD})")


def image_path(root: Path, csv_value: str, where: str) -> Path:
    """``CheXpert-v1.0-small/train/patient1/...`` -> ``root/train/patient1/...`` (any release folder);
    DataError naming ``where`` for a path that leaves ``root`` (:func:`path_inside`)."""
    path = PurePosixPath(csv_value.strip().replace("\\", "/"))
    parts = path.parts
    if parts and not path.is_absolute() and parts[0] not in SPLIT_FOLDERS:
        parts = parts[1:]
    return path_inside(root, PurePosixPath(*parts).as_posix() if parts else "", where, value=csv_value)


class _Table(NamedTuple):
    paths: list[Path]
    labels: np.ndarray  # float32 [N, K]
    patients: np.ndarray  # [N] "patient00001"
    rows: list[str]  # "train.csv row 2" per image
    rows_read: int  # before the frontal filter


def _read_csv(name: str, root: Path, file: str, labels: list[str], policies: dict[str, str], unmentioned: str,
              frontal_only: bool) -> _Table:
    """One CheXpert CSV (its images' paths, label vectors, patients and row names)."""
    csv_path = root / file
    table = read_table(csv_path, [*METADATA, *OBSERVATIONS], hint=f"download CheXpert from {DOWNLOAD}")
    rows = np.asarray(row_names(csv_path, len(table)), dtype=object)
    keep = np.ones(len(table), bool)
    if frontal_only:
        view = table["Frontal/Lateral"].fillna("").str.strip().to_numpy()
        unknown = ~np.isin(view, ("Frontal", "Lateral"))
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataError(f"{rows[i]}: 'Frontal/Lateral' is {view[i]!r}; expected Frontal or Lateral")
        keep = view == "Frontal"
    table, rows = table[keep].reset_index(drop=True), rows[keep]
    values = encode_labels(table, labels, policies, unmentioned, list(rows))
    patients = []
    for row, value in zip(rows, table["Path"]):
        found = re.search(r"patient\d+", str(value))
        if not found or not isinstance(value, str):
            raise DataError(f"{row}: 'Path' is {value!r}; expected .../patientNNNNN/studyN/viewN_*.jpg")
        patients.append(found.group(0))
    paths = [image_path(root, p, f"datasets.{name}: {row}, column 'Path'") for row, p in zip(rows, table["Path"])]
    return _Table(paths, values, np.asarray(patients), list(rows), int(keep.size))


def _unmentioned(entry: Mapping[str, Any], name: str) -> str:
    unmentioned = str(entry.get("unmentioned", "negative"))
    if unmentioned not in ("negative", "ignore"):
        raise ConfigError(f"datasets.{name}.unmentioned is {unmentioned!r}; allowed: negative, ignore")
    return unmentioned


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The entry's decoding keys, labels, uncertainty policies and ``unmentioned`` (``ConfigError``),
    before any file is read."""
    check_decoding_keys(name, entry)
    labels = _label_names(entry, name)
    policies = uncertainty_policies(entry, labels, name)
    unmentioned = _unmentioned(entry, name)
    if unmentioned != "negative" and any(p in SMOOTHING for p in policies.values()):
        raise ConfigError(f"datasets.{name}.uncertainty: LSR-Ones / LSR-Zeros keep the uncertain entries as NaN for "
                          f"the training loader to smooth, so blanks cannot be NaN too: drop "
                          f"datasets.{name}.unmentioned: {unmentioned} (blanks are negatives, as Hosseinzadeh Taher "
                          "et al.'s unknown_label 0)")
    evaluated_labels(entry, labels, name)
    check_no_finding(entry, labels, policies, unmentioned, name)


@register_format("chexpert", required={"root": "the unpacked CheXpert folder",
                                       "size": "images are resized to size x size"}, check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Read CheXpert's train.csv and valid.csv (images decoded lazily)."""
    root = _find_root(Path(require(entry, "root", name)))
    size, channels, resize, workers = decoding_keys({"channels": 1, **entry}, name)
    labels = _label_names(entry, name)
    policies = uncertainty_policies(entry, labels, name)
    unmentioned = _unmentioned(entry, name)
    frontal_only = bool(entry.get("frontal_only", False))
    val_fraction = float(entry.get("val_fraction", 0.1))
    seed = int(entry.get("split_seed", 0))

    train = _read_csv(name, root, "train.csv", labels, policies, unmentioned, frontal_only)
    test = _read_csv(name, root, "valid.csv", labels, policies, unmentioned, frontal_only)
    derived = check_no_finding(entry, labels, policies, unmentioned, name)
    if derived:
        train = train._replace(labels=derive_no_finding(train.labels, labels))
        test = test._replace(labels=derive_no_finding(test.labels, labels))
    check_disjoint({"train.csv": np.unique(train.patients), "valid.csv": np.unique(test.patients)}, "patient",
                   str(root))
    parts = grouped_split(train.labels, train.patients, {"val": val_fraction}, seed)

    listing = listing_checksum(root, train.paths + test.paths, train.rows + test.rows)
    images = DecodedImages(train.paths, size, channels, resize, workers=workers, describe=train.rows)
    splits = {
        "train": (images.subset(parts["rest"]), train.labels[parts["rest"]]),
        "val": (images.subset(parts["val"]), train.labels[parts["val"]]),
        "test": (DecodedImages(test.paths, size, channels, resize, workers=workers, describe=test.rows),
                 test.labels),
    }
    patients = {"train": train.patients[parts["rest"]], "val": train.patients[parts["val"]], "test": test.patients}
    check_disjoint({s: np.unique(p) for s, p in patients.items()}, "patient", str(root))
    digest = hashlib.md5(f"{md5_file(root / 'train.csv')} {md5_file(root / 'valid.csv')}".encode()).hexdigest()
    attributes = {
        "metric": METRIC,
        "labels": labels,
        "uncertainty_policy": {label: POLICY_NAMES[p] for label, p in policies.items()},
        "unmentioned": unmentioned,
        "frontal_only": frontal_only,
        "split_policy": (f"train/val from train.csv, val = {len(parts['val'])} images of whole patients "
                         f"(stratified, split_seed {seed}); test = valid.csv"),
        "made_splits": describe_split({"val": parts["val"], "train": parts["rest"]}, "train.csv", "patient", seed),
        "patients": {s: int(len(np.unique(p))) for s, p in patients.items()},
        "rows_read": {"train.csv": train.rows_read, "valid.csv": test.rows_read},
        "images_listing_md5": listing,
    }
    # keys only where set: a cache of an entry without them keeps its attributes (and fingerprint)
    smoothing = {label: list(SMOOTHING[p]) for label, p in policies.items() if p in SMOOTHING}
    if smoothing:
        attributes["label_smoothing"] = smoothing
    evaluated = evaluated_labels(entry, labels, name)
    if evaluated is not None:
        attributes["evaluated_labels"] = evaluated
    if derived:
        attributes["no_finding"] = "derived: 1 where every other label is 0 (Matsoukas et al.)"
    return RawDataset(splits=splits, task="multilabel", class_names=labels, source=str(root),
                      checksum=digest, attributes=attributes, groups=patients)
