"""The study grid: expansion, cross-reference checks and the job specs the rules pass on."""

from __future__ import annotations

import copy

import pytest

from medtransfer import paths
from medtransfer.errors import ConfigError
from medtransfer.study import Study, expand_init, load_config, validate_config

from conftest import REPO, SCHEMA, tiny_config


def test_grid_is_the_cartesian_product():
    config = tiny_config()
    config["study"].update(inits=["RI", {"WT": "natural"}, {"WT-ST": "natural", "k": [1, 2, 3]}],
                           fractions=[0.1, 0.5, 1.0], seeds=[0, 1])
    study = Study(config)
    assert len(study.runs) == 1 * 1 * 5 * 3 * 2
    assert len({run.id for run in study.runs}) == len(study.runs)
    assert {run.init for run in study.runs} == {"RI", "WT_natural", "WT-ST_natural_k1", "WT-ST_natural_k2",
                                                "WT-ST_natural_k3"}
    assert {run.fraction for run in study.runs} == {"0.1", "0.5", "1"}


def test_run_spec_paths_come_from_the_path_helper():
    study = Study(tiny_config())
    run = study.runs[-1]
    spec = study.run_spec(run)
    assert spec["run_dir"] == paths.run_dir(run)
    assert spec["cache"] == paths.dataset_cache("lesions")
    assert spec["source"] == {"kind": "pretrain", "path": paths.pretrain_model("natural", "cbr_tiny")}
    assert study.pretrain_jobs() == [("natural", "cbr_tiny")]
    assert study.datasets_needed() == ["lesions", "shapes"]


def test_training_defaults_are_merged_not_replaced():
    study = Study(tiny_config())
    assert study.train["epochs"] == 2
    assert study.train["optimizer"]["name"] == "adam"  # from the defaults
    assert study.pretrain_spec("natural", "cbr_tiny")["training"]["epochs"] == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["study"].update(targets=["nope"]), "study.targets[0]"),
        (lambda c: c["study"].update(inits=["XX"]), "unknown init 'XX'"),
        (lambda c: c["study"].update(inits=["WT"]), "needs a source"),
        (lambda c: c["study"].update(inits=[{"WT": "imagenet"}]), "not under `sources:`"),
        (lambda c: c["study"].update(inits=[{"WT-ST": "natural"}]), "needs k"),
        (lambda c: c["study"].update(inits=[{"WT": "natural", "k": 2}]), "only WT-ST, WT-RI take k"),
        (lambda c: c["sources"]["natural"]["pretrain"].update(dataset="imagenet"), "sources.natural.pretrain.dataset"),
        (lambda c: c.update(analysis={"pairs": [{"a": "RI", "b": "ST_natural"}]}), "analysis.pairs[0].b"),
        (lambda c: c.update(analysis={"measures": ["cka"]}), "analysis.measures[0]: unknown measure 'cka'"),
        (lambda c: c.update(train={"schedule": {"name": "multistep", "milestones": [0.5, 1.0]}}),
         "train.schedule.milestones: [0.5, 1.0] mixes fractions"),
    ],
)
def test_config_errors_name_the_key(mutate, message):
    config = copy.deepcopy(tiny_config())
    mutate(config)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Study(config)


@pytest.mark.parametrize("where", ["study", "options"])
def test_unknown_architecture_names_the_key(where):
    config = copy.deepcopy(tiny_config())
    if where == "study":
        config["study"]["architectures"] = ["cbr_tiny", "resnet_18"]
        key = "study.architectures[1]"
    else:
        config["architectures"] = {"cbr_tiny": {"width": 0.25}, "deit_tinny": {}}
        key = "architectures.deit_tinny"
    study = Study(config)  # the grid itself does not import timm
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]") + ".*timm model name"):
        study.check_architectures()
    Study(tiny_config()).check_architectures()  # ours and timm's names pass


def test_schema_rejects_a_bad_value_naming_the_key():
    config = tiny_config()
    config["train"]["optimizer"] = {"name": "rmsprop", "lr": 0.1}
    with pytest.raises(ConfigError, match=r"train\.optimizer\.name.*rmsprop"):
        validate_config(config, SCHEMA)


@pytest.mark.parametrize("path", ["config.yaml", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "workflow" / "studies").glob("*.yaml"))])
def test_shipped_configs_are_valid(path):
    Study(load_config(REPO / path, SCHEMA))


def test_init_labels_are_path_safe_and_unique():
    specs = expand_init({"WT-RI": "natural", "k": [1, 2], "slim": 0.5}, 0)
    assert [s.label for s in specs] == ["WT-RI_natural_k1_slim0.5", "WT-RI_natural_k2_slim0.5"]
    assert all("/" not in s.label for s in specs)


def test_per_arch_sources_and_init_architectures():
    config = tiny_config()
    config["study"]["architectures"] = ["cbr_tiny", "resnet18"]
    config["sources"] = {"imagenet": {"timm": True, "per_arch": {"cbr_tiny": {"pretrain": {"dataset": "shapes"}}}}}
    config["study"]["inits"] = ["RI", {"WT": "imagenet"}, {"WT-RI": "imagenet", "k": 1, "slim": 0.5,
                                                           "architectures": ["cbr_tiny"]}]
    config["analysis"]["pairs"] = []
    validate_config(config, SCHEMA)
    study = Study(config)
    assert study.pretrain_jobs() == [("imagenet", "cbr_tiny")]
    assert study.source_spec("imagenet", "resnet18") == {"kind": "timm", "arch": "resnet18", "tag": None}
    assert study.source_spec("imagenet", "cbr_tiny")["kind"] == "pretrain"
    slim_runs = [r for r in study.runs if r.init.startswith("WT-RI")]
    assert {r.arch for r in slim_runs} == {"cbr_tiny"}
    assert len(study.runs) == (2 * 2 + 1) * 2  # ((RI, WT) × 2 archs + slim × 1 arch) × 2 seeds


def test_resources_scale_per_architecture_and_dataset():
    config = tiny_config()
    config["resources"]["finetune"] = {"threads": 1, "mem_mb": 1000, "runtime": 5,
                                       "by_arch": {"cbr_tiny": {"runtime": 50}},
                                       "by_dataset": {"lesions": {"mem_mb": 3000}}}
    validate_config(config, SCHEMA)
    study = Study(config)
    assert study.resources_for("finetune") == {"threads": 1, "mem_mb": 1000, "runtime": 5}
    assert study.resources_for("finetune", arch="cbr_tiny", dataset="lesions") == \
        {"threads": 1, "mem_mb": 3000, "runtime": 50}
    assert study.resources_for("preprocess", dataset="lesions")["mem_mb"] == 1000


def test_gabor_with_a_source_is_planned_with_it_and_a_sourceless_init_refuses_one():
    """{Gabor: natural} fits the Gabor ranges to the source's first conv (init.apply does): the
    planner must hand the run that source, not silently plan plain Gabor (issue 25, finding 11)."""
    config = tiny_config()
    config["study"]["inits"] = [{"RI": None, "architectures": ["cbr_tiny"]}, "Gabor", {"Gabor": "natural"}]
    config["analysis"]["pairs"] = [{"a": "Gabor_natural", "b": "RI"}]
    study = Study(config)
    by_label = {run.init: study.run_spec(run) for run in study.runs}
    assert by_label["Gabor_natural"]["source"] == {"kind": "pretrain", "path": "results/pretrain/natural/cbr_tiny/model.pt"}
    assert by_label["Gabor_natural"]["init"]["source"] == "natural" and by_label["Gabor"]["source"] is None
    assert ("natural", "cbr_tiny") in study.pretrain_jobs()
    config["study"]["inits"] = ["RI", {"RI": "natural"}]
    with pytest.raises(ConfigError, match=r"study\.inits\[1\]\.RI: RI takes no source"):
        Study(config)
