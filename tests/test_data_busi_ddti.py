"""Breast (``busi``) and thyroid (``ddti``) ultrasound on tiny copies of their download layouts:
Dataset_BUSI_with_GT's class folders with ``_mask`` files, DDTI's ``<case>.xml`` reports with
``<case>_<k>.jpg`` images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import build_cache, read_dataset, read_info, read_masks, read_split
from medtransfer.errors import ConfigError, DataError
from medtransfer.study.data import is_segmentation

SIDE = 12

# --------------------------------------------------------------------------------------------- BUSI


@pytest.fixture
def busi(tmp_path):
    """10 images per class; every image has a mask (normal: empty), every third two masks."""
    rng = np.random.default_rng(0)
    root = tmp_path / "Dataset_BUSI_with_GT"
    truth = {}
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
        for n in range(1, 11):
            image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / cls / f"{cls} ({n}).png")
            masks = [np.zeros((SIDE, SIDE), np.uint8) for _ in range(2 if n % 3 == 0 else 1)]
            if cls != "normal":
                masks[0][2:6, 3:8] = 255
                if len(masks) == 2:
                    masks[1][8:11, 1:4] = 255
            for k, mask in enumerate(masks):
                Image.fromarray(mask).save(root / cls / f"{cls} ({n})_mask{'' if k == 0 else f'_{k}'}.png")
            truth[image.tobytes()] = (cls, np.maximum.reduce(masks) > 127)
    return root, truth


def busi_entry(root, **extra):
    return {"format": "busi", "root": str(root), "size": SIDE, "resize": "nearest", "workers": 2, **extra}


def cached(out):
    return {split: (*read_split(out, split),) for split in ("train", "val", "test")}


def test_busi_classes_are_its_folders_and_masks_are_never_images(busi, tmp_path):
    root, truth = busi
    out = tmp_path / "busi.h5"
    build_cache("busi", busi_entry(root), out)
    info = read_info(out)
    assert info.task == "multiclass" and info.class_names == ["benign", "malignant", "normal"]
    assert sum(info.split_sizes.values()) == 30  # 30 images, not the 40 mask files
    for images, labels in cached(out).values():
        assert len(images) > 0
        for image, label in zip(images, labels):
            assert info.class_names[label] == truth[image.transpose(1, 2, 0).tobytes()][0]


def test_busi_reads_juodelytes_fold_csvs_against_its_own_files(busi, tmp_path):
    """Juodelyte et al.'s committed folds (DovileDo/revisiting-transfer data/breast/{train,val,test}_fold{n}.csv:
    index, path with their own '../../../data/breast/' prefix over a flat folder, class) select the
    same images in the cache: each image's role per fold is what the CSVs say of its file."""
    import h5py
    import pandas as pd

    from medtransfer.data.cache import POOL, read_folds

    root, _ = busi
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.png") if "_mask" not in p.name)
    order = np.random.default_rng(1).permutation(len(files))
    expected = {}
    for fold, held in enumerate(np.array_split(order, 2)):
        roles = {"train": np.setdiff1d(order, held), "val": held[: len(held) // 3], "test": held[len(held) // 3:]}
        for role, rows in roles.items():
            frame = pd.DataFrame({"path": [f"../../../data/breast/{files[i].split('/')[1]}" for i in rows],
                                  "class": [files[i].split("/")[0] for i in rows]}, index=rows)
            frame.to_csv(tmp_path / f"{role}_fold{fold + 1}.csv")
            expected.update({(files[i], fold): role for i in rows})
    folds = {"files": {r: str(tmp_path / f"{r}_fold{{n}}.csv") for r in ("train", "val", "test")}, "count": 2}
    out = tmp_path / "busi.h5"
    build_cache("busi", busi_entry(root, merge={"normal": "benign"}, folds=folds), out)
    roles = read_folds(out)
    with h5py.File(out) as h5:
        pool = h5[POOL]["images"][...]
    by_pixels = {np.asarray(Image.open(root / f)).tobytes(): f for f in files}
    names = [by_pixels[image.transpose(1, 2, 0).tobytes()] for image in pool]
    role_ids = {"train": 0, "val": 1, "test": 2}
    for row, name in enumerate(names):
        for fold in range(2):
            assert roles[row, fold] == role_ids[expected[(name, fold)]], (name, fold)


def test_busi_merge_normal_into_benign_gives_juodelytes_binary_task(busi):
    root, _ = busi
    raw = read_dataset("busi", busi_entry(root, merge={"normal": "benign"}))
    assert raw.task == "binary" and raw.class_names == ["benign", "malignant"]
    labels = np.concatenate([raw.splits[s][1] for s in ("train", "val", "test")])
    assert (labels == 1).sum() == 10 and (labels == 0).sum() == 20


def test_busi_segmentation_unites_an_images_masks(busi, tmp_path):
    root, truth = busi
    out = tmp_path / "busi-seg.h5"
    build_cache("busi", busi_entry(root, target="segmentation"), out)
    assert read_info(out).class_names == ["background", "lesion"]
    assert is_segmentation(busi_entry(root, target="segmentation")) and not is_segmentation(busi_entry(root))
    total = 0
    for split, (images, labels) in cached(out).items():
        for image, label, mask in zip(images, labels, read_masks(out, split)):
            expected = truth[image.transpose(1, 2, 0).tobytes()][1]
            np.testing.assert_array_equal(mask[0], expected.astype(np.uint8))
            assert label == int(expected.any())
            total += 1
    assert total == 30


def test_busi_bad_input_is_named(busi):
    root, _ = busi
    with pytest.raises(ConfigError, match=r"datasets.busi.merge maps a class folder to another"):
        read_dataset("busi", busi_entry(root, merge={"normal": "cyst"}))
    (root / "benign" / "benign (3).png").unlink()
    with pytest.raises(DataError, match=r"mask .*benign \(3\)_mask.png has no image benign \(3\).png"):
        read_dataset("busi", busi_entry(root))
    for mask in (root / "benign").glob("benign (3)_mask*.png"):
        mask.unlink()
    (root / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(DataError, match=r"image .*malignant \(2\).png has no mask"):
        read_dataset("busi", busi_entry(root, target="segmentation"))
    assert len(np.concatenate([s[1] for s in read_dataset("busi", busi_entry(root)).splits.values()])) == 29
    (root / "normal").rename(root / "Normal cases")
    with pytest.raises(DataError, match=r"has no folder normal/; is 'root' the Dataset_BUSI_with_GT folder"):
        read_dataset("busi", busi_entry(root))


# --------------------------------------------------------------------------------------------- DDTI

# case -> (TI-RADS text, images); the report of case 30 has no images
CASES = {**{c: (t, 1 + c % 2) for c, t in zip(range(1, 25), ["2", "3", "4a", "4b", "4c", "5"] * 4)},
         25: ("", 1), 26: (None, 2), 30: ("4a", 0)}


def write_report(path, number, tirads, marks):
    tirads_element = "<tirads/>" if tirads is None else f"<tirads>{tirads}</tirads>"
    mark_elements = "".join(f"<mark><image>{k}</image><svg>[]</svg></mark>" for k in range(1, marks + 1))
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<case><number>{number}</number><age>49</age><sex>F</sex>'
                    f"<composition>solid</composition><echogenicity>hypoechogenicity</echogenicity>"
                    f"<margins>well defined</margins><calcifications>non</calcifications>{tirads_element}"
                    f"<reportbacaf/><reporteco/>{mark_elements}</case>")


@pytest.fixture
def ddti(tmp_path):
    root = tmp_path / "ddti"
    root.mkdir()
    truth = {}
    for case, (tirads, images) in CASES.items():
        write_report(root / f"{case}.xml", case, tirads, images)
        for k in range(1, images + 1):
            pixels = np.full((SIDE, SIDE, 3), case * 8 + k, np.uint8)  # JPEG keeps a flat image exact
            Image.fromarray(pixels).save(root / f"{case}_{k}.jpg", quality=95)
            truth[case * 8 + k] = (case, tirads)
    return root, truth


def ddti_entry(root, **extra):
    return {"format": "ddti", "root": str(root), "size": SIDE, "workers": 2, **extra}


def expected_label(tirads):
    """Juodelyte et al.: TI-RADS without its letter, malignant when >= 4; no TI-RADS = 1 (benign)."""
    return int(int((tirads or "1").rstrip("abc")) >= 4)


def test_ddti_labels_tirads_4_and_above_malignant_and_keeps_cases_in_one_split(ddti, tmp_path):
    root, truth = ddti
    out = tmp_path / "ddti.h5"
    build_cache("ddti", ddti_entry(root), out)
    info = read_info(out)
    assert info.task == "binary" and info.class_names == ["benign", "malignant"]
    kept = {v: t for v, t in truth.items() if t[1]}  # cases 25 and 26 have no TI-RADS: skipped
    assert sum(info.split_sizes.values()) == len(kept) == 36
    assert info.attributes["cases_without_tirads"]["count"] == 2
    assert info.attributes["reports_without_images"]["count"] == 1
    where = {}
    for split, (images, labels) in cached(out).items():
        assert len(images) > 0
        for image, label in zip(images, labels):
            case, tirads = kept[int(np.round(image.mean()))]
            assert label == expected_label(tirads)
            where.setdefault(case, set()).add(split)
    assert len(where) == 24 and all(len(splits) == 1 for splits in where.values())


def test_ddti_folds_made_here_keep_each_case_in_one_fold(ddti, tmp_path):
    """folds: {k} groups by the patient the format records (the case): a case's images share one
    held-out fold, so no case is on both sides of any fold (the cache's pool keeps the groups)."""
    import h5py

    from medtransfer.data.cache import POOL, read_folds

    root, truth = ddti
    out = tmp_path / "ddti.h5"
    build_cache("ddti", ddti_entry(root, folds={"k": 3}), out)
    roles = read_folds(out)
    with h5py.File(out) as h5:
        groups = h5[POOL]["groups"].asstr()[...]
        pool = h5[POOL]["images"][...]
    cases = [str(truth[int(np.round(image.mean()))][0]) for image in pool]
    assert list(groups) == cases  # the groups are the cases, in pool order
    for fold in range(3):
        for case in set(cases):
            rows = [i for i, c in enumerate(cases) if c == case]
            assert len({int(roles[i, fold] == 0) for i in rows}) == 1, (case, fold)  # all train or all held out


def test_ddti_missing_tirads_benign_keeps_those_cases_as_juodelytes_code(ddti):
    root, truth = ddti
    raw = read_dataset("ddti", ddti_entry(root, missing_tirads="benign"))
    labels = np.concatenate([raw.splits[s][1] for s in ("train", "val", "test")])
    assert len(labels) == len(truth) == 39
    assert labels.sum() == sum(expected_label(t) for _, t in truth.values())
    assert raw.attributes["cases_without_tirads"] == {"count": 2, "policy": "benign", "first": ["25", "26"]}


def test_ddti_bad_input_is_named(ddti):
    root, _ = ddti
    with pytest.raises(ConfigError, match="datasets.ddti.missing_tirads is 'drop'; allowed: skip, benign"):
        read_dataset("ddti", ddti_entry(root, missing_tirads="drop"))
    write_report(root / "7.xml", 7, "6", 1)
    with pytest.raises(DataError, match=r"7.xml: <tirads> is '6'; expected a TI-RADS category 1-5"):
        read_dataset("ddti", ddti_entry(root))
    write_report(root / "7.xml", 7, "5", 1)
    (root / "3.xml").unlink()
    with pytest.raises(DataError, match=r"image .*3_1.jpg has no report 3.xml"):
        read_dataset("ddti", ddti_entry(root))
    for report in root.glob("*.xml"):
        report.unlink()
    with pytest.raises(DataError, match=r"no <case>.xml reports; is 'root' the DDTI folder"):
        read_dataset("ddti", ddti_entry(root))
