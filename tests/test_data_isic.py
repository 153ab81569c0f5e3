"""ISIC 2019 on a tiny copy of its downloaded layout (medtransfer.data.formats.isic)."""

import numpy as np
import pytest
from PIL import Image

import medtransfer.data.formats.isic  # noqa: F401  registers the format
from medtransfer.data import read_dataset
from medtransfer.data.formats.isic import CLASSES
from medtransfer.errors import ConfigError, DataError

GT_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
META_HEADER = "image,age_approx,anatom_site_general,lesion_id,sex"


def write_download(root, per_class=6, gt_hook=None, metadata=True):
    """ISIC_2019_Training_GroundTruth.csv, _Metadata.csv and ISIC_2019_Training_Input/*.jpg."""
    folder = root / "ISIC_2019_Training_Input"
    folder.mkdir(parents=True)
    gt, meta = [GT_HEADER], [META_HEADER]
    for i in range(8 * per_class):
        image = f"ISIC_{i:07d}" + ("_downsampled" if i % 11 == 3 else "")
        label = i % 8
        Image.new("RGB", (30, 20), (30 * label, 255 - 30 * label, 128)).save(folder / f"{image}.jpg", quality=95)
        gt.append(image + "," + ",".join("1.0" if k == label else "0.0" for k in range(8)) + ",0.0")
        lesion = f"IL_{i // 2:07d}" if i % 4 else ""  # pairs of images share a lesion, some have none
        meta.append(f"{image},55.0,anterior torso,{lesion},female")
    if gt_hook:
        gt_hook(gt)
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(gt) + "\n")
    if metadata:
        (root / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(meta) + "\n")
    (folder / "LICENSE.txt").write_text("CC-BY-NC")
    return root


def entry(root, **kw):
    return {"format": "isic2019", "root": str(root), "size": 5, "workers": 2, **kw}


def test_one_hot_to_classes_and_lesion_splits(tmp_path):
    root = write_download(tmp_path / "isic")
    raw = read_dataset("isic", entry(root))
    assert raw.task == "multiclass" and raw.class_names == list(CLASSES) and len(CLASSES) == 8
    assert raw.attributes["metric"] == "balanced_acc"
    assert raw.attributes["made_splits"]["grouped_by"] == "lesion"
    lesion_split = {}
    for split, (images, labels) in raw.splits.items():
        for path, label in zip(images.paths, labels):
            i = int(path.stem.split("_")[1])
            assert label == i % 8  # the one-hot column, by the fixture's construction
            if i % 4:
                lesion_split.setdefault(i // 2, set()).add(split)
        pixels = images[:]
        np.testing.assert_allclose(pixels[:, 0, 2, 2], 30 * labels, atol=3)  # JPEG: within a few levels
    assert all(len(s) == 1 for s in lesion_split.values())  # a lesion's images stay together
    assert sum(len(l) for _, l in raw.splits.values()) == 48


def test_grouping_falls_back_to_images_without_metadata(tmp_path):
    root = write_download(tmp_path / "isic", metadata=False)
    raw = read_dataset("isic", entry(root))
    assert raw.attributes["made_splits"]["grouped_by"] == "image"
    with pytest.raises(DataError, match=r"ISIC_2019_Training_Metadata\.csv does not exist"):
        read_dataset("isic", entry(root, group_by="lesion"))
    with pytest.raises(ConfigError, match="group_by"):
        read_dataset("isic", entry(root, group_by="patient"))


def test_malformed_ground_truth(tmp_path):
    def two_hot(gt):  # gt[5] is the file's row 6 (row 1 is the header)
        gt[5] = gt[5].replace("0.0", "1.0", 1)

    root = write_download(tmp_path / "a", gt_hook=two_hot)
    with pytest.raises(DataError, match=r"GroundTruth\.csv row 6: expected exactly one of MEL"):
        read_dataset("isic", entry(root))

    def unknown(gt):
        gt[3] = gt[3].split(",")[0] + ",0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0"

    root = write_download(tmp_path / "b", gt_hook=unknown)
    with pytest.raises(DataError, match=r"row 4: UNK = 1"):
        read_dataset("isic", entry(root))

    root = write_download(tmp_path / "c", gt_hook=lambda gt: gt.__setitem__(0, GT_HEADER.replace("VASC,", "")))
    with pytest.raises(DataError, match=r"column\(s\) 'VASC' missing"):
        read_dataset("isic", entry(root))
