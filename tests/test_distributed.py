"""One job on several processes (train.gpus_per_job): DDP with gloo on this CPU, 2 processes.

The job is launched as the workflow launches it (``torchrun --standalone --nproc_per_node 2 -m
medtransfer.cli finetune``) and compared with the same fine-tune in one process: the processes'
shares of every batch are the one-process batch (with the same augmentation draws), BatchNorm is
synchronised, so the two runs take the same steps up to the order of float additions; a
2-process job killed mid-epoch resumes to the weights of an uninterrupted one; config errors
stop at plan time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from medtransfer.data import make_loader
from medtransfer.data.streaming import build_cache_resumable
from medtransfer.errors import ConfigError
from medtransfer.study import Study
from medtransfer.training.finetune import finetune

TIMEOUT_S = 240
EPOCHS, STEPS_PER_EPOCH, BATCH = 2, 8, 32
ENV = {**os.environ, "MEDTRANSFER_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}


def ddp_config(**train) -> dict:
    """A one-run study whose fine-tune has BatchNorm (cbr_tiny), augmentation and a checkpoint after
    every batch. SGD, not Adam: Adam's first steps are about lr * sign(gradient), so a gradient
    entry near 0 whose sign the float order flips would move a weight by 2 lr and hide the
    equivalence the test states; SGD's step is linear in the gradient."""
    config = tiny_config()
    config["datasets"]["lesions"]["n_train"] = STEPS_PER_EPOCH * BATCH
    config["train"].update(epochs=EPOCHS, batch_size=BATCH, augment={"hflip": True, "crop_padding": 2},
                           optimizer={"name": "sgd", "lr": 0.002, "momentum": 0.9}, schedule={"name": "constant"},
                           checkpoint_minutes=1e-6, **train)
    config["study"].update(inits=["RI"], fractions=[1.0], seeds=[0])
    config["analysis"]["pairs"] = []
    return config


@dataclass
class Setup:
    root: Path
    spec: dict
    cache: Path

    def workdir(self, name: str) -> Path:
        workdir = self.root / name
        (workdir / self.spec["cache"]).parent.mkdir(parents=True)
        os.link(self.cache, workdir / self.spec["cache"])
        (workdir / "spec.json").write_text(json.dumps(self.spec))
        return workdir

    def run_dir(self, workdir: Path) -> Path:
        return workdir / self.spec["run_dir"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("ddp")
    study = Study(ddp_config(gpus_per_job=2))
    (run,) = study.runs
    spec = study.run_spec(run)
    preprocess = study.preprocess_spec(run.dataset)
    cache = root / "lesions.h5"
    build_cache_resumable(preprocess["name"], preprocess["entry"], cache, progress=False)
    return Setup(root, spec, cache)


def start(workdir: Path, processes: int, log_name: str = "job.log") -> subprocess.Popen:
    """``medtransfer finetune`` as the rule runs it (through torchrun for several processes)."""
    command = ["-m", "medtransfer.cli", "finetune", "--spec", "@spec.json", "--threads", str(processes),
               "--device", "cpu", "--no-progress"]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *command]
    with open(workdir / log_name, "w") as log:
        return subprocess.Popen([sys.executable, *command], cwd=workdir, env=ENV, stdout=log,
                                stderr=subprocess.STDOUT)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc): torchrun starts each worker in a session of its
    own, so killing the agent's process group would leave the workers running."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(p for child in children for p in process_tree(int(child)))]


def finished(workdir: Path, process: subprocess.Popen, log_name: str = "job.log") -> Path:
    code = process.wait(timeout=TIMEOUT_S)
    assert code == 0, (workdir / log_name).read_text()
    return workdir


def final_weights(setup: Setup, workdir: Path) -> dict[str, torch.Tensor]:
    return torch.load(setup.run_dir(workdir) / "final.pt", map_location="cpu", weights_only=False)["state_dict"]


def metrics(setup: Setup, workdir: Path) -> dict:
    return json.loads((setup.run_dir(workdir) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def jobs(setup):
    """The uninterrupted 1-process and 2-process runs, side by side."""
    one, two = setup.workdir("one"), setup.workdir("two")
    process = start(two, 2)
    # the 1-process run in this process, on one thread as each of the two workers, while they run
    # (a third interpreter would import torch again: seconds on this machine)
    threads, cwd = torch.get_num_threads(), os.getcwd()
    try:
        torch.set_num_threads(1)
        os.chdir(one)
        finetune(json.loads((one / "spec.json").read_text()), device="cpu", progress=False)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    yield {"one": one, "two": finished(two, process)}


def test_each_process_reads_its_share_of_every_global_batch_and_the_same_augmentation(setup):
    """(a) Over an epoch the two ranks' rows are, batch by batch, the one-process batch split in
    two (so the epoch's set and order per sample are the same), deterministic per (seed, epoch),
    and every image gets the same crop and flip as in the one-process run."""
    common = dict(batch_size=BATCH, shuffle=True, seed=3, augment={"hflip": True, "crop_padding": 2},
                  normalize="dataset", num_workers=0)
    single = make_loader(setup.cache, "train", **common)
    ranks = [make_loader(setup.cache, "train", world=(rank, 2), **common) for rank in range(2)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        whole = single.batch_rows()
        shares = [rank.batch_rows() for rank in ranks]
        assert len(whole) == len(shares[0]) == len(shares[1]) == len(single)
        for batch, rows in enumerate(whole):
            assert len(shares[0][batch]) == len(shares[1][batch]) == BATCH // 2
            np.testing.assert_array_equal(np.sort(np.concatenate([shares[0][batch], shares[1][batch]])),
                                          np.sort(rows))
        assert sorted(np.concatenate([*shares[0], *shares[1]])) == list(range(STEPS_PER_EPOCH * BATCH))
        # the same (seed, epoch) gives the same shares again
        assert all(np.array_equal(a, b) for a, b in zip(ranks[0].batch_rows(), shares[0], strict=True))
        for (x, _), x0_y0, x1_y1 in zip(single, *ranks, strict=True):
            np.testing.assert_array_equal(x[0::2].numpy(), x0_y0[0].numpy())
            np.testing.assert_array_equal(x[1::2].numpy(), x1_y1[0].numpy())
    ranks[0].set_epoch(0)  # and another epoch another order
    epoch0 = ranks[0].batch_rows()
    ranks[0].set_epoch(1)
    assert not all(np.array_equal(a, b) for a, b in zip(epoch0, ranks[0].batch_rows(), strict=True))


def test_a_partial_last_batch_is_padded_so_every_process_takes_the_same_steps(setup):
    """DistributedSampler's padding: 250 images, batch 32, 2 processes -> 8 steps each, the last
    of 13 images (26 over both: 250 and the first 2 positions of the epoch again)."""
    loaders = [make_loader(setup.cache, "train", batch_size=BATCH, shuffle=True, indices=np.arange(250),
                           world=(rank, 2), num_workers=0) for rank in range(2)]
    shares = [loader.batch_rows() for loader in loaders]
    assert [len(s) for s in shares] == [8, 8] and [len(s[-1]) for s in shares] == [13, 13]
    assert set(np.concatenate([*shares[0], *shares[1]])) == set(range(250))


def test_one_and_two_processes_reach_the_same_weights_and_metrics(setup, jobs):
    """(b) With SyncBatchNorm and per-process batch = global / 2 the two runs compute the same
    forward and the same averaged gradient; they differ only in the order of float32 additions
    (each process sums its 16 images, the processes' sums are added; BatchNorm's statistics are a
    sum and sum of squares over processes instead of one pass). That is a relative error of a few
    float32 ulps (~1e-7) per gradient entry and step; SGD's update is linear in the gradient, so
    after 16 steps (lr 0.002, momentum 0.9) the weights may differ by about steps x 1e-7 of each
    tensor's largest entry: measured up to 1.4e-6; the test allows 1e-5 (about 7x). The small lr
    and 2 epochs matter: at lr 0.01 over 24 steps this tiny network's training is unstable enough
    to amplify float-order differences to 6e-4 (also between two 1-process runs on 1 vs 2
    threads), which says nothing about DDP."""
    one, two = (final_weights(setup, jobs[name]) for name in ("one", "two"))
    assert one.keys() == two.keys()
    for key, value in one.items():
        if value.is_floating_point():
            scale = float(value.abs().max()) or 1.0
            if os.environ.get("MEDTRANSFER_PRINT_DDP_DIFF"):
                print(key, float((two[key] - value).abs().max()) / scale)
            torch.testing.assert_close(two[key], value, rtol=0, atol=1e-5 * scale, msg=key)
        else:
            assert torch.equal(two[key], value), key
    m1, m2 = metrics(setup, jobs["one"]), metrics(setup, jobs["two"])
    assert m1["best_epoch"] == m2["best_epoch"]
    # scores differ by ~1e-6: the AUC of 100 validation images moves only if a pair of scores that
    # close swaps, by 1 / (positives x negatives) ~ 4e-4 each; allow two swaps
    for split in ("val", "test"):
        for name in ("auc", "acc"):
            assert m2[split][name] == pytest.approx(m1[split][name], abs=1e-3), (split, name)
    assert (m1["provenance"]["world_size"], m1["provenance"]["backend"]) == (1, None)
    assert (m2["provenance"]["world_size"], m2["provenance"]["backend"]) == (2, "gloo")
    # rank 0 alone wrote: one "run ... test" line, no stray temp files
    assert (jobs["two"] / "job.log").read_text().count("INFO medtransfer: run ") == 1
    assert not [p for p in setup.run_dir(jobs["two"]).iterdir() if p.name.startswith(".")]


def test_a_sigkilled_two_process_job_resumes_from_its_checkpoint_to_the_same_weights(setup, jobs):
    """(c) Kill the whole 2-process job (agent and both workers) mid-epoch, rerun: it resumes from
    rank 0's checkpoint and ends bit-identical to the uninterrupted 2-process run (gloo's sum of two
    addends is order-free, so the 2-process run is itself deterministic)."""
    workdir = setup.workdir("killed")
    checkpoint = setup.run_dir(workdir) / "checkpoint.pt"
    process = start(workdir, 2)
    deadline = time.monotonic() + TIMEOUT_S
    state = None
    while state is None or not (state["epoch"] >= 1 and state["batch"] > 0):
        assert process.poll() is None, "the job ended before it was killed:\n" + (workdir / "job.log").read_text()
        assert time.monotonic() < deadline, "no checkpoint in epoch 2"
        try:  # written by rename, so whole; it may be replaced while we look
            state = torch.load(checkpoint, map_location="cpu", weights_only=False) if checkpoint.exists() else None
        except (OSError, RuntimeError, EOFError):
            state = None
        time.sleep(0.005)
    pids = process_tree(process.pid)
    assert len(pids) == 3, pids  # the agent and its two workers
    for pid in pids:  # the whole job at once, as a node failure would
        os.kill(pid, signal.SIGKILL)
    process.wait(timeout=TIMEOUT_S)
    assert not (setup.run_dir(workdir) / "metrics.json").exists()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert 1 <= state["epoch"] < EPOCHS, "killed after training had finished"

    finished(workdir, start(workdir, 2, "rerun.log"), "rerun.log")
    assert (workdir / "rerun.log").read_text().count("resumed from") == 2  # both ranks, the same checkpoint
    reference, resumed = final_weights(setup, jobs["two"]), final_weights(setup, workdir)
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
    assert metrics(setup, workdir)["test"] == metrics(setup, jobs["two"])["test"]
    assert not checkpoint.exists()


@pytest.mark.parametrize(("train", "message"), [
    ({"gpus_per_job": 0}, r"config key train\.gpus_per_job: 0; give an integer >= 1"),
    ({"gpus_per_job": 1.5}, r"config key train\.gpus_per_job: 1\.5; give an integer >= 1"),
    ({"gpus_per_job": 3}, r"config key train\.batch_size: 32 is the global batch.*divisible by 3; set "
                          r"batch_size to 30 or 33"),
])
def test_gpus_per_job_is_checked_at_plan_time(train, message):
    """(d) 0 processes, or a global batch the processes cannot share evenly, stop before any job."""
    with pytest.raises(ConfigError, match=message):
        Study(ddp_config(**train))


def test_a_source_pretraining_with_several_processes_is_checked_too():
    config = ddp_config()
    config["sources"]["natural"]["pretrain"]["training"] = {"gpus_per_job": 4, "batch_size": 30}
    with pytest.raises(ConfigError, match=r"sources\.natural\.pretrain\.training\.batch_size: 30"):
        Study(config)


def test_the_rules_ask_for_the_jobs_gpus_and_launch_torchrun_only_for_several(tmp_path):
    """A dry run: fine-tunes with gpus_per_job 2 ask gpu=2 and run under torchrun; pretraining
    with its own gpus_per_job 1 stays the plain CLI on one GPU."""
    config = tiny_config()
    config["train"]["gpus_per_job"] = 2
    config["pretrain"]["gpus_per_job"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                             "-n", "-p", "--cores", "4", "--resources", "gpu=4", "--until", "finetune"],
                            capture_output=True, text=True, timeout=TIMEOUT_S,
                            env={**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{ENV.get('PATH', '')}"})
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("\n\n")
    finetunes = [b for b in blocks if "rule finetune:" in b]
    pretrains = [b for b in blocks if "rule pretrain:" in b]
    assert len(finetunes) == 4 and len(pretrains) == 1, result.stdout[-3000:]  # 2 inits x 2 seeds
    for block in finetunes:
        assert "gpu=2" in block and "torchrun --standalone --nproc_per_node 2 -m medtransfer.cli finetune" in block
    assert "gpu=1" in pretrains[0] and "medtransfer pretrain --spec" in pretrains[0], pretrains[0]
    assert "torchrun" not in pretrains[0]


def _simclr_loss_worker(rank: int, size: int, init_file: str, out: str) -> None:
    """One process of a 2-process group: SimCLR's loss on its share of a fixed batch of views."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        views = simclr_views()
        loss = simclr_method().loss([v[rank::size] for v in views], 0)
        torch.save(float(loss), Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def simclr_method():
    from medtransfer import models
    from medtransfer.training import ssl

    torch.manual_seed(0)
    backbone = models.create("cbr_tiny", 2, in_chans=3, width=0.125)
    method = ssl.build("simclr", backbone, ssl.resolve_options("simclr", None, "test"), steps_per_epoch=1, epochs=1)
    return method.eval()  # BatchNorm on running statistics: each image's embedding is its own


def simclr_views() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(16, 3, 16, 16, generator=generator) for _ in range(2)]


def test_simclr_under_ddp_takes_its_negatives_from_every_process(tmp_path):
    """lightly's gather_distributed is on in a process group: the mean of the two processes'
    NT-Xent losses on their halves is the one-process loss of the whole batch (without gathering
    each half would be its own, smaller, set of negatives and the loss another number)."""
    # fork: the children inherit the imported modules (spawn would import torch and lightly again)
    torch.multiprocessing.start_processes(_simclr_loss_worker, args=(2, str(tmp_path / "init"), str(tmp_path)),
                                          nprocs=2, start_method="fork")
    gathered = np.mean([torch.load(tmp_path / f"{rank}.pt") for rank in range(2)])
    method, views = simclr_method(), simclr_views()
    with torch.no_grad():
        whole = float(method.loss(views, 0))
        alone = np.mean([float(method.loss([v[rank::2] for v in views], 0)) for rank in range(2)])
    assert gathered == pytest.approx(whole, rel=1e-5)
    assert abs(alone - whole) > 1e-2  # the check above can tell the difference
