"""The command line: one sub-command per workflow rule (``medtransfer <command> --help``).

Rules pass each job its spec as JSON (built by medtransfer.study), so a job never re-reads the
config. Errors a user can cause end in one line naming the file or key and the fix (exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from medtransfer.errors import MedtransferError

log = logging.getLogger("medtransfer")


def _spec(text: str) -> dict:
    return json.loads(Path(text[1:]).read_text()) if text.startswith("@") else json.loads(text)


def cmd_preprocess(args: argparse.Namespace) -> None:
    from medtransfer.data import build_cache_resumable

    spec = _spec(args.spec)
    # resumable: a killed conversion of a large source continues from its last chunk
    build_cache_resumable(spec["name"], spec["entry"], spec["out"], progress=not args.no_progress)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from medtransfer.devices import configure_threads
    from medtransfer.training.pretrain import pretrain

    configure_threads(args.threads)
    meta = pretrain(_spec(args.spec), device=args.device, progress=not args.no_progress)
    if meta:  # rank 0 of a multi-process job, or the only process
        log.info("source %s/%s (%s): test %s, k-NN %s", meta["source"], meta["arch"], meta["method"],
                 meta.get("test", "-"), meta["knn"])


def cmd_finetune(args: argparse.Namespace) -> None:
    from medtransfer.devices import configure_threads
    from medtransfer.training.finetune import finetune

    configure_threads(args.threads)
    metrics = finetune(_spec(args.spec), device=args.device, progress=not args.no_progress)
    if metrics:  # rank 0 of a multi-process job, or the only process
        log.info("run %s test %s", metrics["run"], metrics["test"])


def cmd_features(args: argparse.Namespace) -> None:
    from medtransfer.devices import configure_threads
    from medtransfer.protocols.features import extract_features

    configure_threads(args.threads)
    summary = extract_features(_spec(args.spec), device=args.device)
    log.info("features %s in %.1f s", summary["splits"], summary["seconds"])


def cmd_probe(args: argparse.Namespace) -> None:
    from medtransfer.devices import configure_threads
    from medtransfer.protocols.probe import probe

    configure_threads(args.threads)
    metrics = probe(_spec(args.spec))
    log.info("%s run %s (n_train %d) test %s", metrics["protocol"], metrics["run"], metrics["n_train"],
             metrics["test"])


def cmd_activations(args: argparse.Namespace) -> None:
    from medtransfer.analysis.activations import extract
    from medtransfer.devices import configure_threads, select_device

    configure_threads(args.threads)
    extract(_spec(args.spec), select_device(args.device))


def cmd_similarity(args: argparse.Namespace) -> None:
    from medtransfer.analysis.init_final import similarity_init_final
    from medtransfer.atomic import atomic_path

    import pandas as pd

    spec = _spec(args.spec)
    frame = pd.concat([similarity_init_final(run["activations"]["init"], run["activations"]["final"],
                                             spec["measures"], run["columns"], spec.get("cca_subsample"))
                       for run in spec["runs"]],
                      ignore_index=True)
    with atomic_path(spec["out"]) as tmp:
        frame.to_csv(tmp, index=False)


def cmd_similarity_pairs(args: argparse.Namespace) -> None:
    from medtransfer.analysis.pairs import similarity_pairs
    from medtransfer.atomic import atomic_path

    spec = _spec(args.spec)
    frame = similarity_pairs(spec)
    with atomic_path(spec["out"]) as tmp:
        frame.to_csv(tmp, index=False)


def cmd_collect(args: argparse.Namespace) -> None:
    from medtransfer.analysis.collect import COLLECTORS
    from medtransfer.atomic import atomic_path

    frame = COLLECTORS[args.kind](args.inputs)
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=False)
    if args.markdown:
        from medtransfer.figures.tables import frame_markdown

        with atomic_path(args.markdown) as tmp:
            Path(tmp).write_text(frame_markdown(frame))
    if args.html:  # the Snakemake report shows HTML inline, not CSV
        with atomic_path(args.html) as tmp:
            frame.to_html(tmp, index=False, border=0)


def cmd_figure(args: argparse.Namespace) -> None:
    from medtransfer.figures.catalog import FIGURES
    from medtransfer.report.captions import write_caption

    figure = FIGURES[args.name]
    # figures of similarity measures draw one measure; their caption describes that one
    measure = args.measure if figure.one_measure else None
    figure.function(args.input, args.out, **({"measure": measure} if measure else {}))
    # the report's caption, from the same CSV (results/figures/NAME.rst beside the PDF by default)
    write_caption(args.name, args.input, args.caption or Path(args.out).with_suffix(".rst"), measure=measure)


def cmd_report_front(args: argparse.Namespace) -> None:
    from medtransfer.report.front import write_front

    write_front(_spec(args.spec))


def cmd_report_table(args: argparse.Namespace) -> None:
    from medtransfer.report.layout import REPORT_TABLES
    from medtransfer.report.tables import write_report_table

    frame = write_report_table(args.name, args.input, args.out, args.caption,
                               title=REPORT_TABLES[args.name].place.title)
    log.info("table %s: %d rows", args.name, len(frame))


def cmd_table(args: argparse.Namespace) -> None:
    if args.comparison:
        from medtransfer.figures.comparison import comparison_table

        comparison_table(args.input, args.out_csv, args.out_md, reference=args.comparison)
        return
    from medtransfer.figures.tables import summary_table

    summary_table(args.input, args.out_csv, args.out_md)


def cmd_fid_stats(args: argparse.Namespace) -> None:
    from medtransfer.analysis.fid import dataset_statistics
    from medtransfer.devices import configure_threads, select_device

    configure_threads(args.threads)
    dataset_statistics(_spec(args.spec), select_device(args.device))


def _write_csv(frame, out: str) -> None:
    from medtransfer.atomic import atomic_path

    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)


def cmd_weight_drift(args: argparse.Namespace) -> None:
    from medtransfer.analysis.weights import weight_drift_table
    from medtransfer.devices import configure_threads

    configure_threads(args.threads)
    spec = _spec(args.spec)
    _write_csv(weight_drift_table(spec), spec["out"])


def cmd_reinit(args: argparse.Namespace) -> None:
    from medtransfer.analysis.reinit import reinit_table
    from medtransfer.devices import configure_threads, select_device

    configure_threads(args.threads)
    spec = _spec(args.spec)
    _write_csv(reinit_table(spec, select_device(args.device)), spec["out"])


def cmd_layer_knn(args: argparse.Namespace) -> None:
    from medtransfer.analysis.layer_knn import layer_knn_table
    from medtransfer.devices import configure_threads, select_device

    configure_threads(args.threads)
    spec = _spec(args.spec)
    _write_csv(layer_knn_table(spec, select_device(args.device)), spec["out"])


def cmd_filters(args: argparse.Namespace) -> None:
    from medtransfer.analysis.filters import filters_table
    from medtransfer.devices import configure_threads

    configure_threads(args.threads)
    spec = _spec(args.spec)
    _write_csv(filters_table(spec), spec["out"])


def cmd_filter_kernels(args: argparse.Namespace) -> None:
    from medtransfer.analysis.filters import filter_kernels_table
    from medtransfer.devices import configure_threads

    configure_threads(args.threads)
    spec = _spec(args.spec)
    _write_csv(filter_kernels_table(spec), spec["out"])
def cmd_fid(args: argparse.Namespace) -> None:
    from medtransfer.analysis.fid import domain_distance

    spec = _spec(args.spec)
    _write_csv(domain_distance(spec), spec["out"])


def cmd_fid_gain(args: argparse.Namespace) -> None:
    from medtransfer.analysis.fid_gain import fid_gain_table

    spec = _spec(args.spec)
    _write_csv(fid_gain_table(spec), spec["out"])


def cmd_prediction_similarity(args: argparse.Namespace) -> None:
    from medtransfer.analysis.predictions import prediction_similarity_table

    spec = _spec(args.spec)
    _write_csv(prediction_similarity_table(spec), spec["out"])


def cmd_representation_gain(args: argparse.Namespace) -> None:
    from medtransfer.analysis.representation_gain import representation_gain

    spec = _spec(args.spec)
    correlations, points = representation_gain(spec)
    _write_csv(points, spec["out_runs"])
    _write_csv(correlations, spec["out"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtransfer", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, function: Callable, help_text: str, job: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(function=function)
        if job:
            sub.add_argument("--spec", required=True, help="job spec as JSON, or @file.json")
            sub.add_argument("--threads", type=int, default=None, help="torch threads (Snakemake's {threads})")
            sub.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default; env MEDTRANSFER_DEVICE)")
            sub.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs stay readable)")
        return sub

    add("preprocess", cmd_preprocess, "convert a dataset to the HDF5 cache results/data/{dataset}.h5")
    add("pretrain", cmd_pretrain, "pretrain a source model on a source dataset")
    add("finetune", cmd_finetune, "initialise and fine-tune one run of the study grid")
    add("features", cmd_features, "frozen pooled features of one init on one dataset (linear / k-NN protocols)")
    add("probe", cmd_probe, "one linear-probe or k-NN run on frozen features")
    add("activations", cmd_activations, "activations of every canonical block, init and final states")
    add("similarity", cmd_similarity, "similarity(init, final) per block for the runs of one group")
    add("similarity-pairs", cmd_similarity_pairs, "block × block similarity between runs, with the seed noise floor")
    add("weight-drift", cmd_weight_drift, "L2 distance of each block's weights from init, for the runs of one group")
    add("reinit", cmd_reinit, "test metrics with each block reset to its init weights (one run or a group)")
    add("layer-knn", cmd_layer_knn, "weighted k-NN test metrics on each block's features, init and final")
    add("filters", cmd_filters, "mean absolute change of the first convolution, for the runs of one group")
    add("filter-kernels", cmd_filter_kernels, "init and final first-layer kernels of the runs of one cell")
    sub = add("collect", cmd_collect, "gather per-run results into one tidy CSV", job=False)
    sub.add_argument("kind", choices=["metrics", "history", "parts", "provenance", "pretrain"],
                     help="parts: concatenate the per-run or per-group CSVs of one table")
    sub.add_argument("--out", required=True)
    sub.add_argument("--html", default=None, help="also write the table as HTML (for the report)")
    sub.add_argument("--markdown", default=None, help="also write the table as Markdown")
    sub.add_argument("inputs", nargs="+")
    sub = add("figure", cmd_figure, "draw one figure (PDF + PNG) from a tidy CSV", job=False)
    sub.add_argument("name")
    sub.add_argument("--input", required=True)
    sub.add_argument("--out", required=True, help="the .pdf; the .png is written beside it")
    sub.add_argument("--measure", default=None, help="similarity measure to draw (similarity figures)")
    sub.add_argument("--caption", default=None, help="the report caption (.rst; default: beside the PDF)")
    sub = add("table", cmd_table, "summary table (mean ± sd over seeds) as CSV and Markdown", job=False)
    sub.add_argument("--input", required=True)
    sub.add_argument("--out-csv", required=True)
    sub.add_argument("--out-md", required=True)
    sub.add_argument("--comparison", default=None, metavar="INIT",
                     help="instead of the summary: every init t-tested against this reference init")
    add("fid-stats", cmd_fid_stats, "feature mean and covariance of one dataset under the FID embedder")
    add("fid", cmd_fid, "FID between each source dataset and each target (domain_distance.csv)")
    add("fid-gain", cmd_fid_gain, "WT gain over RI and the share ST does not explain, beside the FID (fid_gain.csv)")
    add("prediction-similarity", cmd_prediction_similarity,
        "agreement, kappa and score correlations between runs of one group, with the seed noise floor")
    add("representation-gain", cmd_representation_gain,
        "Spearman correlation over runs of each block's similarity(init, final) with the gain over RI")
    sub = add("report-front", cmd_report_front, "the front page of the study report (rst)", job=False)
    sub.add_argument("--spec", required=True, help="job spec as JSON, or @file.json")
    sub = add("report-table", cmd_report_table, "one table of the study report as sortable HTML + caption",
              job=False)
    sub.add_argument("name", help="summary, runs, comparison, pretrain or provenance")
    sub.add_argument("--input", required=True, help="the CSV")
    sub.add_argument("--out", required=True, help="the .html")
    sub.add_argument("--caption", required=True, help="the caption (.rst)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # matplotlib's PDF font subsetting: pages of INFO
    try:
        args.function(args)
    except MedtransferError as error:
        print(f"medtransfer {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - keep the traceback for bugs, name the preemption
        from medtransfer.training.trainer import Preempted

        if isinstance(error, Preempted):
            print(f"medtransfer {args.command}: preempted: {error}", file=sys.stderr)
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
