"""Every path of the stage contracts, spelled once (docs/DESIGN.md, "Contracts between stages").

The Snakemake rules import these helpers, so a path is never written twice. All paths are
relative to the results root (``results/`` by default) and returned as strings, because that
is what Snakemake's ``input``/``output`` expect; the ``{wildcard}`` patterns for the rules come
from the same functions called with wildcard names.
"""

from __future__ import annotations

from dataclasses import dataclass

RESULTS = "results"
STATES = ("init", "final")
RUN_FILES = ("init.pt", "final.pt", "history.csv", "metrics.json", "predictions.h5")


def format_fraction(fraction: float | str) -> str:
    """Canonical spelling of a training size (``study.fractions``): 1.0 -> '1', 0.1 -> '0.1',
    5000 -> '5000' (a value > 1 is a count of images). A path token ('f0.1', 'n5000', see
    :func:`size_token`) gives its value; any other string (a wildcard pattern) is kept."""
    if isinstance(fraction, str):
        if fraction[:1] in ("f", "n") and _is_number(fraction[1:]):
            return fraction[1:]
        return fraction
    return f"{float(fraction):g}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def size_token(fraction: float | str) -> str:
    """A training size's path component: 'f{fraction}' for a fraction (0.1 -> 'f0.1', 1.0 -> 'f1'),
    'n{count}' for an absolute number of training images (5000 -> 'n5000'); a Snakemake pattern
    ('{fraction}') is kept, its wildcard then matching the whole token."""
    value = format_fraction(fraction)
    if not _is_number(value):
        return value
    return f"n{int(float(value))}" if float(value) > 1 else f"f{value}"


def seed_token(seed: int | str, fold: int | str | None = None) -> str:
    """The seed's path component without its 's': '0', or '0_fold2' for fold 2 of a
    cross-validated run (``study.folds``)."""
    return f"{seed}" if fold is None else f"{seed}_fold{fold}"


@dataclass(frozen=True)
class Run:
    """One cell of the study grid. ``init`` is the init label (see ``medtransfer.study``);
    ``fraction`` the training size as :func:`format_fraction` spells it (a fraction, or a count
    > 1); ``fold`` the cross-validation fold (None: a study without ``study.folds``)."""

    dataset: str
    arch: str
    init: str
    fraction: str
    seed: int | str
    fold: int | str | None = None

    @property
    def id(self) -> str:
        """'{dataset}/{arch}/{init}/f{fraction}/s{seed}' (``n{count}`` for an absolute training
        size, ``s{seed}_fold{fold}`` for a fold), the run's name in every stage."""
        return f"{self.dataset}/{self.arch}/{self.init}/{size_token(self.fraction)}/s{seed_token(self.seed, self.fold)}"

    @classmethod
    def pattern(cls) -> "Run":
        """The run with Snakemake wildcards in place of values: ``{fraction}`` matches the whole
        size token ('f0.1', 'n5000'), ``{seed}`` the seed token ('0', '0_fold2')."""
        return cls("{dataset}", "{arch}", "{init}", "{fraction}", "{seed}")

    @classmethod
    def from_wildcards(cls, dataset: str, arch: str, init: str, fraction: str, seed: str) -> "Run":
        """The run whose :meth:`pattern` path the wildcard values match (the inverse of ``id``)."""
        seed_text, _, fold = str(seed).partition("_fold")
        return cls(dataset, arch, init, format_fraction(fraction), int(seed_text), int(fold) if fold else None)


def dataset_cache(dataset: str, root: str = RESULTS) -> str:
    return f"{root}/data/{dataset}.h5"


def pretrain_dir(source: str, arch: str, root: str = RESULTS) -> str:
    # The first design named results/pretrain/{source}/; a source is pretrained once per
    # architecture, so the architecture is a level below it (docs/DESIGN.md, "Paths").
    return f"{root}/pretrain/{source}/{arch}"


def pretrain_model(source: str, arch: str, root: str = RESULTS) -> str:
    return f"{pretrain_dir(source, arch, root)}/model.pt"


def pretrain_meta(source: str, arch: str, root: str = RESULTS) -> str:
    return f"{pretrain_dir(source, arch, root)}/meta.json"


def run_dir(run: Run, root: str = RESULTS) -> str:
    return f"{root}/runs/{run.id}"


def run_file(run: Run, name: str, root: str = RESULTS) -> str:
    if name not in RUN_FILES + ("init.json",):
        raise ValueError(f"{name!r} is not a run file; run files: {RUN_FILES + ('init.json',)}")
    return f"{run_dir(run, root)}/{name}"


def features(dataset: str, arch: str, init: str, key: str, root: str = RESULTS) -> str:
    """Frozen pooled features of one init on one dataset (``key``: 'shared' or 's{seed}')."""
    return f"{root}/features/{dataset}/{arch}/{init}/{key}.h5"


PROTOCOL_RUN_FILES = ("metrics.json", "predictions.h5")
#: the files of a run of a protocol that trains the network (lpft): those of a fine-tuning run
TRAINED_PROTOCOL_RUN_FILES = RUN_FILES + ("init.json",)


def protocol_run_dir(protocol: str, run: Run, root: str = RESULTS) -> str:
    """A run of any protocol but fine-tuning (fine-tuning runs keep :func:`run_dir`)."""
    return f"{root}/protocols/{protocol}/{run.id}"


def protocol_run_file(protocol: str, run: Run, name: str, root: str = RESULTS) -> str:
    """A frozen-feature protocol's run writes ``PROTOCOL_RUN_FILES``; lpft, which trains the
    network, those of a fine-tuning run (``TRAINED_PROTOCOL_RUN_FILES``)."""
    allowed = TRAINED_PROTOCOL_RUN_FILES if protocol == "lpft" else PROTOCOL_RUN_FILES
    if name not in allowed:
        raise ValueError(f"{name!r} is not a {protocol} run file; those are {allowed}")
    return f"{protocol_run_dir(protocol, run, root)}/{name}"


def activations(run: Run, state: str, root: str = RESULTS) -> str:
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    return f"{root}/activations/{run.id}/{state}.h5"


def analysis_table(kind: str, root: str = RESULTS) -> str:
    """The tidy CSV of one kind of measurement over the whole study (metrics, history, ...)."""
    return f"{root}/analysis/{kind}.csv"


def group_analysis(kind: str, dataset: str, arch: str, fraction: float | str, root: str = RESULTS) -> str:
    """The part of ``analysis_table(kind)`` of one (dataset, arch, fraction) group."""
    return f"{root}/analysis/{kind}/groups/{dataset}/{arch}/{size_token(fraction)}.csv"


def table(name: str, ext: str = "csv", root: str = RESULTS) -> str:
    return f"{root}/tables/{name}.{ext}"


def figure(name: str, ext: str = "pdf", root: str = RESULTS) -> str:
    return f"{root}/figures/{name}.{ext}"


def log(rule: str, name: str, root: str = RESULTS) -> str:
    return f"{root}/logs/{rule}/{name}.log"


def run_analysis(kind: str, run: Run, root: str = RESULTS) -> str:
    """The part of ``analysis_table(kind)`` of one run (per-run analyses: reinit, layer_knn)."""
    return f"{root}/analysis/{kind}/runs/{run.id}.csv"


def fid_stats(embedder: str, dataset: str, root: str = RESULTS) -> str:
    """Feature statistics (mean, covariance, n) of one dataset under one FID embedder."""
    return f"{root}/fid_stats/{embedder}/{dataset}.h5"


def report_front(root: str = RESULTS) -> str:
    """The front page of the study report (reStructuredText), included by workflow/report/workflow.rst."""
    return f"{root}/report/front.rst"


def report_table(name: str, ext: str = "html", root: str = RESULTS) -> str:
    """A table of the study report: the sortable HTML page (``html``) or its caption (``rst``)."""
    return f"{root}/report/tables/{name}.{ext}"
