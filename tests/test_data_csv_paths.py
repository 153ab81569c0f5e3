"""Image paths a downloaded dataset's CSV gives stay inside the dataset's folder: a ``..`` or an
absolute value stops the reader naming the dataset, the CSV row and column, before any file
outside is looked at (and CBIS-DDSM's search of a case folder cannot walk the filesystem).

Each release is the tiny copy its format's test module builds, with one cell rewritten.
"""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from medtransfer.data import read_dataset
from medtransfer.errors import DataError

from test_data_aptos import entry as aptos_entry, write_competition
from test_data_cbis_ddsm import entry as cbis_entry, write_release as write_cbis
from test_data_chexpert import entry as chexpert_entry, write_release as write_chexpert
from test_data_isic import entry as isic_entry, write_download


class Fence:
    """Records (and refuses) any look at a file under ``outside`` and any folder listing that is
    not under ``inside``, while it is active: a reader that walked the filesystem fails fast."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, inside: Path, outside: Path) -> None:
        self.inside, self.outside, self.crossed = str(inside), str(outside), []
        for target, name in ((builtins, "open"), (io, "open"), (os, "stat"), (os, "scandir")):
            monkeypatch.setattr(target, name, self._fenced(getattr(target, name), name == "scandir"))

    def _fenced(self, function, is_listing):
        def wrapper(path=".", *args, **kwargs):
            text = os.path.abspath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if text.startswith(self.outside) or (is_listing and text and not text.startswith(self.inside)):
                self.crossed.append(f"{function.__name__}({text})")
                raise AssertionError(f"the reader looked outside the dataset: {function.__name__}({text})")
            return function(path, *args, **kwargs)
        return wrapper


def aptos(tmp_path, bad):
    root = write_competition(tmp_path / "aptos", per_grade=4)
    lines = (root / "train.csv").read_text().splitlines()
    code = lines[1].split(",")[0]
    value = bad(code, ".png", root / "train_images")
    lines[1] = lines[1].replace(code, value)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return aptos_entry(root), root / "train.csv", "id_code", value, root / "train_images"


def isic(tmp_path, bad):
    root = write_download(tmp_path / "isic", per_class=4)
    csv_path, folder = root / "ISIC_2019_Training_GroundTruth.csv", root / "ISIC_2019_Training_Input"
    lines = csv_path.read_text().splitlines()
    image = lines[1].split(",")[0]
    value = bad(image, ".jpg", folder)
    lines[1] = lines[1].replace(image, value)
    csv_path.write_text("\n".join(lines) + "\n")
    return isic_entry(root, group_by="image"), csv_path, "image", value, folder


def chexpert(tmp_path, bad):
    root = tmp_path / "chexpert" / "CheXpert-v1.0-small"

    def rewrite(csv):
        path = csv["train"][1].split(",")[0]  # CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
        value = bad(path.split("/", 1)[1].removesuffix(".jpg"), ".jpg", root, ".jpg")
        csv["train"][1] = csv["train"][1].replace(path, value if os.path.isabs(value) else
                                                  f"CheXpert-v1.0-small/{value}")
    write_chexpert(tmp_path / "chexpert", broken=rewrite)
    value = (root / "train.csv").read_text().splitlines()[1].split(",")[0]
    return chexpert_entry(root), root / "train.csv", "Path", value, root


def cbis(tmp_path, bad):
    root = tmp_path / "cbis"

    def rewrite(kind, split, lines):
        if (kind, split) == ("mass", "train"):
            path = lines[1].split(",")[11]  # image file path of P_00001 LEFT CC
            lines[1] = lines[1].replace(path, bad(path.removesuffix(".dcm"), ".png", root / "CBIS-DDSM", ".dcm"))
        return lines
    write_cbis(root, suffix=".png", hook=rewrite)
    csv_path = root / "mass_case_description_train_set.csv"
    value = csv_path.read_text().splitlines()[1].split(",")[11]
    return cbis_entry(root), csv_path, "image file path", value, root / "CBIS-DDSM"


FORMATS = {"aptos2019": aptos, "isic2019": isic, "chexpert": chexpert, "cbis_ddsm": cbis}


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_csv_path_outside_the_dataset_stops_the_reader_before_it_looks_there(fmt, how, tmp_path, monkeypatch):
    outside = tmp_path / "outside"

    def bad(rel: str, suffix: str, folder: Path, named: str = "") -> str:
        """A readable image ``rel + suffix`` outside the dataset, named as the CSV would name it
        from ``folder``, ending in ``named`` (CBIS-DDSM's is the PNG beside the DICOM path, which
        the reader also looks for; APTOS and ISIC name files without their suffix)."""
        target = outside / f"{rel}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9, 9), (1, 2, 3)).save(target)
        name = str(target) if how == "absolute" else os.path.relpath(target, folder)
        return name.removesuffix(suffix) + named

    entry, csv_path, column, value, folder = FORMATS[fmt](tmp_path, bad)
    assert (".." in value) == (how == "dotdot") and os.path.isabs(value) == (how == "absolute")
    fence = Fence(monkeypatch, Path(entry["root"]), outside)
    try:
        with pytest.raises(DataError) as error:
            read_dataset("mine", entry)
    finally:
        monkeypatch.undo()
    assert fence.crossed == []
    assert str(error.value) == (f"datasets.mine: {csv_path} row 2, column {column!r} is {value!r}, which names no "
                                f"file inside {folder}: the dataset's image paths are relative to that folder, "
                                f"without '..'; restore the CSV as downloaded (or fix the row)")


def test_an_absolute_cbis_ddsm_path_to_nothing_does_not_search_the_filesystem(tmp_path, monkeypatch):
    """The reader looks for a case folder's one image when the exact file is missing: with an
    absolute value that folder was ``/``, and the search walked the whole filesystem."""
    def rewrite(kind, split, lines):
        if (kind, split) == ("mass", "train"):
            lines[1] = lines[1].replace(lines[1].split(",")[11], "/no-such-folder/000000.dcm")
        return lines
    root = write_cbis(tmp_path / "cbis", suffix=".png", hook=rewrite)
    fence = Fence(monkeypatch, root, tmp_path / "outside")
    try:
        with pytest.raises(DataError, match="'/no-such-folder/000000.dcm', which names no file inside"):
            read_dataset("mine", cbis_entry(root))
    finally:
        monkeypatch.undo()
    assert fence.crossed == []
