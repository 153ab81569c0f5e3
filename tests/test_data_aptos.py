"""APTOS 2019 on a tiny copy of its Kaggle layout (medtransfer.data.formats.aptos)."""

import numpy as np
import pytest
from PIL import Image

import medtransfer.data.formats.aptos  # noqa: F401  registers the format
from medtransfer.data import read_dataset, read_info, read_split
from medtransfer.data.streaming import write_cache
from medtransfer.errors import DataError

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]  # one per grade


def write_competition(root, per_grade=10, rows_hook=None):
    """train.csv (id_code,diagnosis), test.csv (id_code), train_images/*.png, test_images/*.png."""
    rng = np.random.default_rng(0)
    lines = ["id_code,diagnosis"]
    (root / "train_images").mkdir(parents=True)
    (root / "test_images").mkdir()
    for i in range(5 * per_grade):
        code = f"{rng.integers(16**11, 16**12):012x}"
        grade = i % 5
        Image.new("RGB", (31, 23), COLOURS[grade]).save(root / "train_images" / f"{code}.png")
        lines.append(f"{code},{grade}")
    if rows_hook:
        rows_hook(lines)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "test.csv").write_text("id_code\n0005cfc8afb6\n")
    Image.new("RGB", (31, 23), (0, 0, 0)).save(root / "test_images" / "0005cfc8afb6.png")
    return root


def entry(root, **kw):
    return {"format": "aptos2019", "root": str(root), "size": 6, "workers": 2, **kw}


def test_ordinal_grades_and_stratified_splits(tmp_path):
    root = write_competition(tmp_path / "aptos2019-blindness-detection")
    raw = read_dataset("aptos", entry(root))
    assert raw.task == "ordinal" and len(raw.class_names) == 5 and raw.class_names[0].startswith("0")
    assert raw.attributes["metric"] == "kappa"
    # 10 per grade: test = 1 of 5 stratified folds (2 per grade), val = 1 of 8 of the rest (1 per grade)
    counts = {s: np.bincount(l, minlength=5).tolist() for s, (_, l) in raw.splits.items()}
    assert counts == {"train": [7] * 5, "val": [1] * 5, "test": [2] * 5}
    names = [set(p.name for p in raw.splits[s][0].paths) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for images, labels in raw.splits.values():  # every image carries its own grade's colour
        pixels = images[:]
        assert pixels.shape == (len(labels), 3, 6, 6)
        for image, label in zip(pixels, labels):
            assert tuple(image[:, 3, 3]) == COLOURS[label]
    other = read_dataset("aptos", entry(root, split_seed=1))
    assert names[2] != set(p.name for p in other.splits["test"][0].paths)
    assert "split_seed 0" in raw.attributes["split_policy"]


def test_cache(tmp_path):
    root = write_competition(tmp_path / "a", per_grade=4)
    e = entry(root, val_fraction=0.25, test_fraction=0.25)
    write_cache("aptos", e, read_dataset("aptos", e), tmp_path / "aptos.h5", progress=False)
    info = read_info(tmp_path / "aptos.h5")
    assert info.task == "ordinal" and info.attributes["metric"] == "kappa" and info.format == "aptos2019"
    assert sum(info.split_sizes.values()) == 20
    images, labels = read_split(tmp_path / "aptos.h5", "val")
    assert [tuple(i[:, 0, 0]) for i in images] == [COLOURS[l] for l in labels]


def test_malformed_inputs(tmp_path):
    root = write_competition(tmp_path / "a", rows_hook=lambda lines: lines.__setitem__(7, lines[7][:-1] + "5"))
    with pytest.raises(DataError, match=r"train\.csv row 8: 'diagnosis' is '5'"):
        read_dataset("aptos", entry(root))
    root = write_competition(tmp_path / "b", rows_hook=lambda lines: lines.__setitem__(0, "id_code,grade"))
    with pytest.raises(DataError, match=r"train\.csv: column\(s\) 'diagnosis' missing"):
        read_dataset("aptos", entry(root))
    root = write_competition(tmp_path / "c")
    victim = sorted((root / "train_images").iterdir())[0]
    victim.write_bytes(b"garbage")
    raw = read_dataset("aptos", entry(root))
    with pytest.raises(DataError, match=rf"train\.csv row \d+: image .*{victim.name} cannot be read"):
        write_cache("aptos", entry(root), raw, tmp_path / "c.h5", progress=False)
    victim.unlink()
    with pytest.raises(DataError, match=rf"train\.csv row \d+: image .*{victim.name} does not exist"):
        read_dataset("aptos", entry(root))
