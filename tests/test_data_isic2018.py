"""ISIC 2018 task 3 on a tiny copy of its downloaded layout (medtransfer.data.formats.isic2018)."""

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import read_dataset
from medtransfer.errors import ConfigError, DataError

# the ground truth's header as downloaded (ISIC2018_Task3_Training_GroundTruth.csv)
HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
CLASSES = HEADER.split(",")[1:]
GROUPINGS_HEADER = "image,lesion_id,diagnosis_confirm_type"


def write_part(root, part, first, count, inner=True, hook=None):
    """ISIC2018_Task3_{part}_Input/ISIC_*.jpg and its ground truth; image i has class i % 7 and a
    red level 30 * class."""
    folder = root / f"ISIC2018_Task3_{part}_Input"
    folder.mkdir(parents=True)
    lines = [HEADER]
    for i in range(first, first + count):
        label = i % 7
        Image.new("RGB", (20, 15), (30 * label, 200, 90)).save(folder / f"ISIC_{i:07d}.jpg", quality=95)
        lines.append(f"ISIC_{i:07d}," + ",".join("1.0" if k == label else "0.0" for k in range(7)))
    if hook:
        hook(lines)
    csv_folder = root / f"ISIC2018_Task3_{part}_GroundTruth" if inner else root
    csv_folder.mkdir(exist_ok=True)
    (csv_folder / f"ISIC2018_Task3_{part}_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    (folder / "ATTRIBUTION.txt").write_text("ISIC")


def write_groupings(root, first, count):
    lines = [GROUPINGS_HEADER] + [f"ISIC_{i:07d},HAM_{i // 3:07d},histo" for i in range(first, first + count)]
    (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text("\n".join(lines) + "\n")


def entry(root, **kw):
    return {"format": "isic2018", "root": str(root), "size": 5, "workers": 2, **kw}


def check_labels(raw):
    for images, labels in raw.splits.values():
        numbers = [int(p.stem.split("_")[1]) for p in images.paths]
        np.testing.assert_array_equal(labels, [i % 7 for i in numbers])
        np.testing.assert_allclose(images[:][:, 0, 2, 2], 30 * labels, atol=3)  # JPEG: within a few levels


def test_official_validation_and_test_ground_truths_are_the_splits(tmp_path):
    root = tmp_path / "isic2018"
    write_part(root, "Training", 24306, 70)
    write_part(root, "Validation", 34321, 14, inner=False)  # a CSV directly in root is found too
    write_part(root, "Test", 34524, 21)
    raw = read_dataset("isic", entry(root))
    assert raw.task == "multiclass" and raw.class_names == CLASSES
    assert {s: len(l) for s, (_, l) in raw.splits.items()} == {"train": 70, "val": 14, "test": 21}
    assert raw.attributes["official_splits"] == ["val", "test"]
    check_labels(raw)
    carved = read_dataset("isic", entry(root, official_splits=False, val_fraction=0.2, test_fraction=0.2))
    assert sum(len(l) for _, l in carved.splits.values()) == 70  # training images only
    assert carved.attributes["made_splits"]["grouped_by"] == "image"  # no groupings CSV
    check_labels(carved)


def test_missing_splits_are_made_from_whole_lesions(tmp_path):
    root = tmp_path / "isic2018"
    write_part(root, "Training", 0, 140)
    write_part(root, "Test", 500, 14)
    write_groupings(root, 0, 140)
    raw = read_dataset("isic", entry(root, val_fraction=0.2))
    assert raw.attributes["made_splits"]["grouped_by"] == "lesion" and raw.attributes["official_splits"] == ["test"]
    assert len(raw.splits["test"][1]) == 14
    lesions = {}
    for split in ("train", "val"):
        for path in raw.splits[split][0].paths:
            lesions.setdefault(int(path.stem.split("_")[1]) // 3, set()).add(split)
    assert all(len(s) == 1 for s in lesions.values()) and sum(len(raw.splits[s][1]) for s in ("train", "val")) == 140
    check_labels(raw)
    with pytest.raises(ConfigError, match="datasets.isic.group_by is 'patient'"):
        read_dataset("isic", entry(root, group_by="patient"))


def test_bad_downloads_are_named(tmp_path):
    root = tmp_path / "a"
    write_part(root, "Training", 0, 14)
    (root / "ISIC2018_Task3_Training_Input" / "ISIC_0000003.jpg").unlink()
    with pytest.raises(DataError, match=r"Training_GroundTruth\.csv row 5: image .*ISIC_0000003\.jpg does not exist"):
        read_dataset("isic", entry(root))
    Image.new("RGB", (20, 15)).save(root / "ISIC2018_Task3_Training_Input" / "ISIC_0000003.jpg")
    with pytest.raises(DataError, match=r"LesionGroupings\.csv does not exist: .*or set datasets.isic.group_by: image"):
        read_dataset("isic", entry(root, group_by="lesion"))

    root = tmp_path / "b"
    with pytest.raises(DataError, match=r"ISIC2018_Task3_Training_GroundTruth\.csv does not exist; download ISIC 2018"):
        read_dataset("isic", entry(root))

    def two_hot(lines):
        lines[3] = lines[3].replace("0.0", "1.0", 1)

    write_part(root, "Training", 0, 14, hook=two_hot)
    with pytest.raises(DataError, match=r"row 4: expected exactly one of MEL, NV, BCC, AKIEC, BKL, DF, VASC"):
        read_dataset("isic", entry(root))
