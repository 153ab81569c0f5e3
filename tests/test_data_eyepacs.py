"""EyePACS (Kaggle DR 2015) on a tiny copy of its downloaded layout (medtransfer.data.formats.eyepacs)."""

import numpy as np
import pytest
from PIL import Image

from medtransfer.data import read_dataset
from medtransfer.errors import ConfigError, DataError


def grade(patient, eye):
    return (patient + (eye == "right")) % 5


def write_kaggle(base, train_patients=range(10, 50), test_patients=range(1, 9), hook=None, test=True):
    """trainLabels.csv + train/*.jpeg and (optionally) testLabels.csv (image,level,Usage) + test/*.jpeg;
    image {p}_{eye} has grade (p + [eye is right]) % 5 and a red level 40 * grade."""
    root = base / "diabetic-retinopathy-detection"
    tables = {"train": ["image,level"], "test": ["image,level,Usage"]}
    for split, patients in (("train", train_patients), ("test", test_patients if test else [])):
        (root / split).mkdir(parents=True)
        for p in patients:
            for eye in ("left", "right"):
                g = grade(p, eye)
                Image.new("RGB", (16, 12), (40 * g, 60, 20)).save(root / split / f"{p}_{eye}.jpeg", quality=95)
                usage = ",Public" if p % 3 == 0 else ",Private"
                tables[split].append(f"{p}_{eye},{g}" + (usage if split == "test" else ""))
    if hook:
        hook(tables)
    (root / "trainLabels.csv").write_text("\n".join(tables["train"]) + "\n")
    if test:
        (root / "testLabels.csv").write_text("\n".join(tables["test"]) + "\n")
    return root


def entry(root, **kw):
    return {"format": "eyepacs", "root": str(root), "size": 4, "workers": 2, **kw}


def patients_and_check(raw, binary):
    """Each split's patients, after checking every label against the fixture's grade."""
    out = {}
    for split, (images, labels) in raw.splits.items():
        stems = [p.stem.split("_") for p in images.paths]
        grades = np.asarray([grade(int(p), eye) for p, eye in stems])
        np.testing.assert_array_equal(labels, (grades >= 2).astype(int) if binary else grades)
        np.testing.assert_allclose(images[:][:, 0, 1, 1], 40 * grades, atol=3)
        out[split] = {p for p, _ in stems}
    return out


@pytest.mark.parametrize("binarize", [None, "referable"])
def test_grades_test_labels_and_patient_splits(tmp_path, binarize):
    root = write_kaggle(tmp_path)
    raw = read_dataset("dr", entry(root, val_fraction=0.25, **({"binarize": binarize} if binarize else {})))
    if binarize:
        assert raw.task == "binary" and len(raw.class_names) == 2 and raw.attributes["metric"] == "auc"
    else:
        assert raw.task == "ordinal" and len(raw.class_names) == 5 and raw.attributes["metric"] == "kappa"
    patients = patients_and_check(raw, binarize is not None)
    assert patients["test"] == {str(p) for p in range(1, 9)} and len(raw.splits["test"][1]) == 16
    assert patients["train"] | patients["val"] == {str(p) for p in range(10, 50)}
    assert not patients["train"] & patients["val"]  # both eyes of a patient in one split
    assert len(patients["val"]) == 10  # 0.25 of 16, 8, 8, 8 patients of grades 0-3 (see below)
    assert raw.attributes["test_usage"] == {"Private": 12, "Public": 4}  # patients 3 and 6 are Public


def test_without_test_labels_val_and_test_come_from_train_patients(tmp_path):
    root = write_kaggle(tmp_path, test=False)
    raw = read_dataset("dr", entry(root, binarize="referable"))
    patients = patients_and_check(raw, True)
    assert patients["train"] | patients["val"] | patients["test"] == {str(p) for p in range(10, 50)}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    # a patient's grades are p % 5 and (p + 1) % 5, the group takes the smaller on a tie: 16 patients
    # of grade 0, 8 each of 1, 2, 3; test round(0.2 * n) per grade = 3 + 2 + 2 + 2, val 2 + 1 + 1 + 1
    assert len(patients["test"]) == 9 and len(patients["val"]) == 5


def test_bad_input_is_named(tmp_path):
    root = write_kaggle(tmp_path / "a")
    (root / "train" / "13_right.jpeg").unlink()
    with pytest.raises(DataError, match=r"trainLabels\.csv row 9: image .*13_right\.jpeg does not exist"):
        read_dataset("dr", entry(root))
    with pytest.raises(DataError, match=r"trainLabels\.csv does not exist; download it from https://www.kaggle"):
        read_dataset("dr", entry(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match=r"datasets.dr.binarize is 'moderate'; allowed: referable"):
        read_dataset("dr", entry(root, binarize="moderate"))

    def bad_name(tables):
        tables["train"][3] = "11-left,2"

    root = write_kaggle(tmp_path / "b", hook=bad_name)
    with pytest.raises(DataError, match=r"trainLabels\.csv row 4: 'image' is '11-left'; expected <patient number>_left"):
        read_dataset("dr", entry(root))

    def bad_grade(tables):
        tables["test"][2] = "1_right,5,Public"

    root = write_kaggle(tmp_path / "c", hook=bad_grade)
    with pytest.raises(DataError, match=r"testLabels\.csv row 3: 'level' is '5'; DR grades are 0, 1, 2, 3, 4"):
        read_dataset("dr", entry(root))

    root = write_kaggle(tmp_path / "d", test_patients=[12, 3])  # patient 12 is in train too
    with pytest.raises(DataError, match=r"1 patient\(s\) in both .* \(e.g. '12'\)"):
        read_dataset("dr", entry(root))
