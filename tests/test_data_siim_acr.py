"""SIIM-ACR pneumothorax (format ``siim_acr``) on a tiny copy of the competition's layout: DICOM
files under dicom-images-train/<study>/<series>/<ImageId>.dcm and train-rle.csv in the
competition's relative, column-major run-length code (encoded here from its definition)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from medtransfer.data import build_cache, read_dataset, read_info, read_masks, read_split
from medtransfer.data.formats import dicom
from medtransfer.data.formats.siim_acr import parse_rle, runs_to_mask
from medtransfer.errors import ConfigError, DataError
from medtransfer.study.data import is_segmentation

pydicom = pytest.importorskip("pydicom")
UID = "1.2.276.0.7230010.3.1."
SIDE = 16


def encode(mask: np.ndarray) -> str:
    """The competition's relative run-length code, from its definition: pixels numbered down each
    column, then the next column; pairs 'start length', each start counted from the end of the
    previous run; '-1' when nothing is set."""
    pixels = [int(mask[y, x]) for x in range(mask.shape[1]) for y in range(mask.shape[0])]
    code, previous_end, i = [], 0, 0
    while i < len(pixels):
        if pixels[i]:
            start = i
            while i < len(pixels) and pixels[i]:
                i += 1
            code += [start - previous_end, i - start]
            previous_end = i
        else:
            i += 1
    return " ".join(map(str, code)) if code else "-1"


def write_dicom(path, pixels, patient, with_pixels=True):
    """An 8-bit MONOCHROME2 chest radiograph as SIIM ships them (secondary capture, CR)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = path.stem
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, path.stem
    ds.PatientID, ds.Modality, ds.BodyPartExamined = patient, "CR", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def regions(rng):
    """Two separate rectangles (one CSV row each) or none."""
    first, second = np.zeros((SIDE, SIDE), np.uint8), np.zeros((SIDE, SIDE), np.uint8)
    y, x = rng.integers(0, 6, 2)
    first[y:y + 4, x:x + 5] = 1
    y, x = rng.integers(10, 13, 2)
    second[y:y + 3, x:x + 2] = 1
    return first, second


@pytest.fixture
def siim(tmp_path):
    """30 images of 20 patients; a third with pneumothorax (two CSV rows each), one DICOM that
    the CSV does not list; the CSV as the competition writes it (a space after each comma)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "siim"
    lines, truth = ["ImageId, EncodedPixels"], {}
    for i in range(30):
        image_id = f"{UID}{i}.{1517875000 + i}"
        pixels = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        write_dicom(root / "dicom-images-train" / f"{UID}9{i}" / f"{UID}8{i}" / f"{image_id}.dcm", pixels,
                    patient=f"p{i % 20}")
        mask = np.zeros((SIDE, SIDE), np.uint8)
        if i % 3 == 0:
            for part in regions(rng):
                lines.append(f"{image_id}, {encode(part)}")
                mask |= part
        else:
            lines.append(f"{image_id}, -1")
        truth[image_id] = (pixels, mask)
    write_dicom(root / "dicom-images-train" / "x" / "y" / f"{UID}999.dcm", np.zeros((SIDE, SIDE)), "p99")
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return root, truth


def entry(root, **extra):
    return {"format": "siim_acr", "root": str(root), "size": SIDE, "target": "segmentation", "resize": "nearest",
            "workers": 2, **extra}


def test_the_run_length_code_round_trips_through_an_independent_encoder():
    rng = np.random.default_rng(1)
    for height, width in ((7, 11), (11, 7), (64, 64)):
        mask = (rng.random((height, width)) < 0.3).astype(np.uint8)
        mask[-1, -1] = 1  # a run that ends on the last pixel
        decoded = runs_to_mask([parse_rle(encode(mask), height, width, "row 2")], height, width)
        np.testing.assert_array_equal(decoded, mask)
    # the competition's own example semantics: relative starts over the column-major image
    decoded = runs_to_mask([parse_rle("1 2 3 1", 3, 3, "row 2")], 3, 3)
    expected = np.zeros(9, np.uint8)
    expected[[1, 2, 6]] = 1  # pixels 1-2, then 3 after the end of that run (pixel 3) -> pixel 6
    np.testing.assert_array_equal(decoded, expected.reshape(3, 3).T)
    assert parse_rle("-1", 4, 4, "row 2").shape == (0, 2)


@pytest.mark.parametrize("code,message", [
    ("1 2 3", "has 3 numbers"),
    ("5 2 x 1", "is not a run-length code"),
    ("5 -2", "negative number"),
    ("250 10", "runs to pixel 260, past the 16x16 image's 256 pixels"),
])
def test_a_malformed_code_names_its_row(code, message):
    with pytest.raises(DataError, match=f"train-rle.csv row 7: .*{message}"):
        parse_rle(code, SIDE, SIDE, "train-rle.csv row 7")


def test_the_cache_holds_every_listed_image_with_its_united_mask_and_patients_stay_in_one_split(siim, tmp_path):
    root, truth = siim
    out = tmp_path / "siim.h5"
    build_cache("siim", entry(root), out)
    info = read_info(out)
    assert info.task == "segmentation" and info.class_names == ["background", "pneumothorax"]
    assert sum(info.split_sizes.values()) == 30  # the unlisted DICOM is left out, and counted
    assert info.attributes["dicom_files_not_in_csv"]["count"] == 1
    by_pixels = {pixels.tobytes(): (image_id, mask) for image_id, (pixels, mask) in truth.items()}
    patients, seen = {}, set()
    for split in ("train", "val", "test"):
        images, labels = read_split(out, split)
        masks = read_masks(out, split)
        assert len(images) > 0
        for image, label, mask in zip(images, labels, masks):
            image_id, expected = by_pixels[image[0].tobytes()]
            seen.add(image_id)
            np.testing.assert_array_equal(mask[0], expected)
            assert label == int(expected.any())
            patients.setdefault(f"p{int(image_id.split('.')[-2]) % 20}", set()).add(split)
    assert seen == set(truth)
    assert all(len(splits) == 1 for splits in patients.values())


def test_the_classification_target_is_pneumothorax_yes_no_without_masks(siim, tmp_path):
    root, truth = siim
    raw = read_dataset("siim", entry(root, target="classification"))
    assert raw.task == "binary" and raw.masks is None and raw.class_names == ["no_pneumothorax", "pneumothorax"]
    labels = np.concatenate([raw.splits[s][1] for s in ("train", "val", "test")])
    assert labels.sum() == sum(int(mask.any()) for _, mask in truth.values()) == 10
    assert not is_segmentation(entry(root, target="classification")) and is_segmentation(entry(root))


def test_bad_input_is_named(siim, tmp_path):
    root, _ = siim
    csv = root / "train-rle.csv"
    lines = csv.read_text().splitlines()
    with pytest.raises(ConfigError, match="datasets.siim.target is 'masks'; allowed: segmentation, classification"):
        read_dataset("siim", entry(root, target="masks"))
    csv.rename(root / "kept.csv")
    with pytest.raises(DataError, match=f"{csv} does not exist; download the competition's training data"):
        read_dataset("siim", entry(root))

    csv.write_text("\n".join([*lines, f"{UID}404.1, -1"]) + "\n")
    with pytest.raises(DataError, match=rf"train-rle.csv row 42: image {UID}404.1 has no file"):
        read_dataset("siim", entry(root))

    assert lines[1].split(", ")[1] != "-1"
    csv.write_text("\n".join([lines[0], lines[1].rsplit(" ", 1)[0], *lines[2:]]) + "\n")  # an odd count
    with pytest.raises(DataError, match=r"train-rle.csv row 2: EncodedPixels has \d+ numbers"):
        read_dataset("siim", entry(root))
    csv.write_text("\n".join(lines) + "\n")

    image_id = lines[5].split(",")[0]
    path = next((root / "dicom-images-train").rglob(f"{image_id}.dcm"))
    write_dicom(path, np.zeros((SIDE, SIDE)), "p5", with_pixels=False)
    with pytest.raises(DataError, match=rf"row 6: image {path} has no pixel data"):
        read_dataset("siim", entry(root))


def test_without_pydicom_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"datasets.siim: reading DICOM files needs pydicom >= 3.0: "
                                        r"pip install 'medtransfer\[dicom\]'"):
        dicom.pydicom_module("datasets.siim")
