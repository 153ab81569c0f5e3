"""The feature-reuse analyses: weight drift against a direct sum over the parameters, re-init of
no block against the run's own metrics, layer-wise k-NN against a plain numpy weighted k-NN, the
first-layer change against numpy, and bad input / bad config ending in one clear message."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medtransfer import models, paths
from medtransfer.errors import ConfigError, DataError
from medtransfer.study import Study

from conftest import tiny_config

# --------------------------------------------------------------------------- two real tiny runs


def reuse_config() -> dict:
    config = tiny_config()
    config["study"].update(inits=["RI", "Gabor"], fractions=[0.5, 1.0], seeds=[0])
    config["analysis"] = {"probe_size": 32, "measures": ["linear_cka"], "pairs": [], "layer_knn": {"k": 20}}
    return config


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A study of 4 fine-tuned runs (RI and Gabor × fractions 0.5 and 1, one epoch), in a work dir."""
    from medtransfer.data import build_cache
    from medtransfer.training.finetune import finetune

    workdir = tmp_path_factory.mktemp("reuse")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        config = reuse_config()
        config["train"]["epochs"] = 1
        study = Study(config)
        build_cache("lesions", study.datasets["lesions"], paths.dataset_cache("lesions"))
        for run in study.runs:
            finetune(study.run_spec(run), device="cpu", progress=False)
        yield study
    finally:
        os.chdir(previous)


@pytest.fixture
def study(study_dir):
    return study_dir


def _run(study: Study, init: str = "RI", fraction: str = "1"):
    return next(r for r in study.single_backbone_runs() if r.init == init and r.fraction == fraction)


# --------------------------------------------------------------------------- weight drift


def _perturbed(model: torch.nn.Module, seed: int = 0) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: (v + torch.randn(v.shape, generator=generator) * 0.1 if v.is_floating_point() else v.clone())
             for k, v in init.items()}
    return init, final


@pytest.mark.parametrize("arch, options", [("cbr_tiny", {"width": 0.125}), ("resnet18_28", {"width": 0.125}),
                                           ("deit_tiny_patch16_224", {"img_size": 32, "depth": 2})])
def test_weight_drift_rows_partition_every_learnable_parameter(arch, options):
    from medtransfer.analysis.weights import weight_drift

    model = models.create(arch, 3, **options)
    init, final = _perturbed(model)
    parameters = dict(model.named_parameters())
    rows = weight_drift(init, final, models.block_keys(model), set(parameters))
    assert [r["block"] for r in rows] == [name for name, _ in models.blocks(model)]
    assert rows[-1]["block"] == "head"
    direct = sum(float(((final[k].double() - init[k].double()) ** 2).sum()) for k in parameters)
    assert sum(r["l2"] ** 2 for r in rows) == pytest.approx(direct, rel=1e-12)
    assert sum(r["n_params"] for r in rows) == sum(p.numel() for p in model.parameters())
    for row in rows:
        assert row["relative"] == pytest.approx(row["l2"] / row["init_l2"], rel=1e-12)


def test_weight_drift_per_block_equals_numpy_over_the_block_prefix():
    from medtransfer.analysis.weights import weight_drift

    model = models.create("cbr_tiny", 2, width=0.125)
    init, final = _perturbed(model, seed=1)
    parameters = dict(model.named_parameters())
    rows = {r["block"]: r for r in weight_drift(init, final, models.block_keys(model), set(parameters))}
    for block in ("block1", "block2", "block3", "block4", "head"):
        names = [k for k in parameters if k.startswith(block + ".")]  # CBR: the module path is the block
        delta = np.concatenate([final[k].numpy().ravel().astype(np.float64) - init[k].numpy().ravel() for k in names])
        start = np.concatenate([init[k].numpy().ravel().astype(np.float64) for k in names])
        assert rows[block]["l2"] == pytest.approx(np.linalg.norm(delta), rel=1e-12)
        assert rows[block]["relative"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(start), rel=1e-12)
        assert rows[block]["n_params"] == delta.size


def test_buffers_are_not_parameters_and_a_zero_init_block_has_no_relative_drift():
    from medtransfer.analysis.weights import weight_drift

    model = models.create("cbr_tiny", 2, width=0.125)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v.clone() for k, v in init.items()}
    final["block1.bn.running_mean"] += 5.0  # a buffer moved, no parameter did
    final["block1.bn.num_batches_tracked"] += 7
    keys = models.block_keys(model)
    parameters = {name for name, _ in model.named_parameters()}
    assert all(r["l2"] == 0.0 for r in weight_drift(init, final, keys, parameters))
    # a block whose parameters are all zero at init (e.g. a zero-initialised bias-only block)
    zero_init = {"w": torch.zeros(3), "b": torch.ones(2)}
    moved = {"w": torch.tensor([3.0, 0.0, 4.0]), "b": torch.ones(2)}
    rows = weight_drift(zero_init, moved, {"zero": ["w"], "head": ["b"]}, {"w", "b"})
    assert rows[0]["l2"] == 5.0 and math.isnan(rows[0]["relative"]) and rows[0]["init_l2"] == 0.0
    assert rows[1]["l2"] == 0.0 and rows[1]["relative"] == 0.0


def test_weight_drift_of_real_runs(study):
    from medtransfer.analysis.weights import weight_drift_table

    spec = study.weight_drift_spec("lesions", "cbr_tiny", "1")
    frame = weight_drift_table(spec)
    assert set(frame["run"]) == {r.id for r in study.reuse_group_runs("lesions", "cbr_tiny", "1")}
    assert (frame["l2"] > 0).all() and frame["relative"].between(0, 10).all()
    run = _run(study)
    init = torch.load(paths.run_file(run, "init.pt"), weights_only=False)["state_dict"]
    final = torch.load(paths.run_file(run, "final.pt"), weights_only=False)["state_dict"]
    learnable = [k for k in init if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    total = sum(float(((final[k].double() - init[k].double()) ** 2).sum()) for k in learnable)
    mine = frame[frame["run"] == run.id]
    assert (mine["l2"] ** 2).sum() == pytest.approx(total, rel=1e-12)
    assert mine["init"].iloc[0] == "RI" and mine["fraction"].iloc[0] == 1.0


# --------------------------------------------------------------------------- re-initialisation


def test_reinit_state_takes_the_block_and_its_batchnorm_statistics_from_init():
    from medtransfer.analysis.reinit import reinit_state, reinit_states

    model = models.create("cbr_tiny", 2, width=0.125)
    init, final = _perturbed(model)
    final["block2.bn.running_var"] = init["block2.bn.running_var"] + 1.0
    keys = models.block_keys(model)
    state = reinit_state(init, final, keys["block2"])
    assert torch.equal(state["block2.bn.running_var"], init["block2.bn.running_var"])
    assert torch.equal(state["block2.conv.weight"], init["block2.conv.weight"])
    assert torch.equal(state["block1.conv.weight"], final["block1.conv.weight"])
    assert torch.equal(state["head.weight"], final["head.weight"])
    states = list(reinit_states(init, final, keys))
    assert [s[0] for s in states] == ["none", *keys, "all"] and [s[1] for s in states] == list(range(-1, len(keys) + 1))


def _init_model_scores(run, study) -> tuple[np.ndarray, np.ndarray]:
    """Test scores of the init model by a plain forward, normalised here (not through the loader)."""
    from medtransfer.analysis.activations import load_state
    from medtransfer.data import read_info, read_split

    images, labels = read_split(paths.dataset_cache("lesions"), "test")
    info = read_info(paths.dataset_cache("lesions"))
    x = (torch.from_numpy(images).float() / 255.0 - info.mean[0]) / info.std[0]
    x = x.expand(-1, 3, -1, -1)
    model = load_state(paths.run_file(run, "init.pt")).eval()
    with torch.no_grad():
        scores = torch.softmax(model(x), 1).numpy()
    return scores, labels


def test_reinit_of_no_block_is_the_run_and_of_all_blocks_the_init_model(study):
    from medtransfer.analysis.reinit import run_reinit

    run = _run(study)
    frame = run_reinit(study.reinit_spec(run), torch.device("cpu"))
    recorded = json.loads(Path(paths.run_file(run, "metrics.json")).read_text())["test"]
    none = frame[frame["block"] == "none"].set_index("metric")["value"]
    assert set(none.index) == set(recorded) == {"auc", "acc", "balanced_acc"}
    for metric, value in recorded.items():
        assert none[metric] == pytest.approx(value, abs=1e-9)
    scores, labels = _init_model_scores(run, study)
    every = frame[frame["block"] == "all"].set_index("metric")["value"]
    assert every["auc"] == pytest.approx(roc_auc_score(labels, scores[:, 1]), abs=1e-6)
    assert every["acc"] == pytest.approx(float((scores.argmax(1) == labels).mean()), abs=1e-9)
    blocks = [name for name, _ in models.blocks(models.create("cbr_tiny", 2, width=0.125))]
    assert list(frame["block"].unique()) == ["none", *blocks, "all"]
    drop = frame.set_index(["block", "metric"])
    for (block, metric), row in drop.iterrows():
        assert row["drop"] == pytest.approx(none[metric] - row["value"], abs=1e-12)


def test_reinit_of_a_block_that_did_not_move_costs_nothing(study, tmp_path):
    from medtransfer.analysis.reinit import run_reinit

    run = _run(study)
    copied = tmp_path / "run"
    shutil.copytree(paths.run_dir(run), copied)
    init = torch.load(copied / "init.pt", weights_only=False)
    final = torch.load(copied / "final.pt", weights_only=False)
    for key in final["state_dict"]:
        if key.startswith("block3."):
            final["state_dict"][key] = init["state_dict"][key].clone()
    torch.save(final, copied / "final.pt")
    spec = {**study.reinit_spec(run), "run_dir": str(copied)}
    frame = run_reinit(spec, torch.device("cpu")).set_index(["block", "metric"])
    for metric in ("auc", "acc"):
        assert frame.loc[("block3", metric), "value"] == frame.loc[("none", metric), "value"]


def test_a_group_job_gives_the_rows_of_its_runs(study):
    from medtransfer.analysis.layer_knn import layer_knn_table, run_layer_knn
    from medtransfer.analysis.reinit import reinit_table, run_reinit

    cpu = torch.device("cpu")
    for name, table, one in (("reinit", reinit_table, run_reinit), ("layer_knn", layer_knn_table, run_layer_knn)):
        spec = study.reuse_group_spec(name, "lesions", "cbr_tiny", "1")
        assert spec["out"] == paths.group_analysis(name, "lesions", "cbr_tiny", "1") and len(spec["runs"]) == 2
        runs = study.reuse_group_runs("lesions", "cbr_tiny", "1")
        single = {"reinit": study.reinit_spec, "layer_knn": study.layer_knn_spec}[name]
        expected = pd.concat([one(single(run), cpu) for run in runs], ignore_index=True)
        pd.testing.assert_frame_equal(table(spec, cpu), expected)


# --------------------------------------------------------------------------- layer-wise k-NN


def numpy_weighted_knn(memory, memory_labels, queries, k, temperature, num_classes):
    """Wu et al. 2018 / DINO in plain numpy: cosine similarity, k nearest, votes exp(sim / T)."""
    memory = memory / np.linalg.norm(memory, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = np.zeros((len(queries), num_classes))
    for i, q in enumerate(queries):
        similarity = memory @ q
        nearest = np.argsort(-similarity, kind="stable")[:k]
        for j in nearest:
            scores[i, memory_labels[j]] += np.exp(similarity[j] / temperature)
    return scores / scores.sum(1, keepdims=True)


def _pooled_by_hook(model, module_name, x):
    captured = {}
    module = dict(model.named_modules())[module_name]
    handle = module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    out = captured["x"]
    return (out.mean(dim=(2, 3)) if out.ndim == 4 else out).numpy().astype(np.float64)


def _normalised(split: str, rows=None) -> tuple[torch.Tensor, np.ndarray]:
    from medtransfer.data import read_info, read_split

    images, labels = read_split(paths.dataset_cache("lesions"), split)
    if rows is not None:
        images, labels = images[rows], labels[rows]
    info = read_info(paths.dataset_cache("lesions"))
    x = ((torch.from_numpy(images).float() / 255.0 - info.mean[0]) / info.std[0]).expand(-1, 3, -1, -1)
    return x, labels


def test_layer_knn_equals_a_numpy_weighted_knn_on_pooled_block_features(study):
    from medtransfer.analysis.activations import load_state
    from medtransfer.analysis.layer_knn import run_layer_knn
    from medtransfer.data import read_labels, subset_indices

    run = _run(study, fraction="0.5")
    spec = study.layer_knn_spec(run)
    assert spec["k"] == 20 and spec["temperature"] == 0.07  # analysis.layer_knn.k, the knn default T
    frame = run_layer_knn(spec, torch.device("cpu"))
    rows = subset_indices(read_labels(paths.dataset_cache("lesions"), "train"), 0.5, 0, num_classes=2,
                          dataset="lesions")
    memory_x, memory_y = _normalised("train", rows)
    query_x, query_y = _normalised("test")
    assert (frame["n_memory"] == len(rows)).all() and len(rows) < 200 and (frame["n_query"] == 100).all()
    for state in ("init", "final"):
        model = load_state(paths.run_file(run, f"{state}.pt"))
        # not the head at init: its 2 near-random logits point almost the same way for every
        # image, so float32 and float64 similarities order the (near-tied) neighbours differently
        for block in ("block1", "block3", "block4") + (("head",) if state == "final" else ()):
            memory = _pooled_by_hook(model, block, memory_x)
            queries = _pooled_by_hook(model, block, query_x)
            scores = numpy_weighted_knn(memory, memory_y, queries, 20, 0.07, 2)
            mine = frame[(frame["state"] == state) & (frame["block"] == block)].set_index("metric")["value"]
            assert mine["auc"] == pytest.approx(roc_auc_score(query_y, scores[:, 1]), abs=1e-6)
            assert mine["acc"] == pytest.approx(float((scores.argmax(1) == query_y).mean()), abs=1e-9)
            assert frame.loc[(frame["state"] == state) & (frame["block"] == block), "n_features"].iloc[0] == \
                memory.shape[1]


def test_layer_knn_in_block_groups_under_a_memory_bound_gives_the_same_numbers(study, monkeypatch):
    from medtransfer.analysis import layer_knn

    assert layer_knn.plan_block_groups({"a": 10, "b": 10, "c": 30, "d": 5}, 100, 4 * 100 * 25) == \
        [["a", "b"], ["c"], ["d"]]
    assert layer_knn.plan_block_groups({"a": 10, "b": 10}, 100, 1 << 30) == [["a", "b"]]
    run = _run(study, fraction="0.5")
    spec = study.layer_knn_spec(run)
    whole = layer_knn.run_layer_knn(spec, torch.device("cpu"))
    passes = []
    monkeypatch.setattr(layer_knn, "plan_block_groups",
                        lambda widths, n, max_bytes: passes.append(1) or [[name] for name in widths])
    one_by_one = layer_knn.run_layer_knn(spec, torch.device("cpu"))
    assert len(passes) == 2  # once per state
    pd.testing.assert_frame_equal(whole, one_by_one)


def test_a_k_larger_than_the_training_subset_names_the_key(study):
    from medtransfer.analysis.layer_knn import run_layer_knn

    run = _run(study, fraction="0.5")
    spec = {**study.layer_knn_spec(run), "k": 500, "states": ["final"]}
    with pytest.raises(ConfigError, match=r"analysis.layer_knn.k: k = 500 is larger than the training subset"):
        run_layer_knn(spec, torch.device("cpu"))
    frame = run_layer_knn({**spec, "cap_k": True}, torch.device("cpu"))
    assert (frame["knn_k"] == frame["n_memory"]).all()


# --------------------------------------------------------------------------- first-layer filters


@pytest.mark.parametrize("arch, options, expected", [
    ("cbr_tiny", {"width": 0.125}, "block1.conv"), ("resnet18_28", {"width": 0.125}, "conv1"),
    ("deit_tiny_patch16_224", {"img_size": 32, "depth": 1}, "patch_embed.proj"),
])
def test_first_conv_is_the_first_convolution(arch, options, expected):
    from medtransfer.analysis.filters import first_conv

    assert first_conv(models.create(arch, 2, **options)) == expected


def test_filters_change_equals_numpy_and_kernels_round_trip(study):
    from medtransfer.analysis.filters import filter_kernels_table, filters_table

    frame = filters_table(study.filters_spec("lesions", "cbr_tiny", "1")).set_index("run")
    for run in study.reuse_group_runs("lesions", "cbr_tiny", "1"):
        init = torch.load(paths.run_file(run, "init.pt"), weights_only=False)["state_dict"]["block1.conv.weight"]
        final = torch.load(paths.run_file(run, "final.pt"), weights_only=False)["state_dict"]["block1.conv.weight"]
        change = np.abs(final.numpy().astype(np.float64) - init.numpy()).mean()
        row = frame.loc[run.id]
        assert row["layer"] == "block1.conv" and row["n_weights"] == init.numel()
        assert row["mean_abs_change"] == pytest.approx(change, rel=1e-12)
        assert row["relative_change"] == pytest.approx(change / np.abs(init.numpy()).mean(), rel=1e-6)
    spec = {**study.filter_kernels_spec(), "max_filters": 3}
    kernels = filter_kernels_table(spec)
    assert set(kernels["init"]) == {"RI", "Gabor"} and set(kernels["state"]) == {"init", "final"}
    run = _run(study, init="Gabor")
    weight = torch.load(paths.run_file(run, "final.pt"), weights_only=False)["state_dict"]["block1.conv.weight"]
    mine = kernels[(kernels["init"] == "Gabor") & (kernels["state"] == "final")]
    assert len(mine) == 3 * weight[0].numel()
    rebuilt = np.zeros((3,) + tuple(weight.shape[1:]), np.float32)
    rebuilt[mine["filter"], mine["channel"], mine["row"], mine["col"]] = mine["value"]
    np.testing.assert_array_equal(rebuilt, weight[:3].numpy())


# --------------------------------------------------------------------------- bad input


def test_a_run_lacking_a_file_names_the_run_and_the_file(study, tmp_path, capsys):
    from medtransfer.analysis.reinit import run_reinit
    from medtransfer.cli import main

    run = _run(study)
    copied = tmp_path / "run"
    shutil.copytree(paths.run_dir(run), copied)
    (copied / "final.pt").unlink()
    spec = {**study.reinit_spec(run), "run_dir": str(copied), "out": str(tmp_path / "out.csv")}
    with pytest.raises(DataError, match=rf"run {run.id}: .*final.pt is missing.*Fine-tune the run first"):
        run_reinit(spec, torch.device("cpu"))
    out = {"out": str(tmp_path / "out.csv")}
    group = {"runs": [{"run": run.id, "run_dir": str(copied), "columns": study.run_columns(run)}], **out}
    jobs = {"weight-drift": group, "filters": group, "filter-kernels": {**group, "max_filters": 4},
            "reinit": spec, "layer-knn": {**study.layer_knn_spec(run), "run_dir": str(copied), **out}}
    for command, job in jobs.items():
        assert main([command, "--spec", json.dumps(job)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"run {run.id}" in error and "Traceback" not in error
    assert not (tmp_path / "out.csv").exists()
    (copied / "init.pt").write_bytes(b"not a checkpoint")
    shutil.copy(Path(paths.run_dir(run)) / "final.pt", copied / "final.pt")
    with pytest.raises(DataError, match=r"init.pt cannot be read"):
        run_reinit(spec, torch.device("cpu"))


# --------------------------------------------------------------------------- the grid


def test_every_analysis_is_on_by_default_and_each_can_be_turned_off():
    study = Study(reuse_config())
    assert study.reuse_figure_names() == ["weight_drift", "reinit", "layer_knn", "filters"]
    assert set(study.reuse_figure_names()) <= set(study.figure_names())
    assert study.reuse_tables() == ["weight_drift", "reinit", "layer_knn", "filters", "filter_kernels"]
    for name in ("weight_drift", "reinit", "layer_knn", "filters"):
        config = reuse_config()
        config["analysis"][name] = False
        off = Study(config)
        assert name not in off.figure_names() and name not in off.reuse_tables()
        assert len(off.reuse_figure_names()) == 3
        assert off.reuse_parts(name) == []  # the collect rule's input, read when the Snakefile loads
    config = reuse_config()
    config["analysis"]["reinit"] = True
    assert Study(config).reuse["reinit"] == {"split": "test", "job": "run"}


def test_parts_are_per_run_or_per_group_as_the_job_option_says():
    study = Study(reuse_config())
    assert study.reuse_parts("reinit") == [paths.run_analysis("reinit", run) for run in study.single_backbone_runs()]
    assert study.reuse_parts("weight_drift") == [paths.group_analysis("weight_drift", *g) for g in study.reuse_groups("weight_drift")]
    config = reuse_config()
    config["analysis"]["layer_knn"] = {"job": "group"}
    grouped = Study(config)
    assert grouped.reuse_parts("layer_knn") == [paths.group_analysis("layer_knn", *g) for g in grouped.reuse_groups("layer_knn")]
    assert len(grouped.reuse_parts("layer_knn")) == 2 and len(grouped.reuse_parts("reinit")) == 4


def test_layer_knn_takes_the_k_nn_protocols_settings_unless_given():
    config = reuse_config()
    del config["analysis"]["layer_knn"]
    config["knn"] = {"k": 7, "temperature": 0.5}
    options = Study(config).reuse["layer_knn"]
    assert (options["k"], options["temperature"], options["cap_k"]) == (7, 0.5, False)
    assert Study(reuse_config()).reuse["layer_knn"]["k"] == 20


def test_the_filters_cell_defaults_to_the_first_target_and_largest_fraction():
    study = Study(reuse_config())
    cell = study.reuse["filters"]
    assert (cell["dataset"], cell["arch"], cell["fraction"], cell["seed"]) == ("lesions", "cbr_tiny", "1", 0)
    assert {r.init for r in study.filters_cell_runs()} == {"RI", "Gabor"}
    assert {r.fraction for r in study.filters_cell_runs()} == {"1"}
    config = reuse_config()
    config["analysis"]["filters"] = {"fraction": 0.5}
    assert {r.fraction for r in Study(config).filters_cell_runs()} == {"0.5"}


@pytest.mark.parametrize("analysis, message", [
    ({"filters": {"dataset": "shapes"}}, "analysis.filters.dataset: 'shapes' is not in the study's fine-tuning "
                                         "runs; allowed: lesions"),
    ({"filters": {"fraction": 0.3}}, "analysis.filters.fraction: 0.3 .* allowed: 0.5, 1"),
    ({"filters": {"seed": 4}}, "analysis.filters.seed: 4 .* allowed: 0"),
    ({"layer_knn": {"states": ["before"]}}, "analysis.layer_knn.states: \\['before'\\]; give a list of different "
                                            "states from init, final"),
    ({"layer_knn": {"k": 0}}, "analysis.layer_knn.k: 0; give an integer >= 1"),
    ({"reinit": {"split": "train"}}, "analysis.reinit.split: 'train'; allowed: test, val"),
    ({"layer_knn": {"job": "study"}}, "analysis.layer_knn.job: 'study'; allowed: run, group"),
    ({"reinit": {"blocks": 2}}, "analysis.reinit: unknown option\\(s\\) blocks; allowed: split, job"),
    ({"weight_drift": "yes"}, "analysis.weight_drift: give false \\(off\\), true"),
])
def test_bad_analysis_options_name_the_key_and_the_allowed_values(analysis, message):
    config = reuse_config()
    config["analysis"].update(analysis)
    with pytest.raises(ConfigError, match=message):
        Study(config)


def test_fusion_runs_are_left_out():
    config = reuse_config()
    config["sources"] = {"natural": {"pretrain": {"dataset": "shapes"}},
                         "other": {"pretrain": {"dataset": "shapes"}}}
    config["study"]["inits"] = ["RI", {"WT": "natural"}, {"DVME": ["natural", "other"]}]
    config["study"]["protocols"] = ["finetune", "linear"]
    study = Study(config)
    fused = next(spec.label for spec in study.inits if spec.fusion)
    # today fusions are linear-only; the lead adds fine-tuned ones: they must stay out regardless
    study.runs = study.runs + [paths.Run("lesions", "cbr_tiny", fused, "1", 0)]
    assert fused not in {run.init for run in study.single_backbone_runs()}
    assert all(fused not in entry["run"] for group in study.reuse_groups("weight_drift")
               for entry in study.weight_drift_spec(*group)["runs"])


def test_a_study_without_fine_tuning_runs_has_no_reuse_analysis():
    config = reuse_config()
    config["study"]["protocols"] = ["knn"]
    study = Study(config)
    assert study.reuse_tables() == [] and study.reuse_figure_names() == []
