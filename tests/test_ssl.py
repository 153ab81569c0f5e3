"""Self-supervised pretraining: every method trains on the shared loop, resumes exactly, keeps its
teacher / queue / centre in the checkpoint; views respect gray images; the k-NN classifier
matches scikit-learn; bad configs stop with the valid names."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medtransfer import models
from medtransfer.errors import ConfigError
from medtransfer.study import DEFAULT_TRAINING, Study, deep_merge
from medtransfer.models.embedding import embedding_spread, knn_scores
from medtransfer.training import ssl
from medtransfer.training.loop import Preempted, train_epochs
from medtransfer.training.precision import Precision
from medtransfer.training.ssl.base import register_method
from medtransfer.training.ssl.options import METHODS, resolve_options

from conftest import SCHEMA, tiny_config

CPU = torch.device("cpu")
SSL_METHODS = [m for m in METHODS if m != "supervised"]


class ImageLoader:
    """Unlabelled-style batches in 0..1 whose order is a function of (seed, epoch)."""

    def __init__(self, x, batch_size, on_batch=None):
        self.x, self.batch_size, self.epoch, self.on_batch = x, batch_size, 0, on_batch

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.epoch))
        for i in range(len(self)):
            if self.on_batch:
                self.on_batch(self.epoch, i)
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[index], torch.zeros(len(index), dtype=torch.long)


def images(n=48, size=16, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, size, size, generator=g)
    return base.expand(-1, channels, -1, -1).clone() if channels == 1 else torch.rand(n, 3, size, size, generator=g)


SMALL_HEADS = {"proj_hidden_dim": 32, "out_dim": 16}
SMALL = {"simclr": SMALL_HEADS, "mocov2": {**SMALL_HEADS, "queue_size": 32},
         "byol": {**SMALL_HEADS, "pred_hidden_dim": 32},
         "dino": {"proj_hidden_dim": 32, "bottleneck_dim": 16, "out_dim": 64, "local_crops": 2},
         "swav": {**SMALL_HEADS, "n_prototypes": 20, "local_crops": 2, "queue_size": 32, "queue_start_epoch": 1},
         "barlowtwins": SMALL_HEADS}


def run_method(name, tmp_path, on_batch=None, epochs=2, seed=0):
    torch.manual_seed(seed)
    backbone = models.create("cbr_tiny", 2, width=0.25)
    options = resolve_options(name, SMALL[name], "sources.test.pretrain")
    loader = ImageLoader(images(), 16, on_batch=on_batch)
    method = ssl.build(name, backbone, options, steps_per_epoch=len(loader), epochs=epochs)
    views = ssl.Views(options, size=16, gray=False, mean=[0.5] * 3, std=[0.25] * 3)
    objective = ssl.SSLObjective(method, views, device=CPU, precision=Precision(None, False), monitor=None)
    training = deep_merge(DEFAULT_TRAINING, {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05},
                                             "schedule": {"name": "cosine"}})
    history, _ = train_epochs(objective, loader, training=training, device=CPU,
                              checkpoint_path=tmp_path / "ckpt.pt", spec_hash=name, precision=Precision(None, False),
                              progress=False)
    return method, history


def test_registry_options_and_schema_agree():
    assert ssl.METHODS.names() == sorted(ssl.METHOD_DEFAULTS)
    schema = yaml.safe_load(SCHEMA.read_text())
    enum = schema["definitions"]["source"]["properties"]["pretrain"]["properties"]["method"]["enum"]
    assert enum == list(METHODS)
    for name in ssl.METHODS:  # each method says which library parts it uses
        assert "lightly" in ssl.METHODS.get(name).uses


@pytest.mark.parametrize("name", SSL_METHODS)
def test_each_row_of_the_defaults_table_has_its_class_and_no_class_lacks_a_row(name):
    assert ssl.METHODS.get(name).name == name
    with pytest.raises(ValueError, match="METHOD_DEFAULTS"):
        register_method(f"{name}_without_defaults")


@pytest.mark.parametrize("name", SSL_METHODS)
def test_every_method_trains_and_its_state_is_in_the_module(name, tmp_path):
    before = {k: v.clone() for k, v in models.create("cbr_tiny", 2, width=0.25).state_dict().items()}
    method, history = run_method(name, tmp_path)
    assert len(history) == 2 and all(np.isfinite(row["train_loss"]) for row in history)
    assert all("embedding_spread" in row for row in history)
    state = method.state_dict()
    after = method.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    # the classifier of the backbone is never trained (WT replaces it)
    torch.manual_seed(0)
    fresh = models.create("cbr_tiny", 2, width=0.25)
    assert torch.equal(fresh.get_classifier().weight, method.backbone.get_classifier().weight)
    extra = {"dino": "criterion.center", "byol": "target_backbone.", "swav": "prototypes.heads.0.weight"}
    if name in extra:
        assert any(k.startswith(extra[name]) for k in state), sorted(state)[:10]
    if name == "mocov2":  # lightly's queue is a non-persistent buffer: it must travel as extra state
        queue = state["_extra_state"]["criterion.memory_bank.bank"]
        assert torch.equal(queue, method.criterion.memory_bank.bank) and queue.shape == (32, 16)
    if name == "swav":  # its queue holds the last projected global views, normalised, in the state
        bank = state["_extra_state"]["queues.0.bank"]
        assert bank.shape == (32, 16) and torch.allclose(bank.norm(dim=1), torch.ones(32), atol=1e-4)
    if name in ("byol", "dino", "mocov2"):  # an EMA twin: moved, but not equal to the student
        twin = {"byol": "target_backbone", "dino": "teacher_backbone", "mocov2": "key_backbone"}[name]
        twin_state = getattr(method, twin).state_dict()
        assert not all(torch.equal(twin_state[k], after[k]) for k in after)
        assert any(not torch.equal(twin_state[k], before[k]) for k in before if k.endswith("weight"))
        assert not any(p.requires_grad for p in getattr(method, twin).parameters())


@pytest.mark.parametrize("name", ["mocov2", "dino", "swav", "byol"])
def test_sigterm_mid_epoch_then_resume_is_bit_identical(name, tmp_path):
    reference, reference_history = run_method(name, tmp_path / "a")

    def preempt(epoch, batch):
        if (epoch, batch) == (1, 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        run_method(name, tmp_path / "b", on_batch=preempt)
    resumed, resumed_history = run_method(name, tmp_path / "b")
    resumed_state = resumed.state_dict()
    for key, value in reference.state_dict().items():
        if isinstance(value, dict):  # extra state (MoCo's queue)
            assert value.keys() == resumed_state[key].keys()
            assert all(torch.equal(v, resumed_state[key][k]) for k, v in value.items()), key
        else:
            assert torch.equal(value, resumed_state[key]), key
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(resumed_history) == strip(reference_history)


def test_gray_views_have_no_hue_saturation_or_grayscale_and_the_right_sizes():
    recipe = resolve_options("dino", {"local_crops": 3}, "k")
    gray = ssl.Views(recipe, size=32, gray=True, mean=[0.5] * 3, std=[0.5] * 3)
    rgb = ssl.Views(recipe, size=32, gray=False, mean=[0.5] * 3, std=[0.5] * 3)
    for views in (gray, rgb):
        out = views(images(8, 32, channels=1 if views is gray else 3))
        assert [v.shape[-1] for v in out] == [32, 32, 14, 14, 14]  # 96/224 of 32
    kinds = lambda v: [type(m).__name__ for p in v.global_views for m in p]  # noqa: E731
    assert "RandomGrayscale" not in kinds(gray) and "RandomGrayscale" in kinds(rgb)
    jitter = next(m for p in gray.global_views for m in p if type(m).__name__ == "ColorJitter")
    rgb_jitter = next(m for p in rgb.global_views for m in p if type(m).__name__ == "ColorJitter")
    assert (float(jitter.saturation), float(jitter.hue)) == (0.0, 0.0)
    assert (float(rgb_jitter.saturation), float(rgb_jitter.hue)) == tuple(recipe["jitter"][2:])
    # a gray image stays gray: its three channels are equal in every view
    for v in gray(images(8, 32, channels=1)):
        assert torch.allclose(v[:, 0], v[:, 1]) and torch.allclose(v[:, 1], v[:, 2])
    assert not gray.blur_on and ssl.Views(recipe, size=64, gray=True, mean=[0.5] * 3, std=[0.5] * 3).blur_on


def test_views_are_normalised_and_reproducible_from_the_rng():
    recipe = resolve_options("simclr", {"jitter_p": 0.0, "grayscale_p": 0.0, "crop_scale": [1.0, 1.0],
                                        "hflip": 0.0}, "k")
    x = images(4, 16)
    views = ssl.Views(recipe, size=16, gray=False, mean=[0.2, 0.4, 0.6], std=[0.5, 0.25, 0.1])
    first = views(x)[0]  # full-area crop, no jitter: normalisation only
    expected = (x - torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 0.1]).view(1, 3, 1, 1)
    assert torch.allclose(first, expected, atol=1e-5)
    full = ssl.Views(resolve_options("byol", None, "k"), size=16, gray=False, mean=[0.5] * 3, std=[0.5] * 3)
    torch.manual_seed(3)
    a = full(x)
    torch.manual_seed(3)
    b = full(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], a[1])


def test_knn_scores_match_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    memory, queries = rng.normal(size=(200, 16)), rng.normal(size=(30, 16))
    labels = rng.integers(0, 4, 200)
    k, temperature = 15, 0.1
    ours = knn_scores(torch.tensor(memory), torch.tensor(labels), torch.tensor(queries), num_classes=4, k=k,
                      temperature=temperature).numpy()
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine",
                                     weights=lambda d: np.exp((1.0 - d) / temperature)).fit(memory, labels)
    assert np.allclose(ours, reference.predict_proba(queries), atol=1e-5)


def test_knn_scores_multilabel_vote_per_label_over_known_neighbours():
    memory = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 0.0]])
    scores = knn_scores(memory, labels, torch.tensor([[1.0, 0.0]]), num_classes=2, k=2, temperature=0.5)
    s0 = np.exp(1 / 0.5)
    s1 = np.exp((0.9 / np.hypot(0.9, 0.1)) / 0.5)
    assert scores[0, 0].item() == pytest.approx(s0 / (s0 + s1), rel=1e-5)  # both neighbours know label 0
    assert scores[0, 1].item() == pytest.approx(1.0)  # only the second knows label 1, and it is positive


def test_embedding_spread_is_zero_when_collapsed_and_near_one_when_spread():
    assert embedding_spread(torch.ones(100, 32)) == pytest.approx(0.0, abs=1e-6)
    assert embedding_spread(torch.randn(5000, 32, generator=torch.Generator().manual_seed(0))) == pytest.approx(
        1.0, abs=0.05)


def test_a_collapsed_representation_warns_loudly(caplog):
    torch.manual_seed(0)
    backbone = models.create("cbr_tiny", 2, width=0.25)
    with torch.no_grad():
        for p in backbone.parameters():
            p.zero_()  # every image maps to the same embedding
    options = resolve_options("simclr", SMALL_HEADS, "k")
    method = ssl.build("simclr", backbone, options, steps_per_epoch=1, epochs=1)
    objective = ssl.SSLObjective(method, ssl.Views(options, size=16, gray=False, mean=[0.5] * 3, std=[0.5] * 3),
                                 device=CPU, precision=Precision(None, False), monitor=None)
    objective.loss(images(16), None, 0)
    row = {"train_loss": 1.0}
    with caplog.at_level(logging.WARNING):
        objective.end_epoch(0, row)
    assert row["embedding_spread"] < 0.05 and objective.collapsed_epochs == [1]
    assert "COLLAPSE" in caplog.text


# --- config -------------------------------------------------------------------------------------


def ssl_config(**sources):
    config = tiny_config()
    config["sources"] = sources
    config["study"]["inits"] = ["RI"] + [{"WT": name} for name in sources]
    config["analysis"]["pairs"] = [{"a": f"WT_{name}", "b": "RI"} for name in sources]
    return config


def test_unknown_method_or_option_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"sources.a.pretrain.method.*simclr, mocov2, byol"):
        Study(ssl_config(a={"pretrain": {"dataset": "shapes", "method": "simsiam"}}))
    with pytest.raises(ConfigError, match=r"sources.a.pretrain.options: unknown option\(s\) local_crop .*local_crops"):
        Study(ssl_config(a={"pretrain": {"dataset": "shapes", "method": "dino", "options": {"local_crop": 2}}}))
    with pytest.raises(ConfigError, match="supervised takes no options"):
        Study(ssl_config(a={"pretrain": {"dataset": "shapes", "options": {"temperature": 0.1}}}))


def test_from_names_a_missing_source_or_a_cycle():
    with pytest.raises(ConfigError, match=r"sources.a.pretrain.from: source 'nope'"):
        Study(ssl_config(a={"pretrain": {"dataset": "shapes", "method": "simclr", "from": "nope"}}))
    with pytest.raises(ConfigError, match=r"cycle \(a -> b -> a\)"):
        Study(ssl_config(a={"pretrain": {"dataset": "shapes", "method": "byol", "from": "b"}},
                         b={"pretrain": {"dataset": "shapes", "from": "a"}}))


def test_a_chain_pretrains_every_link_and_specs_say_where_each_starts():
    study = Study(ssl_config(
        natural={"pretrain": {"dataset": "shapes"}},
        cont={"pretrain": {"dataset": "lesions", "method": "simclr", "from": "natural"}},
        hub={"timm": True},
        cont2={"pretrain": {"dataset": "lesions", "method": "dino", "from": "hub"}}))
    arch = study.architectures[0]
    assert set(study.pretrain_jobs()) == {("natural", arch), ("cont", arch), ("cont2", arch)}
    spec = study.pretrain_spec("cont", arch)
    assert spec["method"] == "simclr" and spec["from"] == {"kind": "pretrain", "path": f"results/pretrain/natural/{arch}/model.pt"}
    assert spec["options"]["temperature"] == 0.5
    assert study.pretrain_spec("cont2", arch)["from"]["kind"] == "timm"
    # a supervised source's spec carries no method keys, so existing results keep their spec hash
    assert not {"method", "options", "from"} & set(study.pretrain_spec("natural", arch))


# ---- the pretrain stage end to end: unlabelled folders, continual pretraining, bad input ----------

def write_png_tree(root, n, size=16, seed=0):
    """n random RGB PNGs at two depths, no class folders (an unlabelled collection)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / ("scans" if i % 2 else "scans/more")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def pretrain_study(tmp_path, monkeypatch, **sources):
    from medtransfer.data import build_cache

    monkeypatch.chdir(tmp_path)
    write_png_tree(tmp_path / "unlabelled", 80)
    config = ssl_config(**sources)
    config["datasets"]["scans"] = {"format": "imagefolder", "root": str(tmp_path / "unlabelled"),
                                   "labels": False, "size": 16, "val_fraction": 0.1, "test_fraction": 0.1}
    config["pretrain"] = {"epochs": 2, "batch_size": 16, "eval_batch_size": 64}
    study = Study(config)
    for name in {e["pretrain"]["dataset"] for e in sources.values() if "pretrain" in e}:
        build_cache(name, study.datasets[name], f"results/data/{name}.h5")
    return study


def test_an_unlabelled_folder_pretrains_simclr_and_the_result_is_a_wt_source(tmp_path, monkeypatch):
    from medtransfer.data import read_info
    from medtransfer.models.weights import load_source_state_dict
    from medtransfer.training.pretrain import pretrain

    options = {"simclr": SMALL["simclr"]}
    study = pretrain_study(tmp_path, monkeypatch,
                           folder={"pretrain": {"dataset": "scans", "method": "simclr", "options": options["simclr"]}})
    info = read_info("results/data/scans.h5")
    assert info.task == "unlabeled" and info.class_names == [] and sum(info.split_sizes.values()) == 80
    spec = study.pretrain_spec("folder", "cbr_tiny")
    meta = pretrain(spec, device="cpu", progress=False)
    assert meta["method"] == "simclr" and len(meta["history"]) == 2
    assert "acc" not in meta["knn"] and "knn_acc" not in meta["history"][0]  # nothing to score without labels
    state = load_source_state_dict({"kind": "pretrain", "path": f"{spec['out_dir']}/model.pt"})
    model = models.create("cbr_tiny", 2, width=0.125)
    from medtransfer import init

    init.apply(model, "WT", state, seed=0)
    assert not (Path(spec["out_dir"]) / "checkpoint.pt").exists()


def test_continual_pretraining_starts_from_the_other_source(tmp_path, monkeypatch):
    from medtransfer.training.pretrain import pretrain

    study = pretrain_study(tmp_path, monkeypatch,
                           natural={"pretrain": {"dataset": "shapes"}},
                           cont={"pretrain": {"dataset": "lesions", "method": "byol", "from": "natural",
                                              "options": SMALL["byol"]}})
    natural = pretrain(study.pretrain_spec("natural", "cbr_tiny"), device="cpu", progress=False)
    spec = study.pretrain_spec("cont", "cbr_tiny")
    spec["training"]["epochs"] = 0  # no step: the result must be the starting source's backbone
    meta = pretrain(spec, device="cpu", progress=False)
    assert meta["start"] == {"from": spec["from"], "init": "WT"}
    assert meta["knn"]["acc"] == pytest.approx(meta["knn"]["start_acc"])
    start = torch.load(spec["from"]["path"], weights_only=True)["state_dict"]
    end = torch.load(f"{spec['out_dir']}/model.pt", weights_only=True)["state_dict"]
    body = [k for block, keys in models.block_keys(models.create("cbr_tiny", 2, width=0.125)).items()
            if block != models.HEAD for k in keys]
    assert body and all(torch.equal(start[k], end[k]) for k in body)
    assert natural["knn"]["acc"] > 0


def test_a_batch_larger_than_the_dataset_stops_before_any_file(tmp_path, monkeypatch):
    from medtransfer.training.pretrain import pretrain

    study = pretrain_study(tmp_path, monkeypatch, folder={"pretrain": {"dataset": "scans", "method": "byol",
                                                                       "training": {"batch_size": 512}}})
    spec = study.pretrain_spec("folder", "cbr_tiny")
    with pytest.raises(ConfigError, match=r"sources.folder.pretrain.training.batch_size.*only 64 training images"):
        pretrain(spec, device="cpu", progress=False)
    assert not Path(spec["out_dir"]).exists()


def test_unlabelled_data_cannot_be_a_target_or_pretrain_supervised(tmp_path):
    config = ssl_config(a={"pretrain": {"dataset": "scans"}})
    config["datasets"]["scans"] = {"format": "imagefolder", "root": str(tmp_path), "labels": False, "size": 16}
    with pytest.raises(ConfigError, match=r"sources.a.pretrain.method: supervised pretraining needs labels"):
        Study(config)
    from medtransfer.study import validate_config

    validate_config(config, SCHEMA)
    with pytest.raises(ConfigError, match=r"datasets.scans.labels: 'no' is not of type 'boolean'"):
        validate_config({**config, "datasets": {**config["datasets"], "scans": {**config["datasets"]["scans"],
                                                                              "labels": "no"}}}, SCHEMA)
    config["sources"] = {}
    config["study"]["inits"] = ["RI"]
    config["study"]["targets"] = ["scans"]
    with pytest.raises(ConfigError, match=r"study.targets\[0\]: dataset 'scans' has no labels"):
        Study(config)


def test_a_folder_of_loose_images_suggests_labels_false(tmp_path):
    from medtransfer.data.formats.folders import read_imagefolder
    from medtransfer.errors import DataError

    from PIL import Image

    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DataError, match="labels: false"):
        read_imagefolder("mine", {"format": "imagefolder", "root": str(tmp_path), "size": 16})
