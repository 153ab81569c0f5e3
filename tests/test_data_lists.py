"""Split list files as papers ship them (medtransfer.data.formats.lists), on tiny copies of
Hosseinzadeh Taher et al.'s Shenzhen lists (``CHNCXR_0578_1.png,1``) and of whitespace lists with
several labels a line."""

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import check_entry, read_dataset
from medtransfer.errors import ConfigError, DataError


def write_shenzhen(base, n=30, hook=None):
    """ChinaSet_AllFiles/CXR_png/CHNCXR_NNNN_T.png (T = 1 tuberculosis, 0 normal) and the three
    lists (train/valid/test, as ShenzenCXR_*_data.txt) in a separate folder, as a clone of the
    paper's repository would have them. Returns (root, lists folder, {name: label})."""
    root = base / "ChinaSet_AllFiles"
    images = root / "CXR_png"
    images.mkdir(parents=True)
    truth = {}
    for i in range(1, n + 1):
        tb = int(i % 3 == 0)
        name = f"CHNCXR_{i:04d}_{tb}.png"
        Image.new("L", (9, 7), 20 + 5 * i).save(images / name)
        truth[name] = tb
    names = sorted(truth)
    lists = {"train": names[: n // 2], "valid": names[n // 2: 2 * n // 3], "test": names[2 * n // 3:]}
    lines = {split: [f"{name},{truth[name]}" for name in chosen] for split, chosen in lists.items()}
    if hook:
        hook(lines)
    folder = base / "BenchmarkTransferLearning" / "dataset"
    folder.mkdir(parents=True)
    for split, text in lines.items():
        (folder / f"ShenzenCXR_{split}_data.txt").write_text("\n".join(text) + "\n")
    return root, folder, truth


def entry(root, folder, **kw):
    files = {"train": str(folder / "ShenzenCXR_train_data.txt"), "val": str(folder / "ShenzenCXR_valid_data.txt"),
             "test": str(folder / "ShenzenCXR_test_data.txt")}
    return {"format": "lists", "root": str(root), "images": "CXR_png", "files": files, "size": 5, "channels": 1,
            "workers": 2, **kw}


def test_shenzhen_lists_give_the_splits_and_labels(tmp_path):
    root, folder, truth = write_shenzhen(tmp_path)
    raw = read_dataset("sz", entry(root, folder, class_names=["normal", "tuberculosis"]))
    assert raw.task == "binary" and raw.class_names == ["normal", "tuberculosis"]
    for split, file in (("train", "train"), ("val", "valid"), ("test", "test")):
        images, labels = raw.splits[split]
        names = [line.split(",")[0] for line in (folder / f"ShenzenCXR_{file}_data.txt").read_text().split()]
        assert [p.name for p in images.paths] == names
        np.testing.assert_array_equal(labels, [truth[n] for n in names])
        pixels = images[:]
        assert pixels.shape == (len(names), 1, 5, 5)
        np.testing.assert_array_equal(pixels[:, 0, 2, 2], [20 + 5 * int(n[7:11]) for n in names])
    assert raw.attributes["split_policy"] == "the given list files"
    # without class_names, integer labels name themselves
    assert read_dataset("sz", entry(root, folder)).class_names == ["0", "1"]


def test_missing_splits_are_made_from_the_train_list(tmp_path):
    root, folder, truth = write_shenzhen(tmp_path, n=60)
    e = entry(root, folder)
    e["files"] = {"train": e["files"]["train"]}
    raw = read_dataset("sz", {**e, "val_fraction": 0.2, "test_fraction": 0.2})
    train_names = (folder / "ShenzenCXR_train_data.txt").read_text().split()
    seen = [p.name for s in ("train", "val", "test") for p in raw.splits[s][0].paths]
    assert sorted(seen) == sorted(line.split(",")[0] for line in train_names)  # each once
    for split in ("train", "val", "test"):
        images, labels = raw.splits[split]
        np.testing.assert_array_equal(labels, [truth[p.name] for p in images.paths])
    assert len(raw.splits["val"][1]) == len(raw.splits["test"][1]) == 6  # 0.2 of 20 normal + 0.2 of 10 TB
    assert raw.attributes["made_splits"]["grouped_by"] == "image"


def test_several_labels_a_line_are_multilabel_with_unknowns(tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = {"a b.png": "1 0 -1", "c.png": "0 0 1", "d.png": "1 1 0", "e.png": "0 1 0"}
    for k, name in enumerate(rows):
        Image.new("RGB", (6, 6), (k, 0, 0)).save(root / "img" / name)
    (root / "train.txt").write_text("a b.png,1,0,-1\nc.png,0,0,1\n\n")  # commas: a name may hold a space
    (root / "val.txt").write_text("d.png 1 1 0\n")
    (root / "test.txt").write_text("e.png  0 1 0\n")
    e = {"format": "lists", "root": str(root), "images": "img", "size": 4, "class_names": ["x", "y", "z"],
         "files": {"train": "train.txt", "val": "val.txt", "test": "test.txt"}}
    raw = read_dataset("m", e)
    assert raw.task == "multilabel" and raw.class_names == ["x", "y", "z"]
    np.testing.assert_array_equal(raw.splits["train"][1], np.asarray([[1, 0, np.nan], [0, 0, 1]], np.float32))
    np.testing.assert_array_equal(raw.splits["test"][1], np.asarray([[0, 1, 0]], np.float32))
    with pytest.raises(ConfigError, match=r"datasets.m.class_names has 2 names but the lists carry 3 labels"):
        read_dataset("m", {**e, "class_names": ["x", "y"]})
    (root / "test.txt").write_text("e.png 0 2 0\n")
    with pytest.raises(DataError, match=r"test\.txt line 1: label 2 is '2'; multilabel lines hold 1"):
        read_dataset("m", e)


def named_labels(lines):
    for split, text in lines.items():
        lines[split] = [line.replace(",1", ",TB").replace(",0", ",normal") for line in text]


def test_string_labels_and_class_names(tmp_path):
    root, folder, truth = write_shenzhen(tmp_path, hook=named_labels)
    raw = read_dataset("sz", entry(root, folder))
    assert raw.class_names == ["TB", "normal"]  # sorted
    np.testing.assert_array_equal(raw.splits["test"][1], [1 - truth[p.name] for p in raw.splits["test"][0].paths])
    raw = read_dataset("sz", entry(root, folder, class_names=["normal", "TB"]))
    np.testing.assert_array_equal(raw.splits["test"][1], [truth[p.name] for p in raw.splits["test"][0].paths])
    with pytest.raises(DataError, match=r"label 'TB' is not one of datasets.sz.class_names \(normal, tb\)"):
        read_dataset("sz", entry(root, folder, class_names=["normal", "tb"]))


@pytest.mark.parametrize("hook,message", [
    (lambda lines: lines["test"].__setitem__(2, "CHNCXR_0404_0.png,0"),
     r"ShenzenCXR_test_data\.txt line 3: image .*CHNCXR_0404_0\.png does not exist; is the download complete"),
    (lambda lines: lines["test"].__setitem__(0, lines["train"][4]),
     r"ShenzenCXR_test_data\.txt line 1: image 'CHNCXR_0005_0\.png' is also on .*ShenzenCXR_train_data\.txt line 5"),
    (lambda lines: lines["valid"].__setitem__(1, "CHNCXR_0017_0.png"),
     r"ShenzenCXR_valid_data\.txt line 2: expected 'image,label' or 'image l1 \.\.\. lK', got 'CHNCXR_0017_0\.png'"),
    (lambda lines: lines["valid"].__setitem__(1, lines["valid"][1] + ",1"),
     r"ShenzenCXR_valid_data\.txt line 2: 2 label\(s\), but .* line 1 has 1"),
    (lambda lines: lines["train"].__setitem__(0, "CHNCXR_0001_0.png,3"),
     r"ShenzenCXR_train_data\.txt line 1: label '3' is not a class index 0\.\.1 \(normal, tuberculosis\)"),
    (lambda lines: lines["train"].__setitem__(0, "../CHNCXR_0001_0.png,0"),
     r"ShenzenCXR_train_data\.txt line 1, image is '\.\./CHNCXR_0001_0\.png', which names no file inside"),
])
def test_bad_lists_are_named(tmp_path, hook, message):
    root, folder, _ = write_shenzhen(tmp_path, hook=hook)
    with pytest.raises(DataError, match=message):
        read_dataset("sz", entry(root, folder, class_names=["normal", "tuberculosis"]))


def test_a_missing_list_and_bad_entries(tmp_path):
    root, folder, _ = write_shenzhen(tmp_path)
    (folder / "ShenzenCXR_valid_data.txt").unlink()
    with pytest.raises(DataError, match=r"ShenzenCXR_valid_data\.txt does not exist; datasets.sz.files.val names it"):
        read_dataset("sz", entry(root, folder))
    with pytest.raises(ConfigError, match=r"datasets.sz.files: split\(s\) valid unknown"):
        check_entry("sz", {**entry(root, folder), "files": {"train": "a.txt", "valid": "b.txt"}})
    with pytest.raises(ConfigError, match=r"datasets.sz.files is \['a.txt'\]; give a mapping"):
        check_entry("sz", {**entry(root, folder), "files": ["a.txt"]})
    with pytest.raises(ConfigError, match=r"datasets.sz.files is \{'val': 'a.txt'\}; .*train required"):
        check_entry("sz", {**entry(root, folder), "files": {"val": "a.txt"}})
