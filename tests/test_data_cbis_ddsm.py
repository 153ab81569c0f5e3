"""CBIS-DDSM on a tiny copy of its TCIA layout (medtransfer.data.formats.cbis_ddsm).

DICOM tests need pydicom and are skipped without it; the same layout with converted PNG files
exercises everything else.
"""

import numpy as np
import pytest
from PIL import Image

import medtransfer.data.formats.cbis_ddsm  # noqa: F401  registers the format
from medtransfer.data import read_dataset, read_info, read_split
from medtransfer.data.formats.cbis_ddsm import dicom_pixels
from medtransfer.data.streaming import write_cache
from medtransfer.errors import ConfigError, DataError

MASS_HEADER = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
               "mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,"
               "ROI mask file path")
CALC_HEADER = ("patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,"
               "calc type,calc distribution,assessment,pathology,subtlety,image file path,"
               "cropped image file path,ROI mask file path")
UID = "1.3.6.1.4.1.9590.100.1.2."

# (kind, split, patient, breast, view, abnormality id, pathology)
ROWS = [
    ("mass", "train", "P_00001", "LEFT", "CC", 1, "BENIGN"),
    ("calc", "train", "P_00001", "LEFT", "CC", 1, "MALIGNANT"),  # same view: merged, malignant
    ("mass", "train", "P_00001", "LEFT", "MLO", 1, "BENIGN"),
    ("mass", "train", "P_00002", "RIGHT", "MLO", 1, "BENIGN_WITHOUT_CALLBACK"),
    ("mass", "train", "P_00002", "RIGHT", "MLO", 2, "BENIGN"),
    ("calc", "train", "P_00003", "LEFT", "CC", 1, "MALIGNANT"),  # P_00003 is also a test patient
    ("mass", "test", "P_00003", "RIGHT", "CC", 1, "BENIGN"),
    ("mass", "test", "P_00101", "LEFT", "MLO", 1, "MALIGNANT"),
    ("calc", "test", "P_00102", "RIGHT", "CC", 1, "BENIGN_WITHOUT_CALLBACK"),
] + [
    ("mass" if p % 2 else "calc", "train", f"P_{p:05d}", side, view, 1, "MALIGNANT" if p % 3 == 0 else "BENIGN")
    for p in range(10, 30) for side, view in (("LEFT", "CC"), ("LEFT", "MLO"))
]


def case_folder(kind, split, patient, breast, view, crop=False):
    name = f"{kind.capitalize()}-{'Training' if split == 'train' else 'Test'}_{patient}_{breast}_{view}"
    return name + ("_1" if crop else "")


def write_dicom(path, pixels, patient_id, description, photometric="MONOCHROME2"):
    """A DICOM file with the header fields CBIS-DDSM's files carry (secondary capture, MG, 16 bit)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(prefix=UID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID = ds.PatientName = patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(prefix=UID), generate_uid(prefix=UID)
    ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = "MG", "BREAST", description
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).PatientID == patient_id


def pixels_of(i, size=8):
    return (1000 + 37 * i + 150 * np.add.outer(np.arange(size), np.arange(size))).astype(np.uint16)


def write_release(root, suffix=".dcm", rows=ROWS, hook=None, nbia_case=None):
    """The four description CSVs and CBIS-DDSM/<case>/<study uid>/<series uid>/00000{0,1}.dcm."""
    images = root / "CBIS-DDSM"
    tables = {}
    for i, (kind, split, patient, breast, view, abn, pathology) in enumerate(rows):
        case, crop = case_folder(kind, split, patient, breast, view), case_folder(kind, split, patient, breast,
                                                                                view, crop=True)
        full = f"{case}/{UID}{1000 + i}/{UID}{2000 + i}/000000.dcm"
        cropped = f"{crop}/{UID}{3000 + i}/{UID}{4000 + i}/000001.dcm"
        roi = f"{crop}/{UID}{3000 + i}/{UID}{4000 + i}/000000.dcm"
        files = [(full, pixels_of(i), case, "full mammogram images"),
                 (cropped, pixels_of(i + 500, 4), crop, "cropped images")]
        for rel, pixels, pid, description in files:
            if nbia_case == case and rel == full:  # the NBIA retriever's descriptive folder names
                target = images / case / "07-20-2016-DDSM-NA-74994" / "1.000000-full mammogram images-24515" / "1-1.dcm"
            else:
                target = images / rel
            if suffix == ".dcm":
                write_dicom(target, pixels, pid, description)
            else:
                target = target.with_suffix(".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(target)
        shape = "OVAL,CIRCUMSCRIBED" if kind == "mass" else "PLEOMORPHIC,CLUSTERED"
        # as in TCIA's files, some path cells are quoted and end in a newline
        tables.setdefault((kind, split), []).append(
            f"{patient},3,{breast},{view},{abn},{'mass' if kind == 'mass' else 'calcification'},{shape},4,"
            f'{pathology},4,{full},"{cropped}\n","{roi}\n"')
    for kind in ("mass", "calc"):
        for split in ("train", "test"):
            lines = [MASS_HEADER if kind == "mass" else CALC_HEADER] + tables.get((kind, split), [])
            if hook:
                lines = hook(kind, split, lines)
            (root / f"{kind}_case_description_{split}_set.csv").write_text("\n".join(lines) + "\n")
    return root


def entry(root, **kw):
    return {"format": "cbis_ddsm", "root": str(root), "size": 8, "workers": 2, **kw}


def label_of(raw, splits, folder):
    matches = [label for split in splits for path, label in zip(raw.splits[split][0].paths, raw.splits[split][1])
               if folder in path.parts]
    assert len(matches) == 1, (folder, matches)
    return matches[0]


def check_layout(raw):
    assert raw.task == "binary" and raw.class_names == ["benign", "malignant"]
    assert raw.attributes["metric"] == "auc"
    # any-malignant per mammogram, mass and calc rows of one view merged
    assert label_of(raw, ("train", "val"), "Mass-Training_P_00001_LEFT_CC") == 1
    assert label_of(raw, ("train", "val"), "Mass-Training_P_00002_RIGHT_MLO") == 0
    # P_00003 is a test patient: the training row is dropped, so no patient is in two splits
    assert raw.attributes["dropped_train_rows_of_test_patients"] == 1
    patients = {}
    for split, (images, _) in raw.splits.items():
        for path in images.paths:
            patient = "_".join(path.parts[-4].split("_")[1:3])
            patients.setdefault(patient, set()).add(split)
    assert all(len(s) == 1 for s in patients.values())
    assert patients["P_00003"] == {"test"} and len(raw.splits["test"][1]) == 3
    assert len(raw.splits["train"][1]) + len(raw.splits["val"][1]) == 2 + 1 + 40
    assert raw.attributes["made_splits"]["grouped_by"] == "patient"


def test_dicom_release(tmp_path):
    pytest.importorskip("pydicom")
    root = write_release(tmp_path / "cbis", nbia_case="Mass-Training_P_00002_RIGHT_MLO")
    raw = read_dataset("ddsm", entry(root))
    check_layout(raw)
    nbia = [p for p in raw.splits["train"][0].paths + raw.splits["val"][0].paths if p.name == "1-1.dcm"]
    assert len(nbia) == 1  # found under its case folder despite the other folder names
    write_cache("ddsm", entry(root), raw, tmp_path / "ddsm.h5", progress=False)
    info = read_info(tmp_path / "ddsm.h5")
    assert info.channels == 1 and info.task == "binary" and info.attributes["image"] == "full"
    images, labels = read_split(tmp_path / "ddsm.h5", "test")
    # test rows 6, 7, 8 of ROWS; 8x8 pixels, no resizing: min-max scaling computed here
    for image, i in zip(images, (6, 7, 8)):
        p = pixels_of(i).astype(np.float64)
        np.testing.assert_array_equal(image[0], np.rint((p - p.min()) * 255 / (p.max() - p.min())))


def test_dicom_pixels_monochrome1(tmp_path):
    pytest.importorskip("pydicom")
    p = pixels_of(3)
    write_dicom(tmp_path / "a.dcm", p, "Calc-Test_P_00102_RIGHT_CC", "full mammogram images", "MONOCHROME1")
    expected = np.rint(255 - (p - 1.0 * p.min()) * 255 / (p.max() - p.min()))  # inverted, then rounded
    np.testing.assert_array_equal(dicom_pixels(tmp_path / "a.dcm"), expected)


def test_cropped_rois(tmp_path):
    pytest.importorskip("pydicom")
    root = write_release(tmp_path / "cbis")
    raw = read_dataset("ddsm", entry(root, image="cropped", abnormality="mass", size=4))
    assert all(p.name == "000001.dcm" and p.parts[-4].endswith("_1") for s in raw.splits.values()
               for p in s[0].paths)
    mass_rows = [r for r in ROWS if r[0] == "mass"]  # P_00003's training row is calc, so none is dropped
    assert sum(len(l) for _, l in raw.splits.values()) == len(mass_rows)  # one example per abnormality
    images = raw.splits["test"][0][:]
    assert images.shape == (2, 1, 4, 4)


def test_converted_png_release_without_pydicom(tmp_path):
    root = write_release(tmp_path / "cbis", suffix=".png")
    raw = read_dataset("ddsm", entry(root))
    check_layout(raw)
    images = raw.splits["test"][0][:]  # 16-bit PNG, scaled to 8 bits by value / 257
    np.testing.assert_array_equal(images[0, 0], np.rint(pixels_of(6) / 257.0))


def test_only_mass_and_seeded_val(tmp_path):
    root = write_release(tmp_path / "cbis", suffix=".png")
    a = read_dataset("ddsm", entry(root, abnormality=["mass"], val_fraction=0.25, split_seed=3))
    b = read_dataset("ddsm", entry(root, abnormality=["mass"], val_fraction=0.25, split_seed=3))
    assert [p.name for p in a.splits["val"][0].paths] == [p.name for p in b.splits["val"][0].paths]
    assert all(p.parts[-4].startswith("Mass-") for s in a.splits.values() for p in s[0].paths)
    assert a.attributes["dropped_train_rows_of_test_patients"] == 0  # P_00003's train row is calc
    with pytest.raises(ConfigError, match="abnormality"):
        read_dataset("ddsm", entry(root, abnormality=["architectural distortion"]))


def test_malformed_inputs(tmp_path):
    def bad_pathology(kind, split, lines):
        if (kind, split) == ("mass", "train"):
            lines[2] = lines[2].replace("BENIGN", "PROBABLY_BENIGN", 1)
        return lines

    root = write_release(tmp_path / "a", suffix=".png", hook=bad_pathology)
    with pytest.raises(DataError, match=r"mass_case_description_train_set\.csv row 3: 'pathology' is 'PROBABLY"):
        read_dataset("ddsm", entry(root))

    def no_pathology(kind, split, lines):
        if (kind, split) == ("calc", "test"):
            lines[0] = lines[0].replace("pathology", "diagnosis")
        return lines

    root = write_release(tmp_path / "b", suffix=".png", hook=no_pathology)
    with pytest.raises(DataError, match=r"calc_case_description_test_set\.csv: column\(s\) 'pathology' missing"):
        read_dataset("ddsm", entry(root))

    root = write_release(tmp_path / "c", suffix=".png")
    (root / "mass_case_description_test_set.csv").unlink()
    with pytest.raises(DataError, match=r"mass_case_description_test_set\.csv does not exist; download"):
        read_dataset("ddsm", entry(root))

    root = write_release(tmp_path / "d", suffix=".png")
    victim = next((root / "CBIS-DDSM" / "Mass-Test_P_00101_LEFT_MLO").rglob("*.png"))
    victim.unlink()
    with pytest.raises(DataError, match=r"mass_case_description_test_set\.csv row 3: image .* does not exist"):
        read_dataset("ddsm", entry(root))


def test_unreadable_dicom_names_the_row(tmp_path):
    pytest.importorskip("pydicom")
    root = write_release(tmp_path / "cbis")
    victim = next((root / "CBIS-DDSM" / "Mass-Test_P_00101_LEFT_MLO").rglob("000000.dcm"))
    victim.write_bytes(b"\0" * 200)
    raw = read_dataset("ddsm", entry(root))
    with pytest.raises(DataError, match=r"mass_case_description_test_set\.csv row 3: image .*000000\.dcm cannot "
                                        r"be read \(not a readable DICOM"):
        raw.splits["test"][0][:]
