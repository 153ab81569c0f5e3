"""NIH ChestX-ray14 on a tiny copy of its downloaded layout (medtransfer.data.formats.chestxray14)."""

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import build_cache, read_dataset, read_info, read_split
from medtransfer.errors import DataError

# NIH's order, typed from the NIH README / Wang et al. 2017 and Hosseinzadeh Taher et al.'s
# main_classification.py (not imported from the reader, so a reordered constant fails here)
NIH = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
       "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
HEADER_2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
HEADER_2020 = HEADER_2017.rstrip(",")
PATIENTS = 24


def findings(i):
    """The findings of image i: every fifth none, else one or two (distinct) labels."""
    if i % 5 == 0:
        return []
    return sorted({NIH[i % 14], NIH[(3 * i + 1) % 14]}) if i % 2 else [NIH[i % 14]]


def gray(i):  # a flat gray per image, so its pixels tell which image it is
    return 10 + 3 * i


def write_nih(base, layout="box", hook=None):
    """Data_Entry CSV, train_val_list.txt, test_list.txt and PNGs; returns (root, images), images
    a list of (name, patient, findings, is_test)."""
    root = base / "ChestXray-NIHCC"
    images, i = [], 0
    for patient in range(1, PATIENTS + 1):
        for follow_up in range(1 + patient % 3):
            images.append((f"{patient:08d}_{follow_up:03d}.png", patient, findings(i), patient % 4 == 0, i))
            i += 1
    v2020 = layout == "kaggle"
    lines = [HEADER_2020 if v2020 else HEADER_2017]
    for name, patient, found, _, k in images:
        cell = "|".join(found) or "No Finding"
        age = f"{40 + patient}" if v2020 else f"{40 + patient:03d}Y"
        lines.append(f"{name},{cell},{k % 3},{patient},{age},M,PA,2500,2048,0.143,0.143" + ("" if v2020 else ","))
    for index, (name, *_, k) in enumerate(images):
        folder = root / (f"images_{1 + index * 3 // len(images):03d}/images" if v2020 else "images")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (12, 10), gray(k)).save(folder / name)
    lists = {"train_val_list.txt": [n for n, _, _, test, _ in images if not test],
             "test_list.txt": [n for n, _, _, test, _ in images if test]}
    if hook:
        hook(lines, lists, images)
    (root / ("Data_Entry_2017_v2020.csv" if v2020 else "Data_Entry_2017.csv")).write_text("\n".join(lines) + "\n")
    for file, names in lists.items():
        (root / file).write_text("\n".join(names) + "\n")
    return root, images


def entry(root, **kw):
    return {"format": "chestxray14", "root": str(root), "size": 6, "workers": 2, **kw}


def expected_vector(found):
    return np.asarray([1.0 if label in found else 0.0 for label in NIH], np.float32)


@pytest.mark.parametrize("layout", ["box", "kaggle"])
def test_official_lists_multilabel_and_patient_disjoint_val(tmp_path, layout):
    root, images = write_nih(tmp_path, layout)
    raw = read_dataset("cx", entry(root, val_fraction=0.2))
    assert raw.task == "multilabel" and raw.class_names == NIH and raw.attributes["metric"] == "auc"
    by_gray = {gray(k): (name, patient, found, test) for name, patient, found, test, k in images}
    names, patients = {}, {}
    for split, (decoded, labels) in raw.splits.items():
        pixels = decoded[:]
        assert pixels.shape == (len(labels), 1, 6, 6) and labels.dtype == np.float32
        rows = [by_gray[int(v)] for v in pixels[:, 0, 3, 3]]  # PNG is lossless: the image's own gray
        assert [p.name for p in decoded.paths] == [r[0] for r in rows]
        np.testing.assert_array_equal(labels, np.stack([expected_vector(r[2]) for r in rows]))
        names[split], patients[split] = {r[0] for r in rows}, {r[1] for r in rows}
    assert names["test"] == {n for n, _, _, test, _ in images if test}  # the official test list, whole
    assert names["train"] | names["val"] == {n for n, _, _, test, _ in images if not test}
    assert not names["train"] & names["val"]
    assert not patients["train"] & patients["val"] and not patients["test"] & (patients["train"] | patients["val"])
    train_val_patients = len(patients["train"] | patients["val"])
    assert len(patients["val"]) == pytest.approx(0.2 * train_val_patients, abs=2)
    assert raw.attributes["patients"] == {s: len(p) for s, p in patients.items()}
    # "No Finding" rows are all zero, and a two-finding row has two ones
    assert any(not r[2] for r in by_gray.values()) and any(len(r[2]) == 2 for r in by_gray.values())
    assert read_dataset("cx", entry(root, val_fraction=0.2)).splits["val"][0].paths == raw.splits["val"][0].paths
    other = read_dataset("cx", entry(root, val_fraction=0.2, split_seed=1)).splits["val"][0].paths
    assert other != raw.splits["val"][0].paths  # seeded


def write_ht_lists(root, images, flip=None):
    """Hosseinzadeh Taher's Xray14_{train,val,test}_official.txt: 'name l1 ... l14' lines;
    val = the train_val patients p % 4 == 1; ``flip`` names an image whose first label is flipped."""
    out = {}
    for split, keep in (("train", lambda p, t: not t and p % 4 != 1), ("val", lambda p, t: not t and p % 4 == 1),
                        ("test", lambda p, t: t)):
        lines = []
        for name, patient, found, test, _ in images:
            if keep(patient, test):
                vector = expected_vector(found).astype(int)
                if name == flip:
                    vector[0] = 1 - vector[0]
                lines.append(name + " " + " ".join(map(str, vector)))
        out[split] = root / "lists" / f"Xray14_{split}_official.txt"
        out[split].parent.mkdir(exist_ok=True)
        out[split].write_text("\n".join(lines) + "\n")
    return out


def test_split_files_as_hosseinzadeh_taher_ships_them(tmp_path):
    root, images = write_nih(tmp_path)
    flipped = images[7][0]
    files = write_ht_lists(root, images, flip=flipped)
    raw = read_dataset("cx", entry(root, split_files={"train": "lists/Xray14_train_official.txt",
                                                      "val": str(files["val"]), "test": str(files["test"])}))
    for split, path in files.items():
        lines = [line.split() for line in path.read_text().splitlines()]
        decoded, labels = raw.splits[split]
        assert [p.name for p in decoded.paths] == [line[0] for line in lines]
        np.testing.assert_array_equal(labels, np.asarray([line[1:] for line in lines], np.float32))
    assert raw.attributes["labels_differing_from_data_entry"] == 1  # the lists' labels are used, counted
    assert raw.attributes["split_policy"] == "the given split files"
    # an image the lists name but Data_Entry does not (so its patient is unknown)
    extra = "00000099_000.png"
    Image.new("L", (4, 4), 1).save(root / "images" / extra)
    files["val"].write_text(files["val"].read_text() + extra + " 0" * 14 + "\n")
    with pytest.raises(DataError, match=r"Xray14_val_official\.txt line \d+: image '00000099_000\.png' has no row in"):
        read_dataset("cx", entry(root, split_files={s: str(p) for s, p in files.items()}))


def test_split_files_with_a_patient_in_two_splits_and_a_wrong_width(tmp_path):
    root, images = write_nih(tmp_path)
    files = write_ht_lists(root, images)
    train_lines = files["train"].read_text().splitlines()
    files["val"].write_text(files["val"].read_text() + train_lines[0] + "\n")
    files["train"].write_text("\n".join(train_lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"patient\(s\) in both train and val"):
        read_dataset("cx", entry(root, split_files={s: str(p) for s, p in files.items()}))
    files["test"].write_text("00000004_000.png 0 1\n")
    with pytest.raises(DataError, match=r"Xray14_test_official\.txt line 1: 2 label\(s\); ChestX-ray14 lists carry 14"):
        read_dataset("cx", entry(root, split_files={s: str(p) for s, p in files.items()}))


def test_bad_downloads_are_named(tmp_path):
    root, images = write_nih(tmp_path / "a")
    missing = images[5][0]
    (root / "images" / missing).unlink()
    line = (root / "test_list.txt" if images[5][3] else root / "train_val_list.txt").read_text().split().index(missing)
    with pytest.raises(DataError, match=rf"list\.txt line {line + 1}: image {missing} is in no image folder "
                                        r"\(images/\); is the download complete"):
        read_dataset("cx", entry(root))

    root, _ = write_nih(tmp_path / "b")
    (root / "test_list.txt").unlink()
    with pytest.raises(DataError, match=r"test_list\.txt does not exist: it is part of the ChestX-ray14 download"):
        read_dataset("cx", entry(root))
    (root / "Data_Entry_2017.csv").unlink()
    with pytest.raises(DataError, match=r"neither Data_Entry_2017_v2020\.csv nor Data_Entry_2017\.csv is there"):
        read_dataset("cx", entry(root))

    def unknown_finding(lines, lists, images):
        lines[3] = lines[3].replace(lines[3].split(",")[1], "Cardiomegally", 1)

    root, _ = write_nih(tmp_path / "c", hook=unknown_finding)
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv row 4: 'Finding Labels' is 'Cardiomegally'"):
        read_dataset("cx", entry(root))

    def in_both(lines, lists, images):
        lists["test_list.txt"].append(lists["train_val_list.txt"][0])

    root, _ = write_nih(tmp_path / "d", hook=in_both)
    with pytest.raises(DataError, match=r"test_list\.txt line \d+: image '00000001_000\.png' is also on "
                                        r".*train_val_list\.txt line 1"):
        read_dataset("cx", entry(root))


def test_the_cache_holds_the_multilabel_labels(tmp_path):
    """Through the real pipeline: build_cache reads the entry and writes the HDF5 cache."""
    root, images = write_nih(tmp_path, "kaggle")
    build_cache("cx14", entry(root, val_fraction=0.25), tmp_path / "cx14.h5")
    info = read_info(tmp_path / "cx14.h5")
    assert info.task == "multilabel" and info.class_names == NIH and info.channels == 1 and info.format == "chestxray14"
    assert info.attributes["data_entry"] == "Data_Entry_2017_v2020.csv"
    by_gray = {gray(k): found for _, _, found, _, k in images}
    total = 0
    for split in ("train", "val", "test"):
        pixels, labels = read_split(tmp_path / "cx14.h5", split)
        assert labels.shape == (len(pixels), 14) and labels.dtype == np.float32
        np.testing.assert_array_equal(labels, np.stack([expected_vector(by_gray[int(v)]) for v in pixels[:, 0, 3, 3]]))
        total += len(labels)
    assert total == len(images) and info.split_sizes["test"] == sum(im[3] for im in images)


def test_a_supervised_source_pretrains_on_chestxray14(tmp_path, monkeypatch):
    """Hosseinzadeh Taher et al.'s domain-adapted source: supervised pretraining on the 14 NIH
    findings (BCE over the multi-label cache, validation mean AUC in the history), whose weights
    then start a WT run like any source."""
    import torch

    from conftest import tiny_config
    from medtransfer.study import Study
    from medtransfer.training.pretrain import pretrain

    root, _ = write_nih(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    config["datasets"]["cxr14"] = entry(root, size=16, val_fraction=0.3)
    config["sources"] = {"cxr14-sup": {"pretrain": {"dataset": "cxr14", "method": "supervised"}}}
    config["study"]["inits"] = ["RI", {"WT": "cxr14-sup"}]
    config["analysis"] = {"pairs": [], "fid": False}
    config["pretrain"] = {"epochs": 2, "batch_size": 8, "select_on": "val_loss"}
    study = Study(config)
    build_cache("cxr14", study.datasets["cxr14"], "results/data/cxr14.h5")
    assert read_info("results/data/cxr14.h5").task == "multilabel"
    spec = study.pretrain_spec("cxr14-sup", "cbr_tiny")
    meta = pretrain(spec, device="cpu", progress=False)
    assert [row["epoch"] for row in meta["history"]] == [1, 2]
    assert all("val_auc" in row and np.isfinite(row["val_loss"]) for row in meta["history"])
    saved = torch.load(f"{spec['out_dir']}/model.pt", weights_only=True)
    assert saved["num_classes"] == len(NIH)
