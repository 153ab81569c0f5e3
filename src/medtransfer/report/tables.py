"""Tables of the report as self-contained, sortable HTML pages, and their captions.

Snakemake's report shows an HTML result in a frame and offers a CSV only as a download, so each
table is one HTML file: the table, a filter box, click-to-sort headers and the CSV itself as a
download link, with its script and style inline (the page makes no request of its own). Numbers
are shown rounded and sorted by their full value.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from medtransfer.atomic import write_text
from medtransfer.errors import DataError

# What each table is, for its caption; the counts are added from the table itself.
TABLE_TEXTS: dict[str, str] = {
    "summary": """Mean ± sample sd over seeds of test AUC, test accuracy, quadratic-weighted kappa
    (ordinal tasks only), validation AUC and training time, one row per dataset × architecture ×
    protocol × initialisation × fraction of training data, with the number of seeds; the table form
    of the results of Raghu et al. 2019 (Table 4) and Matsoukas et al. 2022.""",
    "runs": """Every run of the study, one row each (fine-tuning, linear probe and k-NN runs): its
    cell of the grid (dataset, architecture, protocol, initialisation, fraction, seed), its test
    and validation metrics, the number of training images, the training time, the precision that
    ran, the config hash and the git commit. These are the numbers every figure and summary is
    computed from (``results/analysis/metrics.csv``).""",
    "comparison": """Each initialisation against the reference init of ``analysis.reference`` (e.g.
    the supervised source), per target, protocol and fraction of training labels: mean ± sample sd
    of the test AUC over seeds, the difference of the means, and the p-value of a two-sided
    two-sample (Student's) t-test of the seeds, as Hosseinzadeh Taher et al. 2021 rank their
    sources; no p-value where neither side varies over seeds.""",
    "pretrain": """Every source model the workflow pretrained: weighted k-NN accuracy (k = 200,
    T = 0.07, Wu et al. 2018 as in DINO) of its pooled features on the test split with the train
    split as memory, against the same network at its random init (and at its starting weights
    for continual pretraining); the spread of the embedding (0 = collapsed) and training time.""",
    "provenance": """Where every number of this report comes from: one row per run and per
    pretrained source model, from the ``provenance`` record of its ``metrics.json`` (``meta.json``).
    ``config_hash`` hashes the job's full spec (data, architecture, initialisation, training), so
    two rows with the same hash and seed ran the same computation; ``git_commit`` is the code
    version (``+dirty``: with uncommitted changes), ``version_*`` the Python and package versions,
    ``host``, ``device`` and ``precision`` where and how it trained, and ``wall_seconds`` the wall
    time of the job that finished it.""",
}

_STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 12px; color: #1e293b; }
h1 { font-size: 16px; margin: 0 0 6px; }
.bar { display: flex; gap: 12px; align-items: center; margin-bottom: 8px; }
input { font: inherit; padding: 2px 6px; width: 18em; }
table { border-collapse: collapse; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e2e8f0; white-space: nowrap; }
th { position: sticky; top: 0; background: #f1f5f9; cursor: pointer; text-align: left; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:hover td { background: #f8fafc; }
"""

# Sorting: by the cell's data-v (full precision) when every non-empty value of the column is a
# number, else as text; empty cells last in either direction.
_SCRIPT = """
(function () {
  var table = document.querySelector("table"), body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells, count = document.getElementById("count");
  function value(row, i) { var c = row.cells[i]; return c.hasAttribute("data-v") ? c.getAttribute("data-v") : c.textContent; }
  function show() {
    var shown = 0;
    for (var r of body.rows) { if (!r.hidden) shown++; }
    count.textContent = shown + " of " + body.rows.length + " rows";
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () {
      var rows = Array.prototype.slice.call(body.rows);
      var numeric = rows.every(function (r) { var v = value(r, i); return v === "" || !isNaN(Number(v)); });
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      rows.sort(function (a, b) {
        var x = value(a, i), y = value(b, i);
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        return dir * (numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true}));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.getElementById("filter").addEventListener("input", function (event) {
    var words = event.target.value.toLowerCase().split(/\\s+/).filter(Boolean);
    for (var r of body.rows) {
      var text = r.textContent.toLowerCase();
      r.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
    }
    show();
  });
  show();
})();
"""


def _cell(value: object) -> tuple[str, str | None]:
    """(text shown, full value for sorting or None for text)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", ""
    if isinstance(value, bool):
        return str(value), None
    if isinstance(value, int):
        return str(value), str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value)), repr(value)
        shown = f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return shown, repr(value)
    return str(value), None


def sortable_table_html(frame: pd.DataFrame, title: str, csv_name: str = "table.csv") -> str:
    """One self-contained HTML page holding ``frame`` as a sortable, filterable table and the
    frame as CSV behind a download link. One ``<tr>`` per row of ``frame`` in ``<tbody>``."""
    head = "".join(f"<th scope=col>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False, name=None):
        cells = []
        for value in record:
            shown, full = _cell(value.item() if hasattr(value, "item") else value)
            if full is None:
                cells.append(f"<td>{html.escape(shown)}</td>")
            else:
                cells.append(f'<td class=num data-v="{html.escape(full)}">{html.escape(shown)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    csv = base64.b64encode(frame.to_csv(index=False).encode()).decode()
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        '<div class=bar><input id=filter type=search placeholder="filter rows (words, all must match)">'
        f'<span id=count></span><a download="{html.escape(csv_name)}" href="data:text/csv;base64,{csv}">'
        f"download CSV</a><span>click a column to sort</span></div>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def read_table(csv_path: str | Path) -> pd.DataFrame:
    """A result CSV as it is (text stays text, empty cells empty)."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"{path}: table not found; run the stage that writes it first")
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def table_caption(name: str, frame: pd.DataFrame, csv_path: str | Path) -> str:
    """The rst caption of table ``name``: what it holds and how many rows it has."""
    text = " ".join(TABLE_TEXTS.get(name, f"The table ``{name}``.").split())
    return (f"{text}\n\n{len(frame)} rows, {len(frame.columns)} columns, from ``{csv_path}``. Click a column "
            "to sort by it, type in the box to filter the rows; the page also holds the CSV.\n")  # fmt: skip


def write_report_table(name: str, csv_path: str | Path, out_html: str | Path, out_caption: str | Path,
                       title: str) -> pd.DataFrame:  # fmt: skip
    """Write table ``name`` (read from ``csv_path``) as a sortable HTML page and its caption."""
    frame = read_table(csv_path)
    write_text(out_html, sortable_table_html(frame, title, csv_name=Path(csv_path).name))
    write_text(out_caption, table_caption(name, frame, csv_path))
    return frame
