# Config validation and every input function; rules hold no logic of their own.
import json
import sys
from functools import partial

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from medtransfer import paths
from medtransfer.errors import ConfigError
from medtransfer.study import (
    REUSE_ANALYSES,
    Study,
    launcher,
    processes_per_job,
)
from medtransfer.joblogs import report_failed_jobs
from medtransfer.paths import Run
from medtransfer.report import layout as report_layout

# the schema has no defaults for validate to fill in: a section holds what the user wrote, and
# what it leaves out comes from the sections it merges over (medtransfer.study.defaults)
validate(config, "../schemas/config.schema.yaml")
try:
    STUDY = Study(config)
    if workflow.is_main_process:  # not again in every cluster job: it imports timm
        STUDY.check_architectures()
        STUDY.check_dataset_entries()
        STUDY.check_source_files()
        FID_WARNING = STUDY.fid_weights_warning()
        if FID_WARNING:
            print(f"warning: {FID_WARNING}", file=sys.stderr)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}")

ENV = "../../envs/medtransfer.yaml"
RUN = Run.pattern()


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    source=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    arch=r"[^/]+",
    init=r"[^/]+",
    fraction=r"f[0-9.]+|n\d+",
    seed=r"\d+(_fold\d+)?",
    state=r"init|final",
    protocol=r"linear|knn",
    key=r"shared|s\d+",


def resource(rule_name, key):
    return STUDY.resources_for(rule_name)[key]


def per_attempt(rule_name, key):
    """mem_mb / runtime for the job's architecture and dataset (config `resources:` with
    `by_arch` / `by_dataset`), doubled on each retry (a job killed for time or memory gets more).
    """

    def scaled(wildcards, attempt):
        values = STUDY.resources_for(
            rule_name,
            arch=getattr(wildcards, "arch", None),
            dataset=getattr(wildcards, "dataset", None),
        )
        return values[key] * attempt

    return scaled


def run_of(wildcards):
    """The run of a job's wildcards: `fraction` is its size token (f0.1, n5000), `seed` its seed
    token (0, or 0_fold2 with study.folds): Run.pattern's spelling."""
    return Run.from_wildcards(
        wildcards.dataset,
        wildcards.arch,
        wildcards.init,
        wildcards.fraction,
        wildcards.seed,
    )


def as_json(spec):
    return json.dumps(spec, separators=(",", ":"))


# ---- specs handed to `medtransfer <command> --spec` -------------------------------------

#: the wildcards of a (dataset, arch, fraction) group job
GROUP = ("dataset", "arch", "fraction")


def job_spec(study_method, *arguments):
    """A rule's `spec` param: the JSON of `study_method` (a method of STUDY) called with one
    value per argument, a wildcard's name or a function of the wildcards (e.g. run_of).
    """

    def spec(wildcards):
        values = [
            (
                getattr(wildcards, argument)
                if isinstance(argument, str)
                else argument(wildcards)
            )
            for argument in arguments
        ]
        return as_json(study_method(*values))

    return spec


def configfiles(wildcards):
    """The config files the workflow was started with (the report's front page names them)."""
    return list(workflow.configfiles)


def pretrain_gpus(wildcards):
    """The GPUs of one pretraining job (its training's gpus_per_job): `resources: gpu`."""
    spec = STUDY.pretrain_spec(wildcards.source, wildcards.arch)
    return processes_per_job(spec["training"])


def finetune_gpus(wildcards):
    """The GPUs of one fine-tuning job (train.gpus_per_job): `resources: gpu`."""
    return processes_per_job(STUDY.run_spec(run_of(wildcards))["training"])


def pretrain_launcher(wildcards):
    """`medtransfer`, or torchrun with one process per GPU of the job."""
    return launcher(pretrain_gpus(wildcards))


def finetune_launcher(wildcards):
    """`medtransfer`, or torchrun with one process per GPU of the job."""
    return launcher(finetune_gpus(wildcards))


# ---- inputs -----------------------------------------------------------------------------


def cache_and_weights(cache, weights, name="source"):
    """A job's inputs: the dataset cache, and the weights file (as ``name``) when the weights come
    from our own pretraining or a file on disk (timm hub weights are no file of the workflow).
    """
    inputs = {"cache": cache}
    if weights and weights["kind"] in ("pretrain", "file"):
        inputs[name] = weights["path"]
    return inputs


def pretrain_inputs(wildcards):
    """The dataset's cache, and the weights a continual pretraining starts from."""
    spec = STUDY.pretrain_spec(wildcards.source, wildcards.arch)
    return cache_and_weights(spec["cache"], spec.get("from"), name="start")


def finetune_inputs(wildcards):
    """The target's cache, and the source model when the init transfers from our own pretraining
    (every fused source's, for a fine-tuned fusion)."""
    spec = STUDY.run_spec(run_of(wildcards))
    inputs = cache_and_weights(spec["cache"], spec["source"])
    members = spec.get("members", [])  # the backbones of a fine-tuned fusion
    for i, member in enumerate(members):
        inputs.update(
            cache_and_weights(spec["cache"], member["weights"], name=f"member{i}")
        )
    return inputs


def features_inputs(wildcards):
    """The dataset's cache, and the source model of the init whose features these are."""
    spec = STUDY.features_spec(
        wildcards.dataset, wildcards.arch, wildcards.init, wildcards.key
    )
    return cache_and_weights(spec["cache"], spec["source"])


def probe_features(wildcards):
    return STUDY.features_path(run_of(wildcards))


def run_outputs(name):
    return [paths.run_file(run, name) for run in STUDY.runs]


def probe_outputs(name):
    return [
        paths.protocol_run_file(protocol, run, name)
        for protocol, run in STUDY.probe_runs
    ]


def lpft_outputs(name):
    return [paths.protocol_run_file("lpft", run, name) for run in STUDY.lpft_runs]


def every_protocol_outputs(name):
    """File `name` of every run of every protocol (fine-tuning, frozen features, lpft)."""
    return run_outputs(name) + probe_outputs(name) + lpft_outputs(name)


def similarity_inputs(wildcards):
    spec = STUDY.similarity_spec(wildcards.dataset, wildcards.arch, wildcards.fraction)
    return [path for run in spec["runs"] for path in run["activations"].values()]


def pairs_inputs(wildcards):
    spec = STUDY.pairs_spec(wildcards.dataset, wildcards.arch, wildcards.fraction)
    return sorted({c[side] for c in spec["comparisons"] for side in ("a", "b")})


def figure_input(wildcards):
    return paths.analysis_table(STUDY.figure_input(wildcards.figure))


def pretrain_metas():
    return [paths.pretrain_meta(source, arch) for source, arch in STUDY.pretrain_jobs()]


def final_targets():
    targets = [paths.table("summary", "csv"), paths.table("summary", "md")]
    targets += [paths.table("provenance", "csv"), paths.table("provenance", "html")]
    if STUDY.analysis.get("reference"):
        targets += [paths.table("comparison", "csv"), paths.table("comparison", "md")]
    if STUDY.pretrain_jobs():
        targets += [paths.table("pretrain", "csv"), paths.table("pretrain", "md")]
    targets += STUDY.domain_tables()
    targets += [
        paths.figure(name, ext)
        for name in STUDY.figure_names()
        for ext in ("pdf", "png")
    ]
    targets += reuse_targets()
    targets += report_targets()
    return targets


# ---- part tables (collect_parts) ----------------------------------------------------------


def group_parts(kind, groups):
    return [paths.group_analysis(kind, *group) for group in groups]


#: results/analysis/{kind}.csv made by concatenating parts (one CSV per run or group) -> the parts
#: (none when the analysis is off: the rule is still defined, but nothing asks for the table)
PART_TABLES = {
    "similarity_init_final": lambda: group_parts(
        "similarity_init_final", STUDY.groups()
    ),
    "similarity_pairs": lambda: group_parts("similarity_pairs", STUDY.pair_groups()),
    "prediction_similarity": lambda: group_parts(
        "prediction_similarity", STUDY.prediction_groups()
    ),
    **{kind: partial(STUDY.reuse_parts, kind) for kind in REUSE_ANALYSES},
}


def table_parts(wildcards):
    return PART_TABLES[wildcards.kind]()


# ---- feature-reuse analyses (workflow/rules/reuse.smk) ----------------------------------


def weights_of(runs):
    return [
        paths.run_file(run, name) for run in runs for name in ("init.pt", "final.pt")
    ]


def group_weights(wildcards):
    """init.pt and final.pt of every run of one (dataset, arch, fraction) group."""
    return weights_of(
        STUDY.reuse_group_runs(wildcards.dataset, wildcards.arch, wildcards.fraction)
    )


def filter_cell_weights(wildcards):
    return weights_of(STUDY.filters_cell_runs())


def group_network_inputs(wildcards):
    """What a group job that runs the network reads: the runs' weights and metrics, the cache."""
    runs = STUDY.reuse_group_runs(
        wildcards.dataset, wildcards.arch, wildcards.fraction, "reinit"
    )  # reinit and layer_knn read the same (classification) runs
    return {
        "weights": weights_of(runs),
        "metrics": [paths.run_file(run, "metrics.json") for run in runs],
        "cache": paths.dataset_cache(wildcards.dataset),
    }


def reuse_targets():
    return [paths.analysis_table(kind) for kind in STUDY.reuse_tables()]


# ---- cross-run feature-reuse analyses (domain.smk) ----------------------------------------


def fid_stats_inputs(wildcards):
    """The dataset's cache, the source weights of a source embedder, and the cache whose
    statistics normalise its inputs (the source's pretraining dataset)."""
    spec = STUDY.fid_stats_spec(wildcards.embedder, wildcards.dataset)
    embedder = spec["embedder"]
    inputs = cache_and_weights(spec["cache"], embedder.get("source"))
    if embedder.get("normalize_cache"):
        inputs["normalize"] = embedder["normalize_cache"]
    return inputs


def prediction_inputs(wildcards):
    spec = STUDY.prediction_similarity_spec(
        wildcards.dataset, wildcards.arch, wildcards.fraction
    )
    return sorted(run["predictions"] for run in spec["runs"].values())


# ---- the study report (snakemake --report results/report.html) -------------------------


def report_targets():
    """The front page, the tables and the figure captions of the report, made by the run so
    --report finds them (a figure made before captions existed gets its caption too)."""
    tables = STUDY.report_table_names()
    targets = [paths.report_front()] + [paths.report_table(name) for name in tables]
    return targets + [paths.figure(name, "rst") for name in STUDY.figure_names()]


def report_front_inputs(wildcards):
    spec = STUDY.front_spec(list(workflow.configfiles))
    caches = [entry["cache"] for entry in spec["datasets"]]
    return {
        "metrics": spec["metrics"],
        "provenance": spec["provenance"],
        "caches": caches,
    }


def report_table_input(wildcards):
    return report_layout.REPORT_TABLES[wildcards.table].source


def report_table_category(wildcards):
    return report_layout.REPORT_TABLES[wildcards.table].place.category


def report_table_subcategory(wildcards):
    return report_layout.REPORT_TABLES[wildcards.table].place.subcategory


def report_table_labels(wildcards):
    return report_layout.table_labels(wildcards.table)


def figure_category(wildcards):
    return report_layout.figure_place(wildcards.figure).category


def figure_subcategory(wildcards):
    return report_layout.figure_place(wildcards.figure).subcategory


def figure_labels(ext):
    """The figure's labels in the report's result list; ext tells its PNG from its PDF."""

    def labels(wildcards):
        return report_layout.figure_labels(wildcards.figure, ext)

    return labels
