"""CheXpert on a tiny copy of its downloaded layout (medtransfer.data.formats.chexpert)."""

import numpy as np
import pytest
from PIL import Image

import medtransfer.data.formats.chexpert  # noqa: F401  registers the format
from medtransfer.data import read_dataset, read_info, read_split
from medtransfer.data.formats.chexpert import COMPETITION, OBSERVATIONS
from medtransfer.data.streaming import write_cache
from medtransfer.errors import ConfigError, DataError

HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
          "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
          "Fracture,Support Devices")
NAN = np.nan

# Label cells of the 14 observations (CSV order) for the first train.csv rows; rows after these cycle.
CELLS = [
    # NoF  EnlC  Card  LOp   LLe   Edema Cons  Pneu  Atel  PTX   PlEf  PlO   Frac  SupD
    ["1.0", "", "", "", "", "", "", "", "", "0.0", "", "", "", "1.0"],
    ["", "", "-1.0", "1.0", "", "-1.0", "0.0", "", "-1.0", "", "1.0", "", "", ""],
    ["", "-1.0", "1.0", "", "", "1.0", "-1.0", "-1.0", "", "", "-1.0", "", "0.0", "1.0"],
    ["", "", "0.0", "1.0", "", "0.0", "", "", "1.0", "", "0.0", "", "", ""],
]


def gray(index):  # a distinct flat gray per image, so pixels tell which row an image came from
    return 12 + 6 * index


def write_release(base, prefix="CheXpert-v1.0-small", n_train_patients=20, broken=None):
    """CheXpert-v1.0-small as unpacked: train.csv, valid.csv, train/ and valid/ with JPEGs."""
    root = base / prefix if prefix else base
    index = 0
    csv = {}
    for split, patients, first in (("train", n_train_patients, 1), ("valid", 4, 64541)):
        lines = [HEADER]
        for p in range(patients):
            patient = f"patient{first + p:05d}"
            views = ["frontal", "lateral"] if p % 3 == 0 else ["frontal"]
            for v, view in enumerate(views, start=1):
                rel = f"{split}/{patient}/study1/view{v}_{view}.jpg"
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (20, 17), gray(index)).save(path, quality=95)
                cells = CELLS[index % len(CELLS)] if split == "train" else \
                    ["1.0" if (p + k) % 3 == 0 else "0.0" for k in range(14)]
                ap = "AP" if view == "frontal" else ""
                csv_path = f"{prefix}/{rel}" if prefix else rel
                lines.append(f"{csv_path},Female,{50 + p},{view.capitalize()},{ap}," + ",".join(cells))
                index += 1
        csv[split] = lines
    if broken:
        broken(csv)
    for split, lines in csv.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def release(tmp_path):
    return write_release(tmp_path)


def entry(root, **kw):
    return {"format": "chexpert", "root": str(root), "size": 8, "workers": 2, **kw}


def row_index(image):  # invert gray(): which fixture image this is
    return int(round((float(image.mean()) - 12) / 6))


def expected_row(cells, policy, unmentioned=0.0):
    mapping = {"1.0": 1.0, "0.0": 0.0, "": unmentioned, "-1.0": {"ones": 1.0, "zeros": 0.0, "ignore": NAN}[policy]}
    return np.array([mapping[c] for c in cells], np.float32)


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
def test_uncertainty_policies_all_labels(release, policy):
    raw = read_dataset("cx", entry(release, uncertainty=f"U-{policy.capitalize()}"))
    assert raw.task == "multilabel" and raw.class_names == list(OBSERVATIONS)
    assert raw.attributes["metric"] == "auc"
    for split in ("train", "val"):
        images, labels = raw.splits[split]
        assert labels.dtype == np.float32 and labels.shape == (len(images), 14)
        pixels = images[:]
        for image, label in zip(pixels, labels):
            index = row_index(image)
            np.testing.assert_array_equal(label, expected_row(CELLS[index % 4], policy))
    assert set(raw.attributes["uncertainty_policy"].values()) == {f"U-{policy.capitalize()}"}


def test_competition_preset_per_label_policy_and_unmentioned(release):
    policy = {"Atelectasis": "U-Ones", "Edema": "u_ones", "default": "U-Zeros"}
    raw = read_dataset("cx", entry(release, labels="competition", uncertainty=policy, unmentioned="ignore"))
    assert raw.class_names == list(COMPETITION) == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                                    "Pleural Effusion"]
    images, labels = raw.splits["train"]
    columns = [OBSERVATIONS.index(c) for c in COMPETITION]
    for image, label in zip(images[:], labels):
        cells = [CELLS[row_index(image) % 4][c] for c in columns]
        expected = [1.0 if c == "1.0" else 0.0 if c == "0.0" else NAN if c == "" else
                    (1.0 if name in ("Atelectasis", "Edema") else 0.0) for c, name in zip(cells, COMPETITION)]
        np.testing.assert_array_equal(label, np.array(expected, np.float32))
    assert raw.attributes["uncertainty_policy"]["Cardiomegaly"] == "U-Zeros"


def test_patient_level_splits_and_frontal_only(release):
    raw = read_dataset("cx", entry(release, frontal_only=True, val_fraction=0.2))
    patients = {}
    for split, (images, _) in raw.splits.items():
        for path in images.paths:
            assert path.name.endswith("_frontal.jpg")
            patients.setdefault(path.parts[-3], set()).add(split)
    assert all(len(splits) == 1 for splits in patients.values())  # no patient in two splits
    assert {p for p, s in patients.items() if s == {"test"}} == {f"patient{64541 + i:05d}" for i in range(4)}
    sizes = {s: len(raw.splits[s][1]) for s in raw.splits}
    # frontal only: one image per patient; about 20% of the 20 training patients go to val
    assert sizes["test"] == 4 and sizes["train"] + sizes["val"] == 20 and 2 <= sizes["val"] <= 6
    assert raw.attributes["patients"] == {"train": sizes["train"], "val": sizes["val"], "test": 4}
    assert raw.attributes["made_splits"]["grouped_by"] == "patient"
    # all views: patients with a lateral view bring two images, still one split each
    everything = read_dataset("cx", entry(release))
    assert sum(len(l) for _, l in everything.splits.values()) == 20 + 7 + 4 + 2
    again = read_dataset("cx", entry(release))
    assert [p.name for p in again.splits["val"][0].paths] == [p.name for p in everything.splits["val"][0].paths]


def test_cache_holds_labels_and_policy(release, tmp_path):
    e = entry(release, labels=["Edema", "Cardiomegaly"], uncertainty="U-Ignore")
    raw = read_dataset("cx", e)
    write_cache("cx", e, raw, tmp_path / "cx.h5", progress=False)
    info = read_info(tmp_path / "cx.h5")
    assert info.task == "multilabel" and info.class_names == ["Edema", "Cardiomegaly"] and info.channels == 1
    assert info.attributes["metric"] == "auc" and info.attributes["uncertainty_policy"]["Edema"] == "U-Ignore"
    assert "valid.csv" in info.attributes["split_policy"]
    images, labels = read_split(tmp_path / "cx.h5", "test")
    assert images.shape == (len(labels), 1, 8, 8) and not np.isnan(labels).any()  # consensus labels


def test_root_above_release_and_kaggle_paths(tmp_path):
    write_release(tmp_path / "a")
    assert len(read_dataset("cx", entry(tmp_path / "a")).splits["test"][1]) == 6
    kaggle = write_release(tmp_path / "b", prefix="")  # paths written as train/patient.../...
    assert len(read_dataset("cx", entry(kaggle)).splits["test"][1]) == 6


def test_malformed_inputs(tmp_path):
    def drop_column(csv):
        csv["train"] = [line.rsplit(",", 1)[0] for line in csv["train"]]

    root = write_release(tmp_path / "a", broken=drop_column)
    with pytest.raises(DataError, match=r"train\.csv: column\(s\) 'Support Devices' missing"):
        read_dataset("cx", entry(root))

    def bad_label(csv):
        csv["train"][3] = csv["train"][3].replace(",1.0,", ",2.0,", 1)

    root = write_release(tmp_path / "b", broken=bad_label)
    with pytest.raises(DataError, match=r"train\.csv row 4: .* is '2.0'"):
        read_dataset("cx", entry(root))

    def shared_patient(csv):
        csv["valid"][1] = csv["valid"][1].replace("patient64541", "patient00002")

    root = write_release(tmp_path / "c", broken=shared_patient)
    with pytest.raises(DataError, match="patient.*in both train.csv and valid.csv"):
        read_dataset("cx", entry(root))

    root = write_release(tmp_path / "d")
    (root / "train" / "patient00005" / "study1" / "view1_frontal.jpg").unlink()
    with pytest.raises(DataError, match=r"train\.csv row \d+: image .*patient00005.* does not exist"):
        read_dataset("cx", entry(root))

    root = write_release(tmp_path / "e")
    (root / "train" / "patient00005" / "study1" / "view1_frontal.jpg").write_bytes(b"\xff\xd8 truncated")
    raw = read_dataset("cx", entry(root))
    with pytest.raises(DataError, match=r"train\.csv row \d+: image .*patient00005.* cannot be read"):
        write_cache("cx", entry(root), raw, tmp_path / "e.h5", progress=False)

    with pytest.raises(ConfigError, match="uncertainty is 'U-Maybe'"):
        read_dataset("cx", entry(root, uncertainty="U-Maybe"))
    with pytest.raises(ConfigError, match="not CheXpert observations"):
        read_dataset("cx", entry(root, labels=["Edema", "Flu"]))
    with pytest.raises(DataError, match="no train.csv"):
        read_dataset("cx", entry(tmp_path / "nowhere"))
