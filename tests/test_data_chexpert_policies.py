"""CheXpert label policies of issue 27: evaluated labels (train on 14, report the 5 competition
labels), LSR-Ones / LSR-Zeros soft labels drawn by the training loader, and "No Finding" derived
as Matsoukas et al.'s code does. Fixture: tests/test_data_chexpert.py's tiny release."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medtransfer.data import make_loader, read_dataset, read_info, read_split
from medtransfer.data.streaming import write_cache
from medtransfer.errors import ConfigError
from medtransfer.training.metrics import classification_metrics
from medtransfer.training.precision import precision_for
from medtransfer.training.trainer import evaluate
from test_data_chexpert import CELLS, entry, row_index, write_release

CPU = torch.device("cpu")
# train.csv row 3 (index 1) replaced: only uncertain and negative cells, so U-Zeros leaves it all 0
ALL_UNCERTAIN_OR_NEGATIVE = ["", "-1.0", "", "0.0", "", "-1.0", "", "", "", "0.0", "", "", "", ""]


@pytest.fixture
def release(tmp_path):
    def replace_second_row(csv):
        fields = csv["train"][2].split(",")
        csv["train"][2] = ",".join(fields[:5] + ALL_UNCERTAIN_OR_NEGATIVE)

    return write_release(tmp_path, broken=replace_second_row)


def cells_of(index):
    return ALL_UNCERTAIN_OR_NEGATIVE if index == 1 else CELLS[index % len(CELLS)]


def train_rows(raw):
    """(fixture image index, label row) of every train.csv image, whatever split it went to."""
    out = []
    for split in ("train", "val"):
        images, labels = raw.splits[split]
        out += [(row_index(image), label) for image, label in zip(np.asarray(images), labels)]
    return out


def test_no_finding_derived_as_matsoukas(release):
    raw = read_dataset("cx", entry(release, uncertainty="U-Zeros", no_finding="derived"))
    assert raw.attributes["no_finding"].startswith("derived")
    for index, label in train_rows(raw):
        # U-Zeros: 1 -> 1, everything else (0, -1, blank) -> 0; then No Finding = 1 on an all-zero row
        expected = np.array([1.0 if c == "1.0" else 0.0 for c in cells_of(index)], np.float32)
        if expected.sum() == 0:
            expected[0] = 1.0
        np.testing.assert_array_equal(label, expected)
    derived = [label[0] for index, label in train_rows(raw) if index == 1]
    assert derived == [1.0]  # the row made all-zero by U-Zeros, "No Finding" blank in the CSV
    ones = read_dataset("cx", entry(release, uncertainty="U-Ones", no_finding="derived"))
    for index, label in train_rows(ones):
        if index == 1:  # U-Ones makes its uncertain cells positive: nothing to derive
            np.testing.assert_array_equal(label, [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    plain = read_dataset("cx", entry(release, uncertainty="U-Zeros"))
    assert "no_finding" not in plain.attributes
    assert [label[0] for index, label in train_rows(plain) if index == 1] == [0.0]  # as given: blank -> 0


def test_evaluated_labels_recorded_and_metrics_average_over_them(release, tmp_path):
    e = entry(release, labels="all", eval_labels="competition")
    out = tmp_path / "cx.h5"
    write_cache("cx", e, read_dataset("cx", e), out, progress=False)
    info = read_info(out)
    assert info.num_classes == 14  # trained on all 14
    assert info.attributes["evaluated_labels"] == ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis",
                                                   "Pleural Effusion"]  # the competition's 5, in output order
    loader = make_loader(out, "test", batch_size=3, shuffle=False)
    assert loader.evaluated_columns == [2, 5, 6, 8, 10]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 14))
    result = evaluate(model, loader, "multilabel", CPU, precision_for(CPU, {}))
    _, labels = read_split(out, "test")
    expected = np.mean([roc_auc_score(labels[:, k], result.scores[:, k]) for k in (2, 5, 6, 8, 10)])
    assert result.metrics["auc"] == pytest.approx(expected, abs=1e-12)
    everything = np.mean([roc_auc_score(labels[:, k], result.scores[:, k]) for k in range(14)
                          if len(np.unique(labels[:, k])) == 2])
    assert classification_metrics("multilabel", labels, result.scores)["auc"] == pytest.approx(everything)
    assert abs(expected - everything) > 1e-6  # the restriction changes the number here
    # without the key nothing changes: no attribute, every label evaluated
    write_cache("cx", entry(release), read_dataset("cx", entry(release)), tmp_path / "all.h5", progress=False)
    assert "evaluated_labels" not in read_info(tmp_path / "all.h5").attributes
    assert make_loader(tmp_path / "all.h5", "test", batch_size=3, shuffle=False).evaluated_columns is None


def test_lsr_soft_labels_drawn_per_image_and_epoch(release, tmp_path):
    e = entry(release, uncertainty={"Edema": "LSR-Zeros", "default": "LSR-Ones"})
    out = tmp_path / "lsr.h5"
    write_cache("cx", e, read_dataset("cx", e), out, progress=False)
    info = read_info(out)
    assert info.attributes["label_smoothing"]["Edema"] == [0.0, 0.3]
    assert info.attributes["label_smoothing"]["Atelectasis"] == [0.55, 0.85]
    images, cached = read_split(out, "train")
    uncertain = np.array([[c == "-1.0" for c in cells_of(row_index(image))] for image in images])
    np.testing.assert_array_equal(np.isnan(cached), uncertain)  # the cache keeps the marker: NaN

    def epoch_labels(epoch, seed=7, soft=True):
        loader = make_loader(out, "train", batch_size=4, shuffle=True, seed=seed, soft_labels=soft)
        loader.set_epoch(epoch)
        rows = np.concatenate(loader.batch_rows())
        labels = torch.cat([y for _, y in loader]).numpy()
        return labels[np.argsort(rows)]  # back to cache order

    first, again, second = epoch_labels(0), epoch_labels(0), epoch_labels(1)
    np.testing.assert_array_equal(first, again)  # the same (seed, epoch): the same draws
    np.testing.assert_array_equal(first[~uncertain], cached[~uncertain])  # certain entries untouched
    edema = np.zeros_like(uncertain)
    edema[:, 5] = True
    lsr_zeros, lsr_ones = first[uncertain & edema], first[uncertain & ~edema]
    assert len(lsr_zeros) and len(lsr_ones)
    assert ((lsr_zeros >= 0.0) & (lsr_zeros < 0.3)).all() and ((lsr_ones >= 0.55) & (lsr_ones < 0.85)).all()
    assert len(np.unique(lsr_ones)) == len(lsr_ones)  # one draw per image and label
    assert not np.isin(first[uncertain], second[uncertain]).any()  # redrawn every epoch
    assert not np.array_equal(first[uncertain], epoch_labels(0, seed=8)[uncertain])  # and per seed
    assert np.isnan(epoch_labels(0, soft=False)[uncertain]).all()  # evaluation loaders: unknown, masked


def test_policy_keys_checked_before_reading(tmp_path):
    root = str(tmp_path / "nowhere")
    bad = [
        ({"uncertainty": "LSR-Ones", "unmentioned": "ignore"}, "LSR-Ones / LSR-Zeros keep the uncertain entries"),
        ({"uncertainty": "LSR-Twos"}, "datasets.cx.uncertainty is 'LSR-Twos'; allowed: U-Ones, U-Zeros, U-Ignore, "
                                      "LSR-Ones, LSR-Zeros"),
        ({"labels": "competition", "eval_labels": ["No Finding"]}, "datasets.cx.eval_labels: ['No Finding'] not "
                                                                   "among the labels trained on"),
        ({"eval_labels": "official"}, "datasets.cx.eval_labels is 'official'; allowed: competition"),
        ({"no_finding": "derived"}, "datasets.cx.no_finding: derived needs every label known"),
        ({"no_finding": "derived", "uncertainty": "U-Zeros", "labels": "competition"},
         "derived needs 'No Finding' among datasets.cx.labels"),
        ({"no_finding": "sometimes"}, "datasets.cx.no_finding is 'sometimes'; allowed: as_given"),
    ]
    for keys, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
            read_dataset("cx", {"format": "chexpert", "root": root, "size": 8, **keys})
