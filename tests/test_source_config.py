"""How a study says how each run trains and reads its images (issue 26):
``train.by_dataset`` / ``train.by_arch`` (and ``pretrain``'s), a source's ``preprocess``, and
supervised pretraining on multi-label data."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import SCHEMA, tiny_config
from medtransfer.data import FORMATS, RawDataset, build_cache, make_loader
from medtransfer.errors import ConfigError
from medtransfer.study import Study, validate_config

# Keras's imagenet_utils.preprocess_input(mode="caffe"), written out: RGB -> BGR, this mean
# (BGR order) subtracted from 0..255 pixels, no scaling.
KERAS_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
TORCHVISION_IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


def write_cache(path, *, task="multiclass", channels=3, size=12, n=(48, 24, 24), seed=0):
    """A tiny HDF5 cache of random images (multilabel: 3 labels, one unknown per split)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in zip(("train", "val", "test"), n):
        images = rng.integers(0, 256, (count, channels, size, size), dtype=np.uint8)
        if task == "multilabel":
            labels = (np.arange(count)[:, None] + np.arange(3)[None]) % 2  # both values in every column
            labels = labels[rng.permutation(count)].astype(np.float32)
            labels[0, 1] = np.nan
        else:
            labels = np.arange(count, dtype=np.int64) % 3
        splits[split] = (images, labels)
    raw = RawDataset(splits, task, ["a", "b", "c"], "memory", "x")
    FORMATS._items["_source_config_test"] = lambda name, entry: raw
    try:
        build_cache("d", {"format": "_source_config_test"}, path)
    finally:
        del FORMATS._items["_source_config_test"]
    return path, splits


def batches(loader) -> np.ndarray:
    return torch.cat([x for x, _ in loader]).numpy()


# --- train.by_dataset / train.by_arch --------------------------------------------------------------

def override_config() -> dict:
    config = tiny_config()
    config["datasets"]["organs"] = {"format": "synthetic", "task": "lesion_grade", "n_train": 100, "n_val": 50,
                                    "n_test": 50, "size": 16}
    config["architectures"]["resnet18_28"] = {"width": 0.125}
    config["study"]["targets"] = ["lesions", "organs"]
    config["study"]["architectures"] = ["cbr_tiny", "resnet18_28"]
    config["train"]["optimizer"] = {"name": "sgd", "lr": 0.1, "weight_decay": 1.0e-4}
    config["train"]["by_arch"] = {"resnet18_28": {"optimizer": {"lr": 1.0e-4}, "epochs": 3}}
    config["train"]["by_dataset"] = {"lesions": {"augment": {"hflip": False}, "epochs": 4}}
    return config


def test_by_dataset_and_by_arch_merge_over_train_per_run_with_the_dataset_winning():
    config = override_config()
    study = Study(config)
    plain = Study({**config, "train": {k: v for k, v in config["train"].items() if not k.startswith("by_")}})
    seen = set()
    for run in study.runs:
        training = study.run_spec(run)["training"]
        expected = copy.deepcopy(plain.train)  # the merge written out, key by key
        if run.arch == "resnet18_28":
            expected["optimizer"]["lr"], expected["epochs"] = 1.0e-4, 3
        if run.dataset == "lesions":
            expected["augment"], expected["epochs"] = {"hflip": False}, 4  # the dataset wins over the arch
        assert training == expected, run.id
        assert "by_arch" not in training and "by_dataset" not in training
        seen.add((run.dataset, run.arch, training["epochs"], training["optimizer"]["lr"]))
    assert seen == {("lesions", "cbr_tiny", 4, 0.1), ("lesions", "resnet18_28", 4, 1.0e-4),
                    ("organs", "cbr_tiny", 2, 0.1), ("organs", "resnet18_28", 3, 1.0e-4)}
    # the runs no override names keep exactly the spec of a study without overrides
    run = next(r for r in study.runs if (r.dataset, r.arch) == ("organs", "cbr_tiny"))
    assert study.run_spec(run) == plain.run_spec(run)
    # frozen features and activations read the run's settings
    other = next(r for r in study.runs if (r.dataset, r.arch, r.init) == ("lesions", "resnet18_28", "WT_natural"))
    assert study.features_spec("lesions", "resnet18_28", "WT_natural", "shared")["training"] == \
        study.run_spec(other)["training"]
    assert study.activation_spec(other)["training"]["eval_batch_size"] == 256
    # pretraining takes pretrain.by_*, not train's: its dataset is not a target
    assert study.pretrain_spec("natural", "resnet18_28")["training"]["optimizer"]["lr"] == 0.1


def test_pretrain_overrides_apply_to_the_pretraining_of_their_dataset_and_arch():
    config = override_config()
    config["pretrain"] = {"epochs": 1, "by_arch": {"resnet18_28": {"epochs": 5, "batch_size": 16}},
                          "by_dataset": {"shapes": {"epochs": 7}}}
    config["sources"]["own"] = {"pretrain": {"dataset": "shapes", "training": {"epochs": 9}}}
    config["study"]["inits"].append({"WT": "own"})
    study = Study(config)
    natural = study.pretrain_spec("natural", "resnet18_28")["training"]
    assert (natural["epochs"], natural["batch_size"]) == (7, 16) and "by_arch" not in natural
    assert study.pretrain_spec("natural", "cbr_tiny")["training"]["batch_size"] == 32
    assert study.pretrain_spec("own", "resnet18_28")["training"]["epochs"] == 9  # the entry's own wins


@pytest.mark.parametrize("section, override, message", [
    ("train", {"by_dataset": {"shapes": {"epochs": 3}}},
     r"train.by_dataset.shapes: 'shapes' is not a target of the study \(study.targets\); allowed: lesions, organs"),
    ("train", {"by_arch": {"resnet50": {"epochs": 3}}},
     r"train.by_arch.resnet50: 'resnet50' is not an architecture of the study .*allowed: cbr_tiny, resnet18_28"),
    ("train", {"by_arch": {"cbr_tiny": {"by_dataset": {"lesions": {}}}}},
     r"train.by_arch.cbr_tiny.by_dataset: overrides do not nest"),
    ("train", {"by_dataset": {"lesions": 3}}, r"train.by_dataset.lesions: give training settings"),
    ("train", {"by_arch": {"cbr_tiny": {"gpus_per_job": 3}}},
     r"train.by_arch.cbr_tiny.batch_size: 32 is the global batch, shared by train.by_arch.cbr_tiny.gpus_per_job"),
    ("pretrain", {"by_dataset": {"lesions": {"epochs": 3}}},
     r"pretrain.by_dataset.lesions: 'lesions' is not a dataset a source pretrains on .*allowed: shapes"),
])
def test_overrides_that_name_nothing_of_the_study_are_config_errors(section, override, message):
    config = override_config()
    config[section] = {k: v for k, v in (config.get(section) or {}).items() if not k.startswith("by_")} | override
    with pytest.raises(ConfigError, match=message):
        Study(config)


def test_the_schema_checks_override_values_as_training_sections_and_snakemake_defaults_stay_out():
    from snakemake.utils import validate

    config = override_config()
    validate_config(config, SCHEMA)
    for bad, key in ((({"epochs": 0}), "train.by_arch.resnet18_28.epochs"),
                     (({"by_arch": {}}), "train.by_arch.resnet18_28: 'by_arch' should not be valid"),
                     (({"optimiser": {}}), "train.by_arch.resnet18_28")):
        wrong = copy.deepcopy(config)
        wrong["train"]["by_arch"]["resnet18_28"] = bad
        with pytest.raises(ConfigError, match=key):
            validate_config(wrong, SCHEMA)
    # Snakemake's validate fills in any default the schema declares: the schema declares none, so
    # an override (or pretrain:) holds only what the user wrote and inherits the rest
    config["pretrain"] = {"optimizer": {"lr": 0.5}}
    filled = copy.deepcopy(config)
    validate(filled, str(SCHEMA))
    assert filled == config
    study = Study(filled)
    run = next(r for r in study.runs if r.arch == "resnet18_28")
    assert study.run_spec(run)["training"]["optimizer"] == {"name": "sgd", "lr": 1.0e-4,
                                                            "weight_decay": 1.0e-4, "momentum": 0.9}
    assert study.pretrain_defaults["optimizer"] == {**study.train["optimizer"], "lr": 0.5}


# --- sources.<name>.preprocess ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def rgb_cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("rgb") / "rgb.h5", channels=3)


@pytest.fixture(scope="module")
def gray_cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("gray") / "gray.h5", channels=1, seed=1)


def keras_caffe(images_nchw: np.ndarray) -> np.ndarray:
    """Keras's formula on NHWC 0..255 RGB, returned as NCHW."""
    x = images_nchw.transpose(0, 2, 3, 1).astype(np.float64)
    return (x[..., ::-1] - KERAS_CAFFE_MEAN_BGR).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("cache", ["rgb_cache", "gray_cache"])
def test_preprocess_caffe_is_keras_caffe_mode(cache, request):
    path, splits = request.getfixturevalue(cache)
    images = splits["val"][0]
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)  # gray is replicated to 3 channels first, as the loader does
    got = batches(make_loader(path, "val", batch_size=10, shuffle=False, normalize="caffe", num_workers=0))
    np.testing.assert_allclose(got, keras_caffe(images), atol=2e-4)


def test_preprocess_caffe_matches_keras_itself_where_keras_is_installed(rgb_cache):
    os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 beside our torch, no TensorFlow needed
    imagenet_utils = pytest.importorskip("keras.applications.imagenet_utils")
    path, splits = rgb_cache
    got = batches(make_loader(path, "val", batch_size=10, shuffle=False, normalize="caffe", num_workers=0))
    nhwc = splits["val"][0].transpose(0, 2, 3, 1).astype(np.float32)
    want = np.asarray(imagenet_utils.preprocess_input(nhwc, data_format="channels_last", mode="caffe"))
    np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), atol=2e-4)


def test_preprocess_imagenet_unit_and_explicit_statistics(rgb_cache):
    path, splits = rgb_cache
    pixels = splits["val"][0].astype(np.float64) / 255
    mean, std = TORCHVISION_IMAGENET

    def loaded(normalize):
        return batches(make_loader(path, "val", batch_size=10, shuffle=False, normalize=normalize, num_workers=0))

    np.testing.assert_allclose(loaded("imagenet"), (pixels - mean[:, None, None]) / std[:, None, None], atol=1e-5)
    np.testing.assert_allclose(loaded("unit"), pixels, atol=1e-6)
    explicit = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 0.125], "bgr": True}
    want = (pixels[:, ::-1] - np.array(explicit["mean"])[:, None, None]) / np.array(explicit["std"])[:, None, None]
    np.testing.assert_allclose(loaded(explicit), want, atol=1e-5)


def preprocess_config() -> dict:
    config = tiny_config()
    config["sources"]["natural"]["preprocess"] = "caffe"
    config["sources"]["other"] = {"file": "weights/other-{arch}.pt"}
    config["sources"]["unit-src"] = {"file": "weights/other-{arch}.pt", "preprocess": "unit"}
    config["study"]["inits"] = ["RI", {"WT": "natural"}, {"ST": "natural"}, {"WT": "other"},
                                {"CONCAT": ["natural", "other"], "finetune": True}, {"DVME": ["other", "unit-src"]}]
    config["study"]["protocols"] = ["finetune", "linear"]
    config["analysis"]["pairs"] = []
    return config


def test_preprocess_reaches_every_job_that_reads_the_source_and_no_other():
    from medtransfer.training.stage import spec_normalize

    study = Study(preprocess_config())
    validate_config(preprocess_config(), SCHEMA)
    by_init = {run.init: study.run_spec(run) for run in study.runs if run.seed == 0}
    assert by_init["WT_natural"]["preprocess"] == "caffe" and by_init["ST_natural"]["preprocess"] == "caffe"
    assert "preprocess" not in by_init["RI"] and "preprocess" not in by_init["WT_other"]
    assert [spec_normalize(by_init[i]) for i in ("WT_natural", "RI", "WT_other")] == ["caffe", "dataset", "dataset"]
    # frozen features, activations and the source's own pretraining
    assert study.features_spec("lesions", "cbr_tiny", "WT_natural", "shared")["preprocess"] == "caffe"
    assert "preprocess" not in study.features_spec("lesions", "cbr_tiny", "WT_other", "shared")
    run = next(r for r in study.runs if r.init == "WT_natural")
    assert study.activation_spec(run)["preprocess"] == "caffe"
    assert study.pretrain_spec("natural", "cbr_tiny")["preprocess"] == "caffe"
    # a fusion: each member its own; the batch is [0, 1] and the members transform it themselves
    fusion = by_init["CONCAT_natural+other"]
    assert [m.get("preprocess") for m in fusion["members"]] == ["caffe", None]
    assert "preprocess" not in fusion and spec_normalize(fusion) == "unit"
    dvme = next(r for _, r in study.probe_runs if r.init == "DVME_other+unit-src")
    assert study.features_path(dvme)[1].endswith("WT_unit-src/shared.h5")
    assert study.features_spec("lesions", "cbr_tiny", "WT_unit-src", "shared")["preprocess"] == "unit"
    # the FID embedder, when it is the source, reads images as the source's runs do
    assert study.fid_embedder_spec()["normalize"] == "caffe"


@pytest.mark.parametrize("value", ["tf", {"mean": [0.5, 0.5], "std": 0.2}, {"mean": 0.5, "std": 0},
                                   {"mean": 0.5, "std": 0.2, "rgb": True}])
def test_a_preprocess_outside_the_allowed_ones_is_a_config_error_naming_the_key(value):
    from medtransfer.data.loader import PREPROCESS_NAMES
    from medtransfer.study.pretrain import PREPROCESS_NAMES as PLANNED

    assert PLANNED == PREPROCESS_NAMES
    bad = preprocess_config()
    bad["sources"]["other"]["preprocess"] = value
    with pytest.raises(ConfigError, match=r"sources.other.preprocess: .*allowed: imagenet, caffe, unit or"):
        Study(bad)
    with pytest.raises(ConfigError, match="sources.other"):
        validate_config(bad, SCHEMA)


def test_each_fused_backbone_sees_the_batch_its_own_loader_would_give(rgb_cache, tmp_path):
    from medtransfer import models
    from medtransfer.training.stage import initialised_model, spec_loader

    path, _ = rgb_cache
    weights = tmp_path / "w.pt"
    torch.save(models.create("cbr_tiny", 3, width=0.125).state_dict(), weights)
    training = {**Study(tiny_config()).train, "num_workers": 0}
    member = {"arch": "cbr_tiny", "arch_options": {"width": 0.125}, "weights": {"kind": "file", "path": str(weights)}}
    spec = {"cache": str(path), "arch": "cbr_tiny", "arch_options": {"width": 0.125}, "seed": 0, "training": training,
            "init": {"name": "CONCAT", "k": None}, "source": None,
            "members": [{**member, "source": "a", "preprocess": "caffe"}, {**member, "source": "b"}]}
    network, _, _ = initialised_model(spec, 3)
    seen = []
    for backbone in network.backbones:  # what each backbone's features are computed from
        backbone.forward_features = (lambda features: lambda x: features(seen.append(x.clone()) or x))(
            backbone.forward_features)
    x = next(iter(spec_loader(spec, "val", torch.device("cpu"))))[0]
    with torch.no_grad():
        network.eval()(x)
    caffe = next(iter(make_loader(path, "val", batch_size=256, shuffle=False, normalize="caffe", num_workers=0)))[0]
    dataset = next(iter(make_loader(path, "val", batch_size=256, shuffle=False, normalize="dataset", num_workers=0)))[0]
    assert torch.allclose(seen[0], caffe, atol=2e-4) and torch.allclose(seen[1], dataset, atol=1e-5)
    assert not any("transforms" in key for key in network.state_dict())  # checkpoints keep their keys


def test_ssl_views_reverse_the_channels_before_normalising():
    from medtransfer.training import ssl
    from medtransfer.training.ssl.options import resolve_options

    recipe = resolve_options("simclr", {"jitter_p": 0.0, "grayscale_p": 0.0, "crop_scale": [1.0, 1.0],
                                        "hflip": 0.0}, "k")
    x = torch.rand(4, 3, 16, 16)
    mean, std = [0.4, 0.45, 0.48], [0.2, 0.3, 0.4]
    views = ssl.Views(recipe, size=16, gray=False, mean=mean, std=std, bgr=True)
    want = (x.flip(1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(views(x)[0], want, atol=1e-5)


# --- supervised pretraining on multi-label data -------------------------------------------------------

def test_supervised_pretraining_on_multilabel_data_trains_with_bce_and_selects_on_mean_auc(tmp_path, monkeypatch):
    from medtransfer import models
    from medtransfer.training.pretrain import pretrain
    from medtransfer.training.stage import initialised_model, spec_loader

    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    config["datasets"]["chest"] = {"format": "_source_config_test"}
    config["sources"]["chest-sup"] = {"pretrain": {"dataset": "chest", "method": "supervised", "from": "natural"}}
    config["study"]["inits"] = ["RI", {"WT": "chest-sup"}]
    config["analysis"]["pairs"] = []
    config["pretrain"] = {"epochs": 2, "batch_size": 16, "eval_batch_size": 64}
    study = Study(config)
    write_cache(tmp_path / "results/data/chest.h5", task="multilabel", channels=1, size=16)
    build_cache("shapes", study.datasets["shapes"], "results/data/shapes.h5")
    pretrain(study.pretrain_spec("natural", "cbr_tiny"), device="cpu", progress=False)
    spec = study.pretrain_spec("chest-sup", "cbr_tiny")
    meta = pretrain(spec, device="cpu", progress=False)
    assert [row["epoch"] for row in meta["history"]] == [1, 2]
    assert all(np.isfinite(row["val_auc"]) for row in meta["history"])
    assert 0 <= meta["knn"]["auc"] <= 1 and "acc" not in meta["knn"] and "start_auc" in meta["knn"]
    # the kept weights score the best epoch's val_auc: the mean per-label AUC over known labels
    saved = torch.load(f"{spec['out_dir']}/model.pt", weights_only=True)
    assert saved["num_classes"] == 3
    model = models.create("cbr_tiny", 3, in_chans=3, width=0.125)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    with torch.no_grad():
        pairs = [(torch.sigmoid(model(x)), y) for x, y in spec_loader(spec, "val", torch.device("cpu"))]
    scores, labels = (torch.cat(t).numpy() for t in zip(*pairs))
    known = ~np.isnan(labels)
    mean_auc = np.mean([roc_auc_score(labels[known[:, j], j], scores[known[:, j], j]) for j in range(3)])
    assert meta["history"][meta["best_epoch"] - 1]["val_auc"] == pytest.approx(mean_auc, abs=1e-6)
    # and the result is an ordinary source: a WT run starts from its backbone
    run = next(r for r in study.runs if r.init == "WT_chest-sup")
    model, record, _ = initialised_model(study.run_spec(run), 2)
    state = model.state_dict()
    body = [k for block, keys in models.block_keys(model).items() if block != models.HEAD for k in keys]
    assert body and all(torch.equal(state[k], saved["state_dict"][k]) for k in body)
    assert record["source_weights"]["kind"] == "pretrain"
