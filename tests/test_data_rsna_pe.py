"""RSNA-STR PE CT (format ``rsna_pe``) on a tiny copy of the competition's layout:
train/<study>/<series>/<sop>.dcm CT slices (int16 with a rescale to HU) and train.csv."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.data import build_cache, read_dataset, read_info, read_split
from medtransfer.data.formats import dicom
from medtransfer.errors import ConfigError, DataError

pydicom = pytest.importorskip("pydicom")
SIDE = 8
HEADER = ("StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID,pe_present_on_image,negative_exam_for_pe,qa_motion,"
          "qa_contrast,flow_artifact,rv_lv_ratio_gte_1,rv_lv_ratio_lt_1,leftsided_pe,chronic_pe,"
          "true_filling_defect_not_pe,rightsided_pe,acute_and_chronic_pe,central_pe,indeterminate")


def expected_window(hu):
    """The PE window from its definition: centre 100, width 700 -> [-250, 450] HU onto 0..255."""
    return np.rint(np.clip((np.asarray(hu, float) + 250.0) / 700.0, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_slice(path, stored, z, number, with_pixels=True):
    """A CT slice as the competition ships it: int16 stored values, slope 1, intercept -1024."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, "1.2.3." + str(number)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.ImagePositionPatient = [-150.0, -160.0, float(z)]
    ds.InstanceNumber = int(number)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if with_pixels:
        ds.PixelData = stored.astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def pe(tmp_path):
    """12 studies (5 with PE slices) of one series of 4 slices each. A slice's HU value (inside
    the window) names it; two corner pixels lie outside the window. File names, CSV order and
    instance numbers do not follow z."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pe"
    rows, truth, value = [HEADER], {}, -240
    for s in range(12):
        study, series = f"st{s:02d}", f"se{s:02d}"
        zs = rng.permutation(4) * 2.5 - 300.0
        positive = s < 5
        slices = []
        for k in range(4):
            sop = f"{rng.integers(16**11):012x}"
            hu = np.full((SIDE, SIDE), value, np.int32)
            hu[0, 0], hu[0, 1] = -1000, 2000
            write_slice(root / "train" / study / series / f"{sop}.dcm", hu + 1024, zs[k], 4 - k)
            label = int(positive and k % 2 == 0)
            slices.append((sop, label))
            truth[sop] = {"study": study, "z": zs[k], "hu": value, "label": label}
            value += 10
        for k in rng.permutation(4):
            sop, label = slices[k]
            flags = "0," * 11 + "0"
            rows.append(f"{study},{series},{sop},{label},{int(not positive)},{flags}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root, truth


def entry(root, **extra):
    return {"format": "rsna_pe", "root": str(root), "size": SIDE, "workers": 2, **extra}


def test_each_slice_is_stacked_with_its_z_neighbours_windowed_and_studies_stay_in_one_split(pe, tmp_path):
    root, truth = pe
    out = tmp_path / "pe.h5"
    build_cache("pe", entry(root), out)
    info = read_info(out)
    assert info.task == "binary" and info.channels == 3 and info.class_names == ["no_pe", "pe"]
    assert sum(info.split_sizes.values()) == 48
    by_value = {int(expected_window(t["hu"])): sop for sop, t in truth.items()}
    studies, seen = {}, set()
    for split in ("train", "val", "test"):
        images, labels = read_split(out, split)
        assert len(images) > 0
        for image, label in zip(images, labels):
            sop = by_value[int(image[1, 4, 4])]
            seen.add(sop)
            mine = truth[sop]
            assert label == mine["label"]
            series = sorted((t["z"], s) for s, t in truth.items() if t["study"] == mine["study"])
            at = [s for _, s in series].index(sop)
            lower, upper = series[max(at - 1, 0)][1], series[min(at + 1, 3)][1]
            for channel, neighbour in enumerate((lower, sop, upper)):
                expected = np.full((SIDE, SIDE), expected_window(truth[neighbour]["hu"]))
                expected[0, 0], expected[0, 1] = 0, 255  # -1000 and 2000 HU are clipped
                np.testing.assert_array_equal(image[channel], expected)
            studies.setdefault(mine["study"], set()).add(split)
    assert seen == set(truth)
    assert all(len(splits) == 1 for splits in studies.values())
    assert info.attributes["positive_studies"] == 5 and info.attributes["studies"] == 12


def test_a_chunk_decodes_each_file_once_and_only_the_slices_it_needs(pe, monkeypatch):
    root, _ = pe
    raw = read_dataset("pe", entry(root))
    images = raw.splits["train"][0]
    decoded = []
    original = dicom.hounsfield
    monkeypatch.setattr(dicom, "hounsfield", lambda path: decoded.append(path) or original(path))
    images[0:4]  # one whole series: its four files, once each
    assert len(decoded) == len(set(decoded)) == 4
    decoded.clear()
    images[[5]]  # one slice: itself and at most two neighbours
    assert 1 <= len(decoded) <= 3


def test_bad_input_is_named(pe, tmp_path):
    root, truth = pe
    csv = root / "train.csv"
    lines = csv.read_text().splitlines()
    with pytest.raises(ConfigError, match="datasets.pe.channels is 1; rsna_pe stacks three slices"):
        read_dataset("pe", entry(root, channels=1))
    with pytest.raises(ConfigError, match="datasets.pe.order is 'z'"):
        read_dataset("pe", entry(root, order="z"))
    csv.rename(root / "kept.csv")
    with pytest.raises(DataError, match=f"{csv} does not exist"):
        read_dataset("pe", entry(root))

    csv.write_text("\n".join([*lines, "st03,se03,abcdef123456,0,1," + "0," * 11 + "0"]) + "\n")
    with pytest.raises(DataError, match=r"train.csv row 50: slice .*abcdef123456.dcm does not exist"):
        read_dataset("pe", entry(root))

    csv.write_text("\n".join(lines) + "\n")
    sop = lines[1].split(",")[2]
    path = next(root.rglob(f"{sop}.dcm"))
    write_slice(path, np.zeros((SIDE, SIDE), np.int32), truth[sop]["z"], 9, with_pixels=False)
    with pytest.raises(DataError, match=rf"train.csv row \d+: slice {path} cannot be read \(the DICOM file has no "
                                        r"pixel data"):
        build_cache("pe", entry(root), tmp_path / "pe.h5")
    assert not (tmp_path / "pe.h5").exists()
