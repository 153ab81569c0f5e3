"""The front page of the study report: what the study is, its grid, the datasets and their
sizes, how long it took, where each question's figures are, the commands that regenerate any
figure or the report, and the config as it ran.

It is written as reStructuredText (``results/report/front.rst``) by the job ``report_front``
from its spec (:meth:`medtransfer.study.Study.front_spec`), the collected metrics and
provenance and the datasets' HDF5 caches; ``workflow/report/workflow.rst`` includes it, so the
page is Snakemake's own front page.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from medtransfer.atomic import write_text
from medtransfer.data.cache import read_info
from medtransfer.report import rst
from medtransfer.report.caption_tools import pct
from medtransfer.report.tables import read_table


def duration(seconds: float) -> str:
    """'1 h 02 min', '5 min 12 s', '42 s'."""
    seconds = int(round(float(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def timing(provenance: pd.DataFrame) -> dict:
    """From provenance.csv (``finished_utc``, ``wall_seconds`` per job): the earliest start
    (finish − wall time), the last finish, the wall time between them and the job time summed."""
    if provenance.empty or "finished_utc" not in provenance.columns:
        return {}
    finished = pd.to_datetime(provenance["finished_utc"], utc=True, errors="coerce")
    wall = pd.to_numeric(provenance.get("wall_seconds"), errors="coerce").fillna(0.0)
    known = finished.notna()
    if not known.any():
        return {}
    started = finished[known] - pd.to_timedelta(wall[known], unit="s")
    first, last = started.min(), finished[known].max()
    return {"first_start": first, "last_finish": last, "span_seconds": (last - first).total_seconds(),
            "job_seconds": float(wall[known].sum()), "jobs": int(known.sum())}  # fmt: skip


def _list_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [list(header), *rows]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return "\n".join(lines) + "\n"


def _when(stamp: pd.Timestamp) -> str:
    return stamp.to_pydatetime().astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _command(configfiles: Sequence[str], *args: str) -> str:
    """A snakemake command line naming the study's config files (the default config.yaml needs none)."""
    parts = ["snakemake"]
    extra = [f for f in configfiles if Path(f).name != "config.yaml" or Path(f).parent != Path(".")]
    if extra:
        parts += ["--configfile", *extra]
    return rst.visible_controls(shlex.join(parts + list(args)))  # one line inside its code block


def front_rst(spec: dict) -> str:
    """The front page (rst) of the study described by ``spec`` (see medtransfer.study.Study.front_spec)."""
    grid, counts = spec["grid"], spec["counts"]
    metrics = read_table(spec["metrics"])
    provenance = read_table(spec["provenance"])
    title = f"Study: {rst.text(spec['name'])}"
    out = [title, "=" * len(title), ""]

    def many(n: int, what: str) -> str:
        return f"**{n}** {what}" + ("s" if n != 1 else "")

    jobs = [many(counts["finetune"], "fine-tuning run")]
    if counts["probe"]:
        jobs.append(many(counts["probe"], "linear-probe / k-NN run") + " on frozen features")
    if counts.get("lpft"):
        jobs.append(many(counts["lpft"], "LP-FT run") + " (head on the frozen backbone, then fine-tuned)")
    if counts["pretrain"]:
        jobs.append(many(counts["pretrain"], "source pretraining"))
    out += [f"A transfer-learning study run with medtransfer: {', '.join(jobs)}. Every number in this "
            "report is computed from the run files under ``results/``; each figure's description (the *i* "
            "button of its row in the section) says what the figure shows, what the paper it follows found "
            "and what this run found.", ""]  # fmt: skip

    out += ["Grid", "----", ""]
    out += [f"- targets: {', '.join(rst.literal(t) for t in grid['targets'])}",
            f"- architectures: {', '.join(rst.literal(a) for a in grid['architectures'])}",
            f"- initialisations: {', '.join(rst.literal(i) for i in grid['inits'])}",
            f"- fractions of the training data: {', '.join(pct(f) for f in grid['fractions'])}",
            f"- seeds: {', '.join(str(s) for s in grid['seeds'])}",
            *([f"- cross-validation folds: {', '.join(str(f) for f in grid['folds'])}"] if grid.get("folds") else []),
            f"- protocols: {', '.join(grid['protocols'])}", ""]  # fmt: skip

    out += ["Datasets", "--------", ""]
    used = {}
    if not metrics.empty and {"dataset", "fraction", "num_train"} <= set(metrics.columns):
        per = metrics.groupby(["dataset", "fraction"])["num_train"].max()
        for (dataset, fraction), n in per.items():
            used.setdefault(dataset, []).append(f"{int(n)} ({pct(fraction)})")
    rows = []
    for entry in spec["datasets"]:
        info = read_info(entry["cache"])
        sizes = info.split_sizes
        rows.append([rst.literal(entry["name"]), entry["role"], info.task, info.num_classes, sizes["train"], sizes["val"],
                     sizes["test"], f"{info.image_size} px × {info.channels} ch",
                     ", ".join(used.get(entry["name"], [])) or "–"])  # fmt: skip
    out.append(_list_table(["dataset", "role", "task", "classes", "train", "val", "test", "images",
                            "training images used (fraction)"], rows))  # fmt: skip
    out.append("Sizes are those of the HDF5 caches (``results/data/``); fractions are nested, stratified "
               "subsets of the train split.\n")  # fmt: skip

    out += ["How long it took", "----------------", ""]
    times = timing(provenance)
    if times:
        out.append(f"The first of the {times['jobs']} recorded jobs (runs and pretrainings) started "
                   f"{_when(times['first_start'])}, the last finished {_when(times['last_finish'])}: "
                   f"**{duration(times['span_seconds'])}** of wall time between them, "
                   f"{duration(times['job_seconds'])} of job time summed (each job's own wall time, "
                   "see the provenance table). The report's *Statistics* page has the runtime of every "
                   "Snakemake rule.\n")  # fmt: skip
    else:
        out.append("No job recorded its wall time.\n")

    out += ["Sections", "--------", ""]
    out += [f"- `{category}`_" for category in spec["categories"]] + [""]

    out += ["Regenerate", "----------", ""]
    figures = ", ".join(rst.literal(name) for name in spec["figures"]) or "none"
    out += ["Any one figure, without rerunning anything upstream that exists (``NAME`` one of "
            f"{figures}):", "", ".. code-block:: bash", "",
            f"   {_command(spec['configfiles'], '--cores', '1', 'results/figures/NAME.pdf')}", "",
            "The whole study, then this report:", "", ".. code-block:: bash", "",
            f"   {_command(spec['configfiles'], '--cores', '2')}",
            f"   {_command(spec['configfiles'], '--report', 'results/report.html')}", ""]  # fmt: skip

    names = ", ".join(rst.literal(f) for f in spec["configfiles"]) or "none"
    out += ["Config as run", "-------------", "",
            f"Config files: {names}; below, the config the workflow ran with (those files merged with any "
            "``--config`` overrides), before the defaults of ``medtransfer.study`` fill the keys it leaves out.",
            "", ".. code-block:: yaml", ""]  # fmt: skip
    dumped = yaml.safe_dump(spec["config"], sort_keys=False, default_flow_style=None, width=100)
    out += [f"   {line}" if line else "" for line in dumped.splitlines()] + [""]
    return "\n".join(out)


def write_front(spec: dict) -> str:
    """Write the front page to ``spec['out']`` atomically; return its text."""
    text = front_rst(spec)
    write_text(spec["out"], text)
    return text
