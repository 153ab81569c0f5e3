"""Image-folder and CSV formats on fixtures written to tmp_path (medtransfer.data.formats.folders)."""

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import build_cache, read_dataset, read_info, read_split
from medtransfer.errors import ConfigError, DataError

# class k images are a constant colour, so labels can be checked against pixels after resizing
COLOURS = {"benign": (10, 20, 30), "malignant": (200, 150, 100), "normal": (90, 90, 250)}


def write_image(path, colour, size=(13, 9), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def gray_of(rgb):  # PIL's ITU-R 601-2 luma, as Image.convert("L") computes it
    r, g, b = rgb
    return (r * 299 + g * 587 + b * 114 + 500) // 1000


@pytest.fixture
def class_tree(tmp_path):
    root = tmp_path / "tree"
    for name, count in (("benign", 20), ("malignant", 10), ("normal", 30)):
        for i in range(count):
            write_image(root / name / f"img{i:03d}.png", COLOURS[name])
    (root / "normal" / "notes.txt").write_text("not an image")
    return root


def check_colours(images, labels, class_names, channels):
    for image, label in zip(images, labels):
        colour = COLOURS[class_names[label]]
        expected = colour if channels == 3 else (gray_of(colour),)
        assert tuple(image[:, 0, 0]) == expected and (image == image[:, :1, :1]).all()


def test_imagefolder_classes_and_seeded_split(class_tree):
    entry = {"format": "imagefolder", "root": str(class_tree), "size": 8, "workers": 2}
    raw = read_dataset("mine", entry)
    assert raw.class_names == ["benign", "malignant", "normal"] and raw.task == "multiclass"
    sizes = {s: np.bincount(raw.splits[s][1], minlength=3).tolist() for s in raw.splits}
    assert sizes == {"train": [14, 7, 21], "val": [2, 1, 3], "test": [4, 2, 6]}  # 0.1 / 0.2 per class
    assert "split_seed 0" in raw.attributes["split_policy"]
    for images, labels in raw.splits.values():
        assert images.shape == (len(labels), 3, 8, 8)
        check_colours(images, labels, raw.class_names, 3)
    again = read_dataset("mine", entry)
    other_seed = read_dataset("mine", {**entry, "split_seed": 1})
    np.testing.assert_array_equal(again.splits["val"][0], raw.splits["val"][0])
    assert raw.checksum == again.checksum
    assert other_seed.checksum == raw.checksum  # same files
    write_image(class_tree / "normal" / "extra.png", COLOURS["normal"])
    assert read_dataset("mine", entry).checksum != raw.checksum


def test_imagefolder_split_folders_gray(tmp_path):
    root = tmp_path / "splits"
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        for name in ("benign", "malignant"):
            for i in range(count):
                write_image(root / split / name / f"{i}.jpg", COLOURS[name])
    raw = read_dataset("mine", {"format": "imagefolder", "root": str(root), "size": 5, "channels": 1,
                                "resize": "nearest"})
    assert raw.task == "binary" and raw.attributes["split_policy"] == "source splits"
    assert {s: len(raw.splits[s][1]) for s in raw.splits} == {"train": 12, "val": 4, "test": 6}
    for images, labels in raw.splits.values():
        assert images.shape[1:] == (1, 5, 5)
        for image, label in zip(images, labels):  # JPEG of a flat colour is flat to within 1-2 levels
            assert abs(int(image[0, 2, 2]) - gray_of(COLOURS[raw.class_names[label]])) <= 2


def test_imagefolder_16_bit_gray(tmp_path):
    root = tmp_path / "xray"
    for name, value in (("a", 65535), ("b", 257 * 100)):
        for i in range(10):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 6), value, np.uint16)).save(path)
    raw = read_dataset("x", {"format": "imagefolder", "root": str(root), "size": 6, "channels": 1})
    for images, labels in raw.splits.values():
        assert np.all(images[labels == 0] == 255) and np.all(images[labels == 1] == 100)


def test_imagefolder_cache_roundtrip(class_tree, tmp_path):
    path = tmp_path / "cache.h5"
    build_cache("mine", {"format": "imagefolder", "root": str(class_tree), "size": 8, "channels": 1}, path)
    info = read_info(path)
    assert info.channels == 1 and info.image_size == 8 and info.format == "imagefolder"
    assert "stratified" in info.attributes["split_policy"]
    images, labels = read_split(path, "train")
    check_colours(images, labels, info.class_names, 1)


def test_imagefolder_unreadable_image(class_tree, tmp_path):
    (class_tree / "benign" / "broken.png").write_bytes(b"\x89PNG not really")
    # images are decoded while the cache is written (streamed), so the conversion names the file
    with pytest.raises(DataError, match=r"broken\.png cannot be read"):
        build_cache("mine", {"format": "imagefolder", "root": str(class_tree), "size": 8}, tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()


def test_imagefolder_config_errors(class_tree, tmp_path):
    with pytest.raises(ConfigError, match="missing key 'size'"):
        read_dataset("mine", {"format": "imagefolder", "root": str(class_tree)})
    with pytest.raises(DataError, match="does not exist"):
        read_dataset("mine", {"format": "imagefolder", "root": str(tmp_path / "nope"), "size": 8})
    with pytest.raises(DataError, match="'normal' is not in datasets.mine.classes"):
        read_dataset("mine", {"format": "imagefolder", "root": str(class_tree), "size": 8,
                              "classes": ["benign", "malignant"]})


# --- csv -------------------------------------------------------------------------------------------

@pytest.fixture
def csv_root(tmp_path):
    root = tmp_path / "csvdata"
    rows = ["path,diagnosis,grade,split,effusion,mass"]
    for i in range(30):
        name = ["benign", "malignant", "normal"][i % 3]
        write_image(root / "images" / f"{i}.png", COLOURS[name])
        split = ["train"] * 6 + ["valid"] * 2 + ["test"] * 2
        effusion = ["1", "0", "", "-1"][i % 4]
        rows.append(f"images/{i}.png,{name},{i % 3},{split[i % 10]},{effusion},{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def csv_entry(root, **kw):
    return {"format": "csv", "root": str(root), "file": "labels.csv", "path_column": "path", "size": 4, **kw}


def test_csv_string_labels_with_split_column(csv_root):
    raw = read_dataset("c", csv_entry(csv_root, label_column="diagnosis", split_column="split"))
    assert raw.class_names == ["benign", "malignant", "normal"] and raw.task == "multiclass"
    assert {s: len(raw.splits[s][1]) for s in raw.splits} == {"train": 18, "val": 6, "test": 6}
    assert raw.attributes["split_policy"] == "source splits"
    for images, labels in raw.splits.values():
        check_colours(images, labels, raw.class_names, 3)
    assert raw.source.endswith("labels.csv") and len(raw.checksum) == 32


def test_csv_integer_labels_classes_and_ordinal(csv_root):
    raw = read_dataset("c", csv_entry(csv_root, label_column="grade", task="ordinal"))
    assert raw.task == "ordinal" and raw.class_names == ["0", "1", "2"]
    assert sum(len(raw.splits[s][1]) for s in raw.splits) == 30
    assert "stratified" in raw.attributes["split_policy"]
    raw = read_dataset("c", csv_entry(csv_root, label_column="diagnosis",
                                      classes=["normal", "benign", "malignant"]))
    images, labels = raw.splits["train"]
    check_colours(images, labels, raw.class_names, 3)
    assert raw.class_names[0] == "normal"


def test_csv_multilabel_policy(csv_root):
    raw = read_dataset("c", csv_entry(csv_root, label_columns=["effusion", "mass"], split_column="split"))
    assert raw.task == "multilabel" and raw.class_names == ["effusion", "mass"]
    labels = raw.splits["train"][1]
    assert labels.dtype == np.float32 and labels.shape == (18, 2)
    # train rows are i % 10 < 6; effusion cycles 1, 0, empty, -1 -> 1, 0, NaN, NaN
    rows = [i for i in range(30) if i % 10 < 6]
    expected = np.array([[[1.0, 0.0, np.nan, np.nan][i % 4], i % 2] for i in rows], np.float32)
    np.testing.assert_array_equal(labels, expected)


def test_csv_bad_inputs(csv_root):
    csv = csv_root / "labels.csv"
    with pytest.raises(DataError, match=r"labels\.csv: column\(s\) 'label' missing"):
        read_dataset("c", csv_entry(csv_root, label_column="label"))
    with pytest.raises(DataError, match=r"labels\.csv row 3: label 'malignant' is not one of the classes"):
        read_dataset("c", csv_entry(csv_root, label_column="diagnosis", classes=["benign", "normal"]))
    lines = csv.read_text().splitlines()
    lines[5] = lines[5].replace("images/4.png", "images/missing.png")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels\.csv row 6: image .*missing\.png does not exist"):
        read_dataset("c", csv_entry(csv_root, label_column="diagnosis"))
    lines[5] = lines[5].replace(",train,", ",holdout,").replace("images/missing.png", "images/4.png")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 6: 'split' is 'holdout'"):
        read_dataset("c", csv_entry(csv_root, label_column="diagnosis", split_column="split"))
    assert lines[5].endswith(",holdout,1,0")
    lines[5] = lines[5].replace(",holdout,1,0", ",train,2,0")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 6: column 'effusion' is 2"):
        read_dataset("c", csv_entry(csv_root, label_columns=["effusion", "mass"]))
    with pytest.raises(ConfigError, match="exactly one of 'label_column'"):
        read_dataset("c", csv_entry(csv_root))
