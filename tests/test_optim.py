"""The training-protocol keys of the optimisation loop (issue 26): a plateau schedule, warm-up in
optimizer steps, early stopping, gradient clipping, selection on any validation metric, and the
lpft protocol's frozen-backbone phase; each against an independent computation (PyTorch's own
ReduceLROnPlateau, closed forms, scikit-learn) and through checkpoint and resume."""

from __future__ import annotations

import copy
import json
import math
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score

from medtransfer.errors import ConfigError
from medtransfer.study import DEFAULT_TRAINING, Study, deep_merge
from medtransfer.training.loop import Preempted, train_epochs
from medtransfer.training.precision import Precision
from medtransfer.training.schedules import EarlyStopping, warmup_factor
from medtransfer.training.trainer import fit

from conftest import run_snakemake, tiny_config

FLOAT32 = Precision(autocast_dtype=None, channels_last=False)


class Batches:
    """``steps`` batches per epoch; the objective below ignores their content."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)


class Scripted:
    """loss = <g, w>: every step's gradient is ``g``, so plain SGD (momentum 0) moves w by
    exactly -lr(step) × g (clipped: -lr × g × max_norm / ||g||), and each epoch's validation
    value is read from a script, as if a model had produced it."""

    def __init__(self, g: list[float], values: list[float] | None = None, monitor: str = "val_auc",
                 kill_at: int | None = None) -> None:
        self.module = torch.nn.Linear(len(g), 1, bias=False)
        with torch.no_grad():
            self.module.weight.zero_()
        self.g, self.values, self.monitor, self.kill_at = torch.tensor(g), values, monitor, kill_at
        self.weights: list[torch.Tensor] = []

    def parameters(self):
        return self.module.parameters()

    def loss(self, x, y, step):  # noqa: ARG002
        return (self.module.weight[0] * self.g).sum()

    def before_step(self, step):
        pass

    def after_step(self, step):
        self.weights.append(self.module.weight[0].detach().clone())
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def end_epoch(self, epoch, row):
        if self.values is not None:
            row[self.monitor] = self.values[epoch]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def settings(**overrides) -> dict:
    return deep_merge(DEFAULT_TRAINING, {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
                                         "schedule": {"name": "constant"}, **overrides})


def run(objective, training, path, steps=2, precision=FLOAT32):
    return train_epochs(objective, Batches(steps), training=training, device=torch.device("cpu"),
                        checkpoint_path=path, spec_hash="h", precision=precision, progress=False)


def step_lrs(objective: Scripted) -> np.ndarray:
    """The lr of every step, read back from the moves of w (g = [1])."""
    w = torch.stack([torch.zeros(1)] + objective.weights)[:, 0].double().numpy()
    return -np.diff(w)


def torch_plateau_lrs(values, lr, **options) -> list[float]:
    """The lr of every epoch under torch's ReduceLROnPlateau on a real optimizer, stepped after
    each epoch with that epoch's value (the reference)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **options)
    lrs = []
    for value in values:
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(value)
    return lrs


VALUES = [0.60, 0.70, 0.70, 0.69, 0.71, 0.70, 0.70, 0.70, 0.72, 0.70, 0.70, 0.70]


@pytest.mark.parametrize("monitor, mode", [("val_auc", "max"), ("val_loss", "min")])
def test_plateau_lr_trace_is_torchs_reduce_lr_on_plateau_times_the_warmup(tmp_path, monitor, mode):
    values = VALUES if mode == "max" else [1 - v for v in VALUES]
    options = {"factor": 0.5, "patience": 1, "threshold": 0.01, "cooldown": 1, "min_lr": 0.02}
    training = settings(epochs=len(values), warmup_steps=3,
                        schedule={"name": "plateau", "monitor": monitor, **options})
    objective = Scripted([1.0], values, monitor)
    history, _ = run(objective, training, tmp_path / "c.pt")
    reference = torch_plateau_lrs(values, 0.1, mode=mode, threshold_mode="rel", **options)
    assert min(reference) == pytest.approx(0.02) and len(set(reference)) >= 3  # the script exercises it
    expected = [reference[s // 2] * min(1.0, (s + 1) / 3) for s in range(2 * len(values))]
    np.testing.assert_allclose(step_lrs(objective), expected, rtol=1e-5)  # float32 weights
    np.testing.assert_allclose([row["lr"] for row in history], [reference[0] / 3] + reference[1:], rtol=1e-12)


def test_warmup_is_linear_in_steps_and_multiplies_the_epoch_schedule(tmp_path):
    training = settings(epochs=4, warmup_steps=5, schedule={"name": "multistep", "milestones": [1, 3], "gamma": 0.1})
    objective = Scripted([1.0])
    run(objective, training, tmp_path / "c.pt", steps=3)
    gamma = [1.0, 0.1, 0.1, 0.01]
    expected = [0.1 * gamma[s // 3] * min(1.0, (s + 1) / 5) for s in range(12)]
    np.testing.assert_allclose(step_lrs(objective), expected, rtol=1e-5)
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


@pytest.mark.parametrize("precision", [FLOAT32, Precision(autocast_dtype=torch.float16, channels_last=False)],
                         ids=["float32", "fp16-scaler"])
def test_grad_clip_scales_the_gradient_to_the_max_global_norm(tmp_path, precision):
    g = [3.0, 4.0]  # ||g|| = 5
    for max_norm, expected_norm in ((1.0, 1.0), (10.0, 5.0)):
        objective = Scripted(g)
        run(objective, settings(epochs=1, optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0},
                                grad_clip=max_norm), tmp_path / f"{max_norm}-{precision.autocast_dtype}.pt",
            steps=1, precision=precision)
        move = -objective.weights[0].double()
        # clip_grad_norm_ scales by max_norm / (||g|| + 1e-6): the direction of g, the norm max_norm
        assert float(move.norm()) == pytest.approx(expected_norm, rel=1e-5)
        np.testing.assert_allclose(move.numpy(), np.array(g) / 5.0 * expected_norm, rtol=1e-5)


def test_early_stopping_ends_after_patience_epochs_without_improvement(tmp_path):
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.5, 0.4]  # best 0.9 at epoch 2, then 3 epochs worse
    training = settings(epochs=len(losses), early_stopping={"monitor": "val_loss", "patience": 3})
    objective = Scripted([1.0], losses, "val_loss")
    history, _ = run(objective, training, tmp_path / "c.pt")
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    # a rerun on the stopped run's checkpoint trains nothing more and returns the same history
    again = Scripted([1.0], losses, "val_loss")
    rerun, _ = run(again, training, tmp_path / "c.pt")
    assert again.weights == [] and [r["epoch"] for r in rerun] == [1, 2, 3, 4, 5]
    # min_delta (Keras): an improvement must exceed it; max mode for metrics
    stopper = EarlyStopping({"monitor": "val_acc", "patience": 2, "min_delta": 0.05})
    # 0.54 is not 0.05 above 0.5; 0.6 is (the wait starts over); 0.62 and 0.61 are not above 0.6
    assert [stopper.step(e + 1, v) for e, v in enumerate([0.5, 0.54, 0.6, 0.62, 0.61])] == \
        [False, False, False, False, True]
    assert stopper.stopped_epoch == 5
    nan = EarlyStopping({"monitor": "val_auc", "patience": 1})
    assert nan.step(1, 0.5) is False and nan.step(2, math.nan) is True  # NaN never improves


def test_plateau_warmup_and_early_stopping_resume_exactly_after_sigterm(tmp_path):
    training = settings(epochs=len(VALUES), warmup_steps=3, grad_clip=0.05,
                        schedule={"name": "plateau", "monitor": "val_auc", "factor": 0.5, "patience": 1},
                        early_stopping={"monitor": "val_auc", "patience": 3})
    reference = Scripted([1.0], VALUES)
    expected, _ = run(reference, training, tmp_path / "a.pt")
    assert len(expected) < len(VALUES)  # it stopped early
    killed = Scripted([1.0], VALUES, kill_at=7)  # in epoch 4, after a plateau drop
    with pytest.raises(Preempted):
        run(killed, training, tmp_path / "b.pt")
    resumed = Scripted([1.0], VALUES)
    history, _ = run(resumed, training, tmp_path / "b.pt")
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(history) == strip(expected)
    assert torch.equal(resumed.module.weight, reference.module.weight)
    assert torch.equal(torch.stack(killed.weights[:8] + resumed.weights), torch.stack(reference.weights))


# ---- selection on any validation metric -----------------------------------------------------


def ordinal_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 3, 4, 4, generator=generator)
    score = x[:, 0].mean((1, 2)) * 3
    y = torch.bucketize(score, torch.tensor([-0.5, 0.5]))
    return x, y


class Loader:
    def __init__(self, x, y, batch_size, shuffle=True):
        self.x, self.y, self.batch_size, self.shuffle, self.epoch = x, y, batch_size, shuffle, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = (torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.epoch)) if self.shuffle
                 else torch.arange(len(self.x)))
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[index], self.y[index]


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize("select_on, metric", [
    ("val_kappa", lambda y, p: cohen_kappa_score(y, p, weights="quadratic", labels=[0, 1, 2])),
    ("val_balanced_acc", balanced_accuracy_score),
])
def test_selection_on_kappa_and_balanced_accuracy_matches_scikit_learn(tmp_path, select_on, metric):
    x, y = ordinal_problem()
    val_x, val_y = ordinal_problem(1)
    model = small_model()
    training = deep_merge(DEFAULT_TRAINING, {"epochs": 4, "batch_size": 16, "select_on": select_on,
                                             "optimizer": {"lr": 3e-3}})
    result = fit(model, Loader(x, y, 16), Loader(val_x, val_y, 64, shuffle=False), task="ordinal",
                 training=training, device=torch.device("cpu"), checkpoint_path=tmp_path / "c.pt", spec_hash="s",
                 progress=False)
    values = [row[select_on] for row in result.history]
    assert result.best_epoch == int(np.argmax(values)) + 1
    assert {"val_loss", "val_auc", "val_acc", select_on} <= set(result.history[0])
    model.load_state_dict(result.best_state)
    model.eval()
    with torch.no_grad():
        predicted = model(val_x).argmax(1).numpy()
    assert values[result.best_epoch - 1] == pytest.approx(metric(val_y.numpy(), predicted), abs=1e-12)


def test_a_metric_the_task_does_not_report_is_an_error_before_training(tmp_path):
    x, y = ordinal_problem()
    binary = (y > 0).long()
    training = deep_merge(DEFAULT_TRAINING, {"epochs": 1, "select_on": "val_kappa"})
    with pytest.raises(ConfigError, match=r"train\.select_on: val_kappa is not a metric of this binary task; "
                                          r"allowed: val_loss, val_auc, val_acc, val_balanced_acc"):
        fit(small_model(), Loader(x, binary, 16), Loader(x, binary, 64), task="binary", training=training,
            device=torch.device("cpu"), checkpoint_path=tmp_path / "c.pt", spec_hash="s", progress=False)
    assert not (tmp_path / "c.pt").exists()


# ---- the planner --------------------------------------------------------------------------------


def study_with(**sections) -> Study:
    config = tiny_config()
    for key, value in sections.items():
        if key == "protocols":
            config["study"]["protocols"] = value
        else:
            config[key] = deep_merge(config.get(key) or {}, value)
    return Study(config)


def test_the_keys_reach_the_specs_only_when_set():
    plain = study_with()
    spec = plain.run_spec(plain.runs[0])["training"]
    assert not {"warmup_steps", "early_stopping", "grad_clip"} & set(spec)
    assert spec["schedule"]["name"] == "multistep" and plain.lpft_runs == []
    keys = {"schedule": {"name": "plateau", "monitor": "val_auc", "factor": 0.1, "patience": 3},
            "warmup_steps": 100, "early_stopping": {"monitor": "val_loss", "patience": 10}, "grad_clip": 1.0,
            "select_on": "val_balanced_acc"}
    study = study_with(train=keys, pretrain={"schedule": {"name": "cosine"}, "early_stopping": None},
                       protocols=["finetune", "lpft"],
                       lpft={"epochs": 3, "optimizer": {"name": "adam", "lr": 1e-3},
                             "early_stopping": {"monitor": "val_acc", "patience": 10}})
    training = study.run_spec(study.runs[0])["training"]
    # a plateau schedule replaces the multistep default whole (no stray milestones)
    assert training["schedule"] == keys["schedule"] and {k: training[k] for k in keys} == keys
    assert study.pretrain_spec(*study.pretrain_jobs()[0])["training"]["schedule"] == {"name": "cosine"}
    assert len(study.lpft_runs) == len(study.runs)
    lpft = study.lpft_spec(study.lpft_runs[0])
    assert lpft["protocol"] == "lpft" and lpft["run_dir"].startswith("results/protocols/lpft/")
    assert lpft["lpft"]["epochs"] == 3 and lpft["lpft"]["select_on"] == "last"  # LPFT_DEFAULTS
    assert lpft["lpft"]["early_stopping"] == {"monitor": "val_acc", "patience": 10}
    assert lpft["lpft"]["schedule"] == keys["schedule"] and lpft["training"] == training
    assert study.run_spec(study.runs[0])["run_dir"].startswith("results/runs/")  # fine-tuning paths unchanged
    assert "protocols" in study.figure_names()


@pytest.mark.parametrize("sections, message", [
    ({"train": {"select_on": "val_dice"}}, r"train\.select_on: 'val_dice'.*segmentation\.select_on"),
    ({"train": {"schedule": {"name": "plateau", "monitor": "val_dice", "patience": 1}},
      "pretrain": {"schedule": {"name": "constant"}}},
     r"train\.schedule\.monitor: 'val_dice' is not a metric of the study's classification targets"),
    ({"train": {"schedule": {"name": "plateau", "monitor": "val_dice", "patience": 1}}},
     r"sources\.natural\.pretrain\.training\.schedule\.monitor: 'val_dice' is not a metric of supervised"),
    ({"train": {"schedule": {"name": "plateau", "monitor": "auc"}}}, r"train\.schedule\.monitor: 'auc'"),
    ({"train": {"schedule": {"name": "cosine", "patience": 3}}}, r"train\.schedule: patience are options of the "
                                                                 r"plateau schedule"),
    ({"train": {"early_stopping": {"monitor": "val_f1", "patience": 3}}}, r"train\.early_stopping\.monitor: 'val_f1'"),
    ({"lpft": {"early_stopping": {"monitor": "val_iou", "patience": 2}}, "protocols": ["lpft"]},
     r"lpft\.early_stopping\.monitor: 'val_iou'"),
])
def test_plan_time_errors_name_the_key_and_the_allowed_values(sections, message):
    with pytest.raises(ConfigError, match=message):
        study_with(**sections)


def test_ssl_pretraining_cannot_monitor_a_validation_metric():
    config = tiny_config()
    config["sources"]["natural"]["pretrain"]["method"] = "simclr"
    config["train"]["early_stopping"] = {"monitor": "val_loss", "patience": 3}
    with pytest.raises(ConfigError, match=r"sources\.natural\.pretrain\.training\.early_stopping\.monitor: "
                                          r"'val_loss', but simclr pretraining has no validation metric"):
        Study(config)
    config["pretrain"]["early_stopping"] = None
    Study(copy.deepcopy(config))  # off for pretraining, on for fine-tuning


# ---- lpft: the head on the frozen backbone --------------------------------------------------------


def test_the_lpft_first_phase_trains_the_head_alone_and_keeps_batchnorm_statistics(tmp_path):
    from medtransfer import models
    from medtransfer.protocols.lpft import HeadOnlyObjective, head_of

    torch.manual_seed(0)
    model = models.create("cbr_tiny", 3, in_chans=3, width=0.25)
    x, y = ordinal_problem()
    x = torch.nn.functional.interpolate(x, size=16)
    before = copy.deepcopy(model.state_dict())
    head = {f"{name}.{key}" for name, module in model.named_modules() if module is head_of(model)
            for key in module.state_dict()}
    training = deep_merge(DEFAULT_TRAINING, {"epochs": 2, "select_on": "last", "channels_last": False})
    result = fit(model, Loader(x, y, 16), Loader(x, y, 64, shuffle=False), task="ordinal", training=training,
                 device=torch.device("cpu"), checkpoint_path=tmp_path / "lp.pt", spec_hash="s", progress=False,
                 objective_class=HeadOnlyObjective)
    after = model.state_dict()
    assert head and all(not torch.equal(before[k], after[k]) for k in head)
    frozen = [k for k in before if k not in head]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics are among them
    assert all(torch.equal(before[k], after[k]) for k in frozen), "the backbone moved"
    assert sum(p.requires_grad for p in model.parameters()) == len(head)
    result.objective.unfreeze()
    assert all(p.requires_grad for p in model.parameters())


def lpft_study_config() -> dict:
    config = tiny_config()
    config["datasets"]["lesions"].update(n_train=96, n_val=48, n_test=48)
    config["study"].update(inits=["RI"], seeds=[0], protocols=["lpft"])
    config["architectures"]["cbr_tiny"]["drop_rate"] = 0.3  # the RNG state matters on resume
    config["train"].update(epochs=3, checkpoint_minutes=1e-6, early_stopping={"monitor": "val_loss", "patience": 5},
                           grad_clip=1.0, warmup_steps=4)
    config["lpft"] = {"epochs": 2, "optimizer": {"name": "adam", "lr": 1e-2}}
    config["analysis"]["pairs"] = []
    return config


def test_an_lpft_run_preempted_in_its_second_phase_resumes_to_identical_results(tmp_path, monkeypatch):
    from medtransfer.data import build_cache_resumable
    from medtransfer.training import finetune as finetune_module

    study = Study(lpft_study_config())
    (run,) = study.lpft_runs
    spec = study.lpft_spec(run)
    monkeypatch.chdir(tmp_path)
    build_cache_resumable(run.dataset, study.datasets[run.dataset], spec["cache"], progress=False)

    def in_dir(name: str) -> dict:
        return {**spec, "run_dir": f"{name}/{spec['run_dir']}"}

    reference = finetune_module.finetune(in_dir("a"), device="cpu", progress=False)
    real_fit = finetune_module.fit

    class KillingLoader:
        """The train loader of the second phase, which sends SIGTERM in its second epoch."""

        def __init__(self, loader):
            self.loader = loader

        def set_epoch(self, epoch):
            self.epoch = epoch
            self.loader.set_epoch(epoch)

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for batch, item in enumerate(self.loader):
                if (self.epoch, batch) == (1, 1):
                    os.kill(os.getpid(), signal.SIGTERM)
                yield item

    def preempting_fit(model, train_loader, *args, **kwargs):
        if kwargs.get("config_key", "train") == "train":  # the second phase
            train_loader = KillingLoader(train_loader)
        return real_fit(model, train_loader, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "fit", preempting_fit)
    with pytest.raises(Preempted):
        finetune_module.finetune(in_dir("b"), device="cpu", progress=False)
    run_dir = tmp_path / in_dir("b")["run_dir"]
    assert (run_dir / "checkpoint_lp.pt").exists() and (run_dir / "checkpoint.pt").exists()
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(finetune_module, "fit", real_fit)
    resumed = finetune_module.finetune(in_dir("b"), device="cpu", progress=False)
    for key in ("test", "val", "best_epoch", "epochs", "lpft"):
        if key == "lpft":
            strip = lambda record: {k: v for k, v in record.items() if k != "train_seconds"}  # noqa: E731
            assert strip(resumed[key]) == strip(reference[key])
        else:
            assert resumed[key] == reference[key], key
    expected = torch.load(tmp_path / in_dir("a")["run_dir"] / "final.pt", weights_only=True)["state_dict"]
    actual = torch.load(run_dir / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert not (run_dir / "checkpoint_lp.pt").exists() and not (run_dir / "checkpoint.pt").exists()
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["phase"]) == ["lp", "lp", "ft", "ft", "ft"] and list(history["epoch"]) == [1, 2, 1, 2, 3]
    assert resumed["protocol"] == "lpft" and resumed["lpft"]["epochs"] == 2 and resumed["early_stopped"] is False
    assert resumed["lpft"]["select_on"] == "last"


# ---- the workflow -------------------------------------------------------------------------------


def protocol_study_config() -> dict:
    """A one-cell study of an ordinal target with every key of this file, fine-tuned and LP-FT."""
    config = tiny_config()
    config["datasets"] = {"grades": {"format": "synthetic", "task": "lesion_grade", "n_train": 160, "n_val": 80,
                                     "n_test": 80, "size": 16}}
    config.pop("sources")
    config.pop("pretrain")
    config["study"].update(targets=["grades"], inits=["RI"], seeds=[0], protocols=["finetune", "lpft"])
    config["train"].update(epochs=4, select_on="val_kappa", warmup_steps=3, grad_clip=1.0,
                           schedule={"name": "plateau", "monitor": "val_kappa", "factor": 0.5, "patience": 1},
                           early_stopping={"monitor": "val_loss", "patience": 2})
    config["lpft"] = {"epochs": 2, "optimizer": {"name": "adam", "lr": 1e-2},
                      "early_stopping": {"monitor": "val_acc", "patience": 10}}
    off = ("weight_drift", "reinit", "layer_knn", "filters", "fid", "prediction_similarity", "representation_gain")
    config["analysis"].update({name: False for name in off}, pairs=[])
    return config


def test_an_lpft_study_plans_one_lpft_job_per_cell_beside_the_fine_tuning_runs(tmp_path):
    config = protocol_study_config()
    config["study"]["seeds"] = [0, 1]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for seed in (0, 1):
        assert f"results/protocols/lpft/grades/cbr_tiny/RI/f1/s{seed}/metrics.json" in result.stdout
        assert f"results/runs/grades/cbr_tiny/RI/f1/s{seed}/metrics.json" in result.stdout
    assert result.stdout.count("rule lpft:") == 2


@pytest.mark.slow
def test_a_study_with_the_training_protocol_keys_and_lpft_runs_end_to_end(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(protocol_study_config()))
    result = run_snakemake(tmp_path, "--cores", "2", "--resources", "gpu=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "results" / "analysis" / "metrics.csv")
    assert sorted(metrics["protocol"]) == ["finetune", "lpft"]
    assert metrics["test_kappa"].notna().all()
    history = pd.read_csv(tmp_path / "results" / "runs" / "grades" / "cbr_tiny" / "RI" / "f1" / "s0" / "history.csv")
    assert {"val_kappa", "val_loss", "lr"} <= set(history.columns) and 1 <= len(history) <= 4
    finetune = metrics[metrics["protocol"] == "finetune"].iloc[0]
    assert finetune["epochs"] == len(history)
    assert finetune["best_epoch"] == int(history["val_kappa"].to_numpy().argmax()) + 1
    lpft_dir = tmp_path / "results" / "protocols" / "lpft" / "grades" / "cbr_tiny" / "RI" / "f1" / "s0"
    record = json.loads((lpft_dir / "metrics.json").read_text())
    assert record["lpft"]["epochs"] == 2 and record["spec"]["lpft"]["select_on"] == "last"
    assert set(pd.read_csv(lpft_dir / "history.csv")["phase"]) == {"lp", "ft"}
    assert (tmp_path / "results" / "figures" / "protocols.png").stat().st_size > 0


def test_the_planners_monitor_names_are_the_metrics_the_evaluations_report():
    from medtransfer.study.config import CLASSIFICATION_MONITORS, SEGMENTATION_MONITORS
    from medtransfer.training.metrics import TASK_METRICS, classification_metrics, segmentation_metrics

    rng = np.random.default_rng(0)
    for task in ("binary", "multiclass", "ordinal", "multilabel"):
        k = 2 if task == "binary" else 3
        labels = rng.integers(0, 2, (30, k)).astype(float) if task == "multilabel" else rng.integers(0, k, 30)
        assert set(classification_metrics(task, labels, rng.random((30, k)))) == set(TASK_METRICS[task]), task
    counts = np.array([[[5, 6, 7], [2, 3, 4]]] * 3)
    assert set(TASK_METRICS["segmentation"]) <= set(segmentation_metrics(counts))
    classification = {m for task, names in TASK_METRICS.items() if task != "segmentation" for m in names}
    assert set(CLASSIFICATION_MONITORS) == {"val_loss"} | {f"val_{m}" for m in classification}
    assert set(SEGMENTATION_MONITORS) <= {"val_loss"} | {f"val_{m}" for m in TASK_METRICS["segmentation"]}
