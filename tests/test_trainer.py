"""The training loop: schedule, exact resume after preemption, precision policy."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from medtransfer.errors import DataError
from medtransfer.study import DEFAULT_TRAINING, deep_merge
from medtransfer.training.trainer import Preempted, evaluate, fit, lr_factor, precision_for


class TensorLoader:
    """A minimal loader with the BatchLoader contract: order is a function of (seed, epoch)."""

    def __init__(self, x, y, batch_size, seed=0, shuffle=True, on_batch=None):
        self.x, self.y, self.batch_size, self.seed, self.shuffle = x, y, batch_size, seed, shuffle
        self.epoch, self.on_batch = 0, on_batch

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = (torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
                 if self.shuffle else torch.arange(len(self.x)))
        for i in range(len(self)):
            if self.on_batch:
                self.on_batch(self.epoch, i)
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[index], self.y[index]


def problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 3, 8, 8, generator=generator)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return x, y


def model_factory():
    torch.manual_seed(0)
    # dropout makes the RNG state part of what a resume must restore
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32), torch.nn.ReLU(),
                               torch.nn.Dropout(0.3), torch.nn.Linear(32, 2))


def training(**overrides):
    return deep_merge(DEFAULT_TRAINING, {"epochs": 4, "batch_size": 16, **overrides})


def run_fit(tmp_path, on_batch=None, name="ckpt.pt"):
    x, y = problem()
    model = model_factory()
    result = fit(model, TensorLoader(x, y, 16, on_batch=on_batch), TensorLoader(x, y, 32, shuffle=False),
                 task="binary", training=training(), device=torch.device("cpu"),
                 checkpoint_path=tmp_path / name, spec_hash="abc", progress=False)
    return model, result


def test_multistep_schedule_matches_medmnist_protocol():
    schedule = {"name": "multistep", "milestones": [50, 75], "gamma": 0.1}
    factors = [lr_factor(e, 100, schedule) for e in range(100)]
    assert factors[49] == 1.0 and factors[50] == pytest.approx(0.1) and factors[75] == pytest.approx(0.01)
    fractional = {"name": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}
    assert [lr_factor(e, 100, fractional) for e in range(100)] == factors
    cosine = {"name": "cosine"}
    assert lr_factor(0, 10, cosine) == 1.0 and lr_factor(5, 10, cosine) == pytest.approx(0.5)


def test_sigterm_checkpoints_and_the_rerun_is_bit_identical(tmp_path):
    reference_model, reference = run_fit(tmp_path / "a")

    def preempt(epoch, batch):
        if (epoch, batch) == (1, 3):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted, match="checkpoint saved"):
        run_fit(tmp_path / "b", on_batch=preempt)
    assert (tmp_path / "b" / "ckpt.pt").exists()
    resumed_model, resumed = run_fit(tmp_path / "b")
    for key, value in reference_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)
    assert resumed.best_epoch == reference.best_epoch


def test_a_checkpoint_of_another_spec_is_not_resumed(tmp_path):
    run_fit(tmp_path)
    x, y = problem()
    model = model_factory()
    result = fit(model, TensorLoader(x, y, 16), TensorLoader(x, y, 32, shuffle=False), task="binary",
                 training=training(), device=torch.device("cpu"), checkpoint_path=tmp_path / "ckpt.pt",
                 spec_hash="other", progress=False)
    assert len(result.history) == 4 and result.history[0]["epoch"] == 1


def test_best_validation_epoch_is_kept(tmp_path):
    _, result = run_fit(tmp_path)
    best = max(result.history, key=lambda row: row["val_auc"])
    assert result.best_epoch == best["epoch"]


def test_a_validation_split_without_an_auc_stops_instead_of_testing_the_init(tmp_path):
    """One-class validation labels make val AUC undefined; selection on it would never pick an epoch."""
    x, y = problem()
    one_class = torch.zeros_like(y)
    with pytest.raises(DataError, match="select_on: val_loss"):
        fit(model_factory(), TensorLoader(x, y, 16), TensorLoader(x, one_class, 32, shuffle=False),
            task="binary", training=training(), device=torch.device("cpu"), checkpoint_path=tmp_path / "c.pt",
            spec_hash="x", progress=False)
    result = fit(model_factory(), TensorLoader(x, y, 16), TensorLoader(x, one_class, 32, shuffle=False),
                 task="binary", training=training(select_on="val_loss"), device=torch.device("cpu"),
                 checkpoint_path=tmp_path / "loss.pt", spec_hash="x", progress=False)
    assert result.best_epoch >= 1


def test_autocast_is_cuda_only_unless_asked_for_on_the_cpu_and_channels_last_follows_the_config():
    config = training(amp="bf16", channels_last=True)
    cpu = precision_for(torch.device("cpu"), config)
    assert cpu.autocast_dtype is None and cpu.channels_last
    assert precision_for(torch.device("cpu"), {**config, "amp_on_cpu": True}).autocast_dtype == torch.bfloat16
    assert precision_for(torch.device("cpu"), {**config, "amp": "none", "amp_on_cpu": True}).autocast_dtype is None
    assert cpu.record() == {"autocast": "float32", "channels_last": True}
    assert precision_for(torch.device("cpu"), {**config, "amp_on_cpu": True}).record()["autocast"] == "bfloat16"
    cuda = precision_for(torch.device("cuda", 0), config)
    assert cuda.autocast_dtype == torch.bfloat16 and cuda.channels_last
    assert precision_for(torch.device("cuda", 0), training(amp="none")).autocast_dtype is None
    assert not precision_for(torch.device("cpu"), training(channels_last=False)).channels_last


def conv_model():
    torch.manual_seed(0)
    # no bias before BatchNorm, as in real nets: its gradient is 0 up to rounding, which Adam
    # would blow up to full-size steps of random sign in either layout
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))


def test_channels_last_changes_memory_layout_not_the_training(tmp_path):
    """The memory format is a layout: two epochs train to the same weights within float rounding."""
    x, y = problem()
    trained = []
    for channels_last in (False, True):
        model = conv_model()
        config = training(channels_last=channels_last, epochs=2)
        result = fit(model, TensorLoader(x, y, 16), TensorLoader(x, y, 32, shuffle=False), task="binary",
                     training=config, device=torch.device("cpu"), checkpoint_path=tmp_path / f"{channels_last}.pt",
                     spec_hash="x", progress=False)
        trained.append((model, result))
    (plain, plain_result), (nhwc, nhwc_result) = trained
    assert nhwc[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain[0].weight.is_contiguous()
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert [r["train_loss"] for r in nhwc_result.history] == pytest.approx(
        [r["train_loss"] for r in plain_result.history], rel=1e-5)


def test_the_accelerated_path_runs_on_the_cpu(tmp_path):
    """bf16 autocast + channels_last is the CUDA path; forcing it on the CPU keeps it from rotting."""
    x, y = problem()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    config = training(amp="bf16", channels_last=True, epochs=1)
    precision = precision_for(torch.device("cpu"), config, force_on_cpu=True)
    result = fit(model, TensorLoader(x, y, 16), TensorLoader(x, y, 32, shuffle=False), task="binary",
                 training=config, device=torch.device("cpu"), checkpoint_path=tmp_path / "c.pt",
                 spec_hash="x", precision=precision, progress=False)
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))


def test_evaluation_is_float32_even_when_training_autocasts():
    x, y = problem()
    model = conv_model()
    loader = TensorLoader(x, y, 32, shuffle=False)
    bf16 = precision_for(torch.device("cpu"), training(amp="bf16"), force_on_cpu=True)
    assert bf16.autocast_dtype == torch.bfloat16
    plain = evaluate(model, loader, "binary", torch.device("cpu"), precision_for(torch.device("cpu"), training()))
    accelerated = evaluate(model, loader, "binary", torch.device("cpu"), bf16)
    with torch.no_grad():
        reference = torch.softmax(model.eval()(x), dim=1).numpy()
    np.testing.assert_allclose(accelerated.scores, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.scores, reference, rtol=1e-5, atol=1e-6)


def test_multilabel_validation_loss_is_the_mean_over_all_known_labels():
    """Batches with different numbers of unknown labels must not get equal weight."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 3, 8, 8, generator=generator)
    y = (torch.rand(64, 4, generator=generator) > 0.5).float()
    y[:32][torch.rand(32, 4, generator=generator) > 0.2] = float("nan")  # first batch mostly unknown
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    result = evaluate(model, TensorLoader(x, y, 32, shuffle=False), "multilabel", torch.device("cpu"),
                      precision_for(torch.device("cpu"), training()))
    with torch.no_grad():
        logits = model(x)
    known = ~torch.isnan(y)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], y[known])
    assert result.loss == pytest.approx(float(expected), rel=1e-5)
