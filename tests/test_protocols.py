"""Evaluation protocols: the linear probe is scikit-learn's logistic regression, the k-NN
protocol scores like scikit-learn's neighbours classifier, and the grid / workflow give every
protocol its runs with finetune runs untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from medtransfer.protocols import PROTOCOL_TABLE
from medtransfer.protocols.knn import knn_predict
from medtransfer.protocols.linear import fit_probe, probe_scores, select_probe


def blobs(n=300, d=12, classes=3, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, (classes, d))
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(0, 1, (n, d))
    return x.astype(np.float32), y.astype(np.int64)


def objective(x, y, weight, bias, weight_decay):
    """Mean cross-entropy + weight_decay / 2 * ||W||^2, in float64 numpy (independent of torch)."""
    logits = x.astype(np.float64) @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
    logits -= logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean() + 0.5 * weight_decay * np.square(weight).sum()


@pytest.mark.parametrize("weight_decay", [1e-3, 1e-2, 1e-1])
def test_linear_probe_is_multinomial_logistic_regression(weight_decay):
    x, y = blobs()
    probe = fit_probe(x, y, task="multiclass", num_outputs=3, weight_decay=weight_decay, standardize=False)
    reference = LogisticRegression(C=1.0 / (weight_decay * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    ours = objective(x, y, probe.linear.weight.detach().numpy(), probe.linear.bias.detach().numpy(), weight_decay)
    theirs = objective(x, y, reference.coef_, reference.intercept_, weight_decay)
    # the same strictly convex objective: we reach its minimum at least as closely as scikit-learn
    assert ours <= theirs + 1e-12 and theirs - ours < 1e-7
    np.testing.assert_allclose(probe_scores(probe, x, "multiclass"), reference.predict_proba(x),
                               atol=1e-3)


def test_standardised_probe_equals_logistic_regression_on_standardised_features():
    x, y = blobs(seed=1)
    x = x * np.linspace(0.01, 100, x.shape[1], dtype=np.float32)  # wildly different scales
    probe = fit_probe(x, y, task="multiclass", num_outputs=3, weight_decay=1e-1)
    z = (x - x.mean(0)) / x.std(0)
    reference = LogisticRegression(C=1.0 / (1e-1 * len(y)), tol=1e-10, max_iter=10_000).fit(z, y)
    np.testing.assert_allclose(probe_scores(probe, x, "multiclass"), reference.predict_proba(z), atol=5e-4)


def test_the_validation_split_chooses_the_penalty():
    x, y = blobs(n=60, d=40, seed=2, spread=0.4)  # few examples, many dimensions: overfits unpenalised
    val = blobs(n=400, d=40, seed=2, spread=0.4)
    result = select_probe((x, y), val, task="multiclass", num_outputs=3, weight_decays=[1e-6, 1e-2, 1.0])
    best_row = max(result.grid, key=lambda r: r["val_auc"])
    assert result.weight_decay == best_row["weight_decay"] and len(result.grid) == 3


def test_multilabel_probe_is_one_logistic_regression_per_label_with_unknowns_masked():
    x, y = blobs(n=400, d=8, classes=2, seed=3)
    labels = np.stack([y, 1 - y, (x[:, 0] > 0).astype(np.int64)], 1).astype(np.float32)
    labels[:50, 2] = np.nan
    probe = fit_probe(x, labels, task="multilabel", num_outputs=3, weight_decay=1e-2, standardize=False)
    scores = probe_scores(probe, x, "multilabel")
    known = ~np.isnan(labels[:, 2])
    # the masked BCE averages over all known entries, so each label's share of the penalty is
    # weighted by the total number of known entries
    n_known = (~np.isnan(labels)).sum()
    reference = LogisticRegression(C=1.0 / (1e-2 * n_known), tol=1e-10, max_iter=10_000)
    reference.fit(x[known], labels[known, 2].astype(int))
    np.testing.assert_allclose(scores[:, 2], reference.predict_proba(x)[:, 1], atol=1e-4)


def test_knn_protocol_with_a_huge_temperature_votes_like_scikit_learn_uniform():
    x, y = blobs(n=500, d=16, classes=4, seed=4)
    q, _ = blobs(n=100, d=16, classes=4, seed=5)
    ours = knn_predict(x, y, q, task="multiclass", num_classes=4, k=15, temperature=1e6)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    reference = KNeighborsClassifier(n_neighbors=15, metric="cosine").fit(unit(x), y).predict_proba(unit(q))
    np.testing.assert_allclose(ours, reference, atol=1e-4)


# ---- the protocol axis of the grid and the frozen-feature jobs --------------------------------

from medtransfer.errors import ConfigError  # noqa: E402
from medtransfer.study import Study  # noqa: E402

from conftest import tiny_config  # noqa: E402


def protocol_config(protocols, **extra):
    config = tiny_config()
    config["study"]["protocols"] = protocols
    config.update(extra)
    return config


def test_finetune_runs_and_their_specs_do_not_move_when_protocols_are_added():
    plain, mixed = Study(tiny_config()), Study(protocol_config(["finetune", "linear", "knn"]))
    assert plain.runs == mixed.runs == mixed.cells
    assert [plain.run_spec(r) for r in plain.runs] == [mixed.run_spec(r) for r in mixed.runs]
    assert len(mixed.probe_runs) == 2 * len(mixed.cells)
    # WT features are shared by every seed and fraction; RI's depend on the seed
    assert mixed.feature_jobs() == sorted([
        "results/features/lesions/cbr_tiny/RI/s0.h5", "results/features/lesions/cbr_tiny/RI/s1.h5",
        "results/features/lesions/cbr_tiny/WT_natural/shared.h5"])
    frozen = Study(protocol_config(["linear"]))
    assert frozen.runs == [] and "test_auc" not in frozen.figure_names() and "protocols" in frozen.figure_names()
    spec = frozen.probe_spec("linear", frozen.cells[0])
    assert spec["run_dir"].startswith("results/protocols/linear/lesions/") and spec["linear"]["weight_decays"]


@pytest.mark.parametrize("name", PROTOCOL_TABLE)
def test_every_protocol_names_the_command_that_runs_its_jobs(name):
    """The table's traits agree with the jobs: frozen-feature protocols run ``probe``, the others
    (fine-tuning, lpft) ``finetune``; every protocol but fine-tuning (whose options are ``train:``)
    has options under the config key of its name."""
    from medtransfer.cli import build_parser

    protocol = PROTOCOL_TABLE[name]
    commands = build_parser()._subparsers._group_actions[0].choices
    assert protocol.name == name and protocol.command in commands
    assert protocol.frozen_features == (protocol.command == "probe")
    assert (protocol.defaults is not None) == (name != "finetune")


def test_unknown_or_repeated_protocols_are_config_errors():
    with pytest.raises(ConfigError, match=r"study.protocols\[1\]: unknown protocol 'probe'; allowed: finetune, linear, knn"):
        Study(protocol_config(["finetune", "probe"]))
    with pytest.raises(ConfigError, match="appears twice"):
        Study(protocol_config(["knn", "knn"]))


@pytest.fixture
def lesions_cache(tmp_path, monkeypatch):
    from medtransfer.data import build_cache

    monkeypatch.chdir(tmp_path)
    study = Study(protocol_config(["linear", "knn"]))
    build_cache("lesions", study.datasets["lesions"], "results/data/lesions.h5")
    return study


def test_linear_and_knn_runs_write_scores_whose_metrics_scikit_learn_confirms(lesions_cache):
    import h5py
    from sklearn.metrics import roc_auc_score

    from medtransfer.protocols.features import extract_features, read_features
    from medtransfer.protocols.probe import probe

    study = lesions_cache
    run = next(r for r in study.cells if r.init == "RI" and r.seed == 0)
    extract_features(study.features_spec(run.dataset, run.arch, run.init, "s0"), device="cpu")
    features = read_features(study.features_path(run))
    assert features["train"][0].shape == (200, features["train"][0].shape[1]) and features["init"]["init"] == "RI"
    for protocol in ("linear", "knn"):
        metrics = probe(study.probe_spec(protocol, run))
        assert metrics["protocol"] == protocol and metrics["n_train"] == 200 and metrics["fraction"] == 1.0
        with h5py.File(f"results/protocols/{protocol}/{run.id}/predictions.h5") as handle:
            scores, labels = handle["test/scores"][...], handle["test/labels"][...]
        assert scores.shape == (100, 2) and np.allclose(scores.sum(1), 1, atol=1e-5)
        assert metrics["test"]["auc"] == pytest.approx(roc_auc_score(labels, scores[:, 1]), abs=1e-9)
    assert probe(study.probe_spec("knn", run))["knn"]["k"] == 200  # = n_train: allowed, k is not larger


def test_a_k_larger_than_the_training_subset_names_the_key(lesions_cache):
    from medtransfer.paths import Run
    from medtransfer.protocols.features import extract_features
    from medtransfer.protocols.probe import probe

    study = lesions_cache
    run = Run("lesions", "cbr_tiny", "RI", "0.1", 0)
    extract_features(study.features_spec(run.dataset, run.arch, run.init, "s0"), device="cpu")
    spec = study.probe_spec("knn", run)
    with pytest.raises(ConfigError, match=r"knn.k: k = 200 is larger than the training set .*\(2\d images at fraction 0.1"):
        probe(spec)
    spec["knn"] = {**spec["knn"], "cap_k": True}
    metrics = probe(spec)
    assert metrics["knn"]["k"] == metrics["n_train"] < 30


def test_comparison_table_t_tests_each_init_against_the_reference(tmp_path):
    import pandas as pd
    from scipy import stats

    from medtransfer.figures.comparison import compare_to_reference, comparison_table

    rng = np.random.default_rng(0)
    rows = []
    for protocol in ("linear", "finetune"):
        for init, shift in (("RI", 0.0), ("WT_cifar", 0.1), ("WT_cifar-simclr", 0.12)):
            for seed in range(3):
                rows.append({"dataset": "breast", "arch": "r18", "protocol": protocol, "init": init,
                             "init_name": init.split("_")[0], "source": "", "k": "", "fraction": 0.1,
                             "seed": seed, "test_auc": 0.6 + shift + rng.normal(0, 0.02)})
    frame = pd.DataFrame(rows)
    table = compare_to_reference(frame, "WT_cifar")
    assert list(table["protocol"].unique()) == ["finetune", "linear"]  # PROTOCOLS order
    for row in table.itertuples():
        mine = frame[(frame.protocol == row.protocol) & (frame.init == row.init)].test_auc.to_numpy()
        ref = frame[(frame.protocol == row.protocol) & (frame.init == "WT_cifar")].test_auc.to_numpy()
        assert row.mean == pytest.approx(mine.mean()) and row.diff == pytest.approx(mine.mean() - ref.mean())
        if row.init == "WT_cifar":
            assert np.isnan(row.p_value)
            continue
        # Student's t by its closed form: pooled variance, 2n - 2 degrees of freedom
        pooled = np.sqrt(((len(mine) - 1) * mine.var(ddof=1) + (len(ref) - 1) * ref.var(ddof=1))
                         / (len(mine) + len(ref) - 2))
        t = (mine.mean() - ref.mean()) / (pooled * np.sqrt(1 / len(mine) + 1 / len(ref)))
        assert row.p_value == pytest.approx(2 * stats.t.sf(abs(t), len(mine) + len(ref) - 2), rel=1e-9)
    # seeds that do not vary on either side (a frozen source at 100 %) are not trials: no p-value
    constant = frame.assign(test_auc=np.where(frame.init == "RI", frame.test_auc, frame.init.str.len() / 100))
    table = compare_to_reference(constant, "WT_cifar")
    assert table.loc[table.init == "WT_cifar-simclr", "p_value"].isna().all()
    assert table.loc[table.init == "RI", "p_value"].notna().all()
    frame.to_csv(tmp_path / "metrics.csv", index=False)
    comparison_table(tmp_path / "metrics.csv", tmp_path / "c.csv", tmp_path / "c.md", reference="WT_cifar")
    text = (tmp_path / "c.md").read_text()
    assert "| linear | 10 % |" in text and "(p " in text and "**breast** (r18)" in text


def split_information(n, seed):
    """Two 'sources' that each see half of what decides the label: y = [a + b > 0]."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
    y = ((a + b)[:, 0] > 0).astype(np.int64)
    source_a = np.hstack([a, rng.normal(size=(n, 7))]).astype(np.float32)
    source_b = np.hstack([rng.normal(size=(n, 3)), b, rng.normal(size=(n, 12))]).astype(np.float32)  # other width
    return [source_a, source_b], y


def test_dvme_fuses_sources_that_are_weak_alone():
    from sklearn.metrics import roc_auc_score

    from medtransfer.protocols import DVME_DEFAULTS
    from medtransfer.protocols.dvme import dvme_scores, select_dvme

    train, val, test = split_information(600, 0), split_information(300, 1), split_information(400, 2)
    options = {**DVME_DEFAULTS, "dim": 32, "heads": 4, "epochs": 40, "batch_size": 128, "weight_decays": [1e-2]}
    result = select_dvme(train, val, task="binary", num_outputs=2, options=options, seed=0)
    fused = roc_auc_score(test[1], dvme_scores(result.head, test[0], "binary")[:, 1])
    alone = []
    for i in range(2):  # each source by itself, with the linear probe
        probe = select_probe((train[0][i], train[1]), (val[0][i], val[1]), task="binary", num_outputs=2,
                             weight_decays=[1e-3]).head
        alone.append(roc_auc_score(test[1], probe_scores(probe, test[0][i], "binary")[:, 1]))
    assert max(alone) < 0.85 < 0.95 < fused, (alone, fused)


def test_fusion_inits_are_checked_and_run_under_the_linear_protocol_only():
    config = protocol_config(["finetune", "linear", "knn"])
    config["sources"]["other"] = {"pretrain": {"dataset": "shapes", "training": {"epochs": 2}}}
    config["study"]["inits"] = ["RI", {"DVME": ["natural", "other"]}, {"CONCAT": ["natural", "other"]}]
    config["analysis"]["pairs"] = []
    study = Study(config)
    labels = {spec.label for spec in study.inits}
    assert labels == {"RI", "DVME_natural+other", "CONCAT_natural+other"}
    assert {r.init for r in study.runs} == {"RI"}
    assert {(p, r.init) for p, r in study.probe_runs} == {
        ("linear", "RI"), ("knn", "RI"), ("linear", "DVME_natural+other"), ("linear", "CONCAT_natural+other")}
    dvme = next(r for p, r in study.probe_runs if r.init.startswith("DVME"))
    assert study.features_path(dvme) == ["results/features/lesions/cbr_tiny/WT_natural/shared.h5",
                                         "results/features/lesions/cbr_tiny/WT_other/shared.h5"]
    assert set(study.pretrain_jobs()) == {("natural", "cbr_tiny"), ("other", "cbr_tiny")}
    assert study.probe_spec("linear", dvme)["dvme"]["dim"] == 512
    for bad, message in (({"DVME": ["natural"]}, r"study.inits\[1\].DVME: give a list of two or more"),
                         ({"DVME": ["natural", "nope"]}, r"names source 'nope'"),
                         ("CONCAT", r"CONCAT fuses sources")):
        config["study"]["inits"] = ["RI", bad]
        with pytest.raises(ConfigError, match=message):
            Study(config)
    config["study"]["inits"] = ["RI", {"DVME": ["natural", "other"]}]
    config["study"]["protocols"] = ["finetune", "knn"]
    with pytest.raises(ConfigError, match="add linear to study.protocols"):
        Study(config)


def test_dvme_and_concat_runs_end_to_end_on_cached_features(lesions_cache, tmp_path):
    from medtransfer import paths
    from medtransfer.paths import Run
    from medtransfer.protocols.features import extract_features
    from medtransfer.protocols.probe import probe

    study = lesions_cache
    # two 'sources' made from inits that need no pretraining: fuse RI features of two seeds
    for key in ("s0", "s1"):
        extract_features(study.features_spec("lesions", "cbr_tiny", "RI", key), device="cpu")
    spec = study.probe_spec("linear", Run("lesions", "cbr_tiny", "RI", "1", 0))
    spec["features"] = [paths.features("lesions", "cbr_tiny", "RI", k) for k in ("s0", "s1")]
    for name in ("CONCAT", "DVME"):
        spec.update(init={**spec["init"], "name": name, "label": f"{name}_a+b", "sources": ["a", "b"]},
                    run_dir=str(tmp_path / name), dvme={**study.dvme, "dim": 16, "heads": 2, "epochs": 5})
        metrics = probe(spec)
        assert 0 <= metrics["test"]["auc"] <= 1 and metrics["n_train"] == 200
    assert metrics["linear"]["head"] == "DVME" and len(metrics["feature_dim"]) == 2


def test_augmented_linear_probe_reaches_the_probe_optimum_when_augmentation_is_a_no_op(tmp_path, monkeypatch):
    from medtransfer.data import build_cache
    from medtransfer.protocols.features import extract_features
    from medtransfer.protocols.probe import probe

    monkeypatch.chdir(tmp_path)
    config = protocol_config(["linear"], linear={"augment": True, "augment_epochs": 60, "augment_lr": 0.05,
                                                 "weight_decays": [1e-2]})
    config["train"]["augment"] = {"hflip": False, "crop_padding": 0}  # the views are the images themselves
    study = Study(config)
    build_cache("lesions", study.datasets["lesions"], "results/data/lesions.h5")
    run = next(r for r in study.cells if r.init == "RI" and r.seed == 0)
    spec = study.probe_spec("linear", run)
    assert spec["model"]["init"]["name"] == "RI"
    extract_features(study.features_spec(run.dataset, run.arch, run.init, "s0"), device="cpu")
    metrics = probe(spec)
    assert metrics["linear"]["augment"] is True and 0 <= metrics["test"]["auc"] <= 1
    # with a no-op augmentation it is the cached-feature probe's convex problem, solved by Adam epochs
    # instead of L-BFGS: the two heads must score the validation split alike
    plain = probe({**spec, "linear": {**spec["linear"], "augment": False}, "run_dir": str(tmp_path / "plain")})
    assert plain["linear"]["augment"] is False
    assert abs(metrics["val"]["auc"] - plain["val"]["auc"]) < 0.02


def fusion_finetune_config() -> dict:
    """RI plus DVME and CONCAT of a pretrained source and a weights file of another architecture."""
    config = protocol_config(["finetune", "linear"])
    config["sources"]["other"] = {"file": "weights/other-{arch}.pt"}
    config["architectures"]["resnet18_28"] = {"width": 0.125}
    config["study"]["inits"] = ["RI", {"DVME": ["natural", "other@resnet18_28"], "finetune": True},
                                {"CONCAT": ["natural", "other@resnet18_28"], "finetune": True}]
    config["analysis"]["pairs"] = []
    return config


def test_fine_tuned_fusions_are_planned_only_when_asked_and_not_analysed_block_by_block():
    config = fusion_finetune_config()
    study = Study(config)
    dvme_label = "DVME_natural+other@resnet18_28"
    assert {r.init for r in study.runs} == {"RI", dvme_label, "CONCAT_natural+other@resnet18_28"}
    assert {r.init for r in study.single_backbone_runs()} == {"RI"}
    assert {r.init for group in study.run_groups().values() for r in group} == {"RI"}
    dvme = next(r for r in study.runs if r.init == dvme_label)
    spec = study.run_spec(dvme)
    assert [(m["source"], m["arch"]) for m in spec["members"]] == [("natural", "cbr_tiny"), ("other", "resnet18_28")]
    assert spec["members"][1]["weights"] == {"kind": "file", "path": "weights/other-resnet18_28.pt"}
    assert spec["dvme"]["dim"] == 512 and spec["source"] is None
    # the same fusion under the linear protocol reads each member's features at its architecture
    assert study.features_path(dvme) == ["results/features/lesions/cbr_tiny/WT_natural/shared.h5",
                                         "results/features/lesions/resnet18_28/WT_other/shared.h5"]
    # RI's spec (and so its results) does not move when fine-tuned fusions join the study
    plain = Study(protocol_config(["finetune", "linear"]))
    ri = next(r for r in study.runs if r.init == "RI")
    assert study.run_spec(ri) == plain.run_spec(ri)
    # without finetune: true a fusion stays under the linear protocol
    config["study"]["inits"][1] = {"DVME": ["natural", "other@resnet18_28"]}
    assert "DVME_natural+other@resnet18_28" not in {r.init for r in Study(config).runs}
    config["study"]["protocols"] = ["linear"]
    config["study"]["inits"][1]["finetune"] = True
    with pytest.raises(ConfigError, match="asks for finetune: true, but finetune is not in study.protocols"):
        Study(config)
    config["study"]["protocols"] = ["finetune"]
    config["study"]["inits"] = ["RI", {"DVME": ["natural", "other"], "finetune": "yes"}]
    with pytest.raises(ConfigError, match=r"study.inits\[1\].finetune: true or false"):
        Study(config)
    config["study"]["inits"] = ["RI", {"DVME": ["natural", "other"], "CONCAT": ["natural", "other"]}]
    with pytest.raises(ConfigError, match="names one fusion"):
        Study(config)
    config["study"]["inits"] = ["RI", {"DVME": ["natural", "other@no_such_net"], "finetune": True}]
    with pytest.raises(ConfigError, match=r"DVME_natural\+other@no_such_net"):
        Study(config).check_architectures()


def test_fusion_network_feeds_each_backbone_at_its_size_and_calibrates_like_the_linear_probe():
    import torch.nn.functional as F

    from medtransfer import models
    from medtransfer.data.cache import interpolate
    from medtransfer.models.embedding import pooled_features
    from medtransfer.models.fusion import FusionNetwork, calibrate, fusion_head

    torch.manual_seed(0)
    a, b = models.create("cbr_tiny", 2, width=0.125), models.create("resnet18_28", 2, width=0.125)
    network = FusionNetwork([a, b], [None, 12], fusion_head("CONCAT", [a.num_features, b.num_features], 2),
                            resize=lambda x, size: interpolate(x, size, "bilinear")).eval()
    x = torch.randn(40, 3, 16, 16)
    with torch.no_grad():
        got = network.embeddings(x)
        want_b = pooled_features(b.eval(), F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False,
                                                         antialias=True))
    assert torch.allclose(got[0], pooled_features(a.eval(), x), atol=1e-6)
    assert torch.allclose(got[1], want_b, atol=1e-6)
    calibrate(network, [(x[:16], None), (x[16:], None)], torch.device("cpu"))  # two batches, one statistic
    for i, feats in enumerate(got):
        standardised = network.head.standardise(i, feats).double()
        live = feats.std(0) > 1e-5  # dimensions silent on these images keep std 1 (as the probe does)
        assert torch.allclose(standardised.mean(0), torch.zeros(()).double(), atol=1e-4)
        assert torch.allclose(standardised[:, live].std(0, unbiased=False), torch.ones(()).double(), atol=1e-4)


def test_a_fine_tuned_fusion_starts_from_its_sources_and_trains_end_to_end(tmp_path, monkeypatch):
    import json

    from medtransfer import models
    from medtransfer.analysis.activations import load_state
    from medtransfer.data import build_cache
    from medtransfer.models.weights import load_source_state_dict
    from medtransfer.training.finetune import finetune

    monkeypatch.chdir(tmp_path)
    config = fusion_finetune_config()
    config["study"]["protocols"] = ["finetune"]
    for init in config["study"]["inits"][1:]:
        init[next(iter(init))] = ["other@cbr_tiny", "other@resnet18_28"]  # two weights files: no pretraining
    study = Study(config)
    build_cache("lesions", study.datasets["lesions"], "results/data/lesions.h5")
    Path("weights").mkdir()
    for arch in ("cbr_tiny", "resnet18_28"):
        torch.manual_seed(7)
        torch.save(models.create(arch, 5, width=0.125).state_dict(), f"weights/other-{arch}.pt")
    for name in ("DVME", "CONCAT"):
        run = next(r for r in study.runs if r.init.startswith(name) and r.seed == 0)
        spec = study.run_spec(run)
        if name == "DVME":
            spec["dvme"] = {**spec["dvme"], "dim": 16, "heads": 2}
        metrics = finetune(spec, device="cpu", progress=False)
        assert 0 <= metrics["test"]["auc"] <= 1 and metrics["n_train"] == 200
        saved = torch.load(f"{spec['run_dir']}/init.pt", weights_only=False)
        for i, arch in enumerate(("cbr_tiny", "resnet18_28")):  # WT: every member tensor is its file's
            source = load_source_state_dict({"kind": "file", "path": f"weights/other-{arch}.pt"})
            for key, value in source.items():
                if not key.startswith(("head.", "fc.")) and value.dtype.is_floating_point:
                    assert torch.equal(saved["state_dict"][f"backbones.{i}.{key}"], value), (arch, key)
        final = torch.load(f"{spec['run_dir']}/final.pt", weights_only=False)["state_dict"]
        assert any(not torch.equal(final[k], saved["state_dict"][k]) for k in final if k.startswith("backbones.0."))
        record = json.loads(Path(spec["run_dir"], "init.json").read_text())
        assert [m["arch"] for m in record["members"]] == ["cbr_tiny", "resnet18_28"]
        with pytest.raises(ConfigError, match="fusion of several backbones"):
            load_state(f"{spec['run_dir']}/init.pt")
