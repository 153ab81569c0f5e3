"""The shared look of every figure: one init palette, rc settings, figure creation and saving.

Colours are a function of the init *label* (not of which other labels happen to be in a figure),
so ``WT_natural`` has the same colour in every figure of every study:

- the init family (``init_name``) fixes the hue: RI grey, WT blue, ST orange, WT-ST green,
  WT-RI purple, Gabor brown (seaborn's colour-blind palette);
- ``k`` of a partial transfer sets the lightness, dark for k=1 and lighter as k grows, so a
  WT-ST-k sweep reads as a ramp inside its family;
- the source (and any further option such as ``slim0.5``) picks one of six shades of the family
  by a stable hash of its name, so two sources of one family differ a little but stay
  recognisably the same family (:func:`init_palette` separates the rare sources whose shades
  coincide).

Figures are built on ``matplotlib.figure.Figure`` (not pyplot), so nothing accumulates in
pyplot's figure registry when a process draws many of them; the backend is Agg regardless.
"""

from __future__ import annotations

import colorsys
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medtransfer.atomic import atomic_path  # noqa: E402

DPI = 200

# Hue of each init family; the order is also the order inits appear in (legends, x axes):
# from "nothing transferred" to "everything transferred".
FAMILY_COLOURS: dict[str, str] = {
    "RI": "#4d4d4d",
    "Gabor": "#ca9161",
    "ST": "#de8f05",
    "WT-RI": "#cc78bc",
    "WT-ST": "#029e73",
    "WT": "#0173b2",
    "CONCAT": "#fbafe4",  # fusions of frozen sources (protocols figure)
    "DVME": "#d55e00",
}
FAMILY_ORDER: tuple[str, ...] = tuple(FAMILY_COLOURS)
# Families the config may grow later get one of these, by a stable hash of their name.
_SPARE_COLOURS = ("#56b4e9", "#949494", "#ece133")
# (hue shift as a fraction of the colour circle, lightness shift) per source variant.
_SOURCE_SHIFTS = ((0.0, 0.0), (0.035, -0.08), (-0.035, 0.08), (-0.03, -0.12), (0.03, 0.11), (0.0, 0.17))

_K_PART = re.compile(r"^k(\d+)$")

METRIC_LABELS: dict[str, str] = {
    "test_auc": "test AUC",
    "test_acc": "test accuracy",
    "test_kappa": "test quadratic-weighted κ",
    "val_auc": "validation AUC",
    "val_acc": "validation accuracy",
    "test_dice": "test Dice",  # foreground classes, mean over images (docs/segmentation.md)
    "test_iou": "test IoU",
    "val_dice": "validation Dice",
    "val_iou": "validation IoU",
    "train_seconds": "training time (s)",
    "best_epoch": "best epoch",
    "epochs": "epochs trained",
}
MEASURE_LABELS: dict[str, str] = {
    "linear_cka": "linear CKA",
    "linear_cka_debiased": "debiased linear CKA",
    "rbf_cka": "RBF CKA",
    "minibatch_cka": "minibatch CKA",
    "cca_mean": "mean CCA",
    "svcca": "SVCCA",
    "pwcca": "PWCCA",
}

# Shared rc settings: seaborn's whitegrid look at "paper" scale, fonts embedded as TrueType
# (type 42) so the PDFs are editable and accepted by journals.
RC: dict = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("paper", font_scale=1.25),
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "legend.frameon": False,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.dpi": DPI,
    "figure.dpi": 100,
}


def metric_label(metric: str) -> str:
    """Axis title of a metrics.csv column."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def measure_label(measure: str) -> str:
    """Display name of a similarity measure."""
    return MEASURE_LABELS.get(measure, measure.replace("_", " "))


def parse_init(label: str) -> tuple[str, str, int | None]:
    """Split an init label into (family, source and options, k).

    Labels are built by ``medtransfer.study``: ``RI``, ``Gabor``, ``WT_<source>``,
    ``ST_<source>``, ``WT-ST_<source>_k<k>``, ``WT-RI_<source>_k<k>[_slim<f>]``.
    """
    family, *rest = str(label).split("_")
    k = None
    others = []
    for part in rest:
        match = _K_PART.match(part)
        if match and k is None:
            k = int(match.group(1))
        else:
            others.append(part)
    return family, "_".join(others), k


def init_sort_key(label: str) -> tuple:
    """Order of inits on axes and in tables: by family (RI … WT), then source, then k."""
    family, source, k = parse_init(label)
    rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    return (rank, family, source, -1 if k is None else k, str(label))


def sort_inits(labels: Iterable[str]) -> list[str]:
    """Unique labels in the canonical init order."""
    return sorted({str(label) for label in labels}, key=init_sort_key)


def _stable_index(text: str, n: int) -> int:
    # zlib.crc32 rather than hash(): Python salts str hashes per process.
    return zlib.crc32(text.encode()) % n


def _source_slot(source: str) -> int:
    """Preferred shade of a source. The +1 gives the demo's 'natural' the family's pure colour
    and keeps the common names (natural, imagenet, radimagenet, cifar10, medical) apart."""
    return (_stable_index(source, len(_SOURCE_SHIFTS)) + 1) % len(_SOURCE_SHIFTS) if source else 0


def _shift(colour: str, hue: float = 0.0, lightness: float = 0.0) -> str:
    h, l, s = colorsys.rgb_to_hls(*mcolors.to_rgb(colour))
    l = float(np.clip(l + lightness, 0.12, 0.85))
    return mcolors.to_hex(colorsys.hls_to_rgb((h + hue) % 1.0, l, s))


def init_colour(label: str, slot: int | None = None) -> str:
    """The colour of one init label (hex). ``slot`` overrides the source's shade (used by
    :func:`init_palette` to separate two sources whose preferred shades coincide)."""
    family, source, k = parse_init(label)
    base = FAMILY_COLOURS.get(family) or _SPARE_COLOURS[_stable_index(family, len(_SPARE_COLOURS))]
    hue, lightness = _SOURCE_SHIFTS[_source_slot(source) if slot is None else slot]
    if k is not None:
        # Dark for k=1, then lighter with each extra block, saturating for deep sweeps.
        lightness += -0.16 + 0.5 * (1.0 - 0.75 ** (k - 1))
    return _shift(base, hue, lightness)


def init_palette(labels: Iterable[str]) -> dict[str, str]:
    """Colour (hex) of every init label.

    A label's colour depends on the label alone, with one exception that keeps a figure
    readable: when two sources of the same family and k would get the same shade, the one
    later in alphabetical order takes the next free shade. Figures therefore call this with
    every init of their CSV (the whole study), not only the ones a panel shows.
    """
    labels = [str(label) for label in labels]
    groups: dict[tuple, set[str]] = {}
    for label in labels:
        family, source, k = parse_init(label)
        groups.setdefault((family, k), set()).add(source)
    slots: dict[tuple, int] = {}
    for (family, k), sources in groups.items():
        taken: set[int] = set()
        for source in sorted(sources):
            slot = _source_slot(source)
            for _ in range(len(_SOURCE_SHIFTS)):  # next free shade; reuse only when all are taken
                if slot not in taken:
                    break
                slot = (slot + 1) % len(_SOURCE_SHIFTS)
            taken.add(slot)
            slots[(family, k, source)] = slot
    palette = {}
    for label in labels:
        family, source, k = parse_init(label)
        palette[label] = init_colour(label, slots[(family, k, source)])
    return palette


# Dash pattern (on, off, ...) in line widths per k of a partial transfer; the full-transfer and
# from-scratch inits stay solid. Colour alone cannot separate a k sweep: its lightness ramp
# is only ~0.1 between neighbours, too little for bright hues.
_K_DASHES: tuple[tuple[float, ...], ...] = ((1, 1), (4, 1.5), (2, 1, 6, 1), (6, 2), (1, 2, 3, 2), (3, 1, 1, 1, 1, 1))


def init_dashes(labels: Iterable[str]) -> dict[str, tuple[float, ...] | str]:
    """Line style of every init label for seaborn's ``dashes=``: "" (solid) without k, else a
    pattern that depends on k alone, so a k has the same dashes in every figure."""
    styles: dict[str, tuple[float, ...] | str] = {}
    for label in labels:
        k = parse_init(label)[2]
        styles[str(label)] = "" if k is None else _K_DASHES[(k - 1) % len(_K_DASHES)]
    return styles


def fraction_palette(fractions: Iterable[float]) -> dict[float, tuple]:
    """Colour of each data fraction on a fixed log scale (1 % light … 100 % dark), so a fraction
    has the same colour in every figure. Sequential, and unlike the init hues."""
    cmap = sns.color_palette("rocket_r", as_cmap=True)
    palette = {}
    for fraction in fractions:
        position = 1.0 + np.log10(np.clip(float(fraction), 0.01, 1.0)) / 2.0  # 0.01 -> 0, 1 -> 1
        palette[float(fraction)] = cmap(0.25 + 0.65 * position)
    return palette


def fraction_label(fraction: float) -> str:
    """'10 % of training data' for 0.1; '5,000 training images' for an absolute size (> 1)."""
    if float(fraction) > 1:
        return f"{int(float(fraction)):,} training images"
    return f"{100 * float(fraction):g} % of training data"


def size_text(fraction: float) -> str:
    """A training size in a few characters: '10 %' for 0.1, 'n=5000' for an absolute size (> 1)."""
    return f"n={int(float(fraction))}" if float(fraction) > 1 else f"{100 * float(fraction):g} %"


@contextmanager
def figure_style() -> Iterator[None]:
    """Apply the shared rc settings while a figure is built and saved."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A figure not registered with pyplot (inches)."""
    return Figure(figsize=(width, height), layout="constrained")


def facet_axes(
    n_rows: int, n_cols: int, panel_width: float = 3.4, panel_height: float = 2.8, **subplot_kw
) -> tuple[Figure, np.ndarray]:
    """A figure with an ``n_rows`` × ``n_cols`` grid of axes (always a 2-D array)."""
    fig = new_figure(panel_width * n_cols, panel_height * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, **subplot_kw)
    return fig, axes


def legend_outside(fig: Figure, handles: Sequence, labels: Sequence[str], title: str | None = None) -> None:
    """One legend for the whole figure, right of the panels, never over data.

    It sits just outside the figure box, so the panels keep their full width and the saved
    file grows to include it (``save_figure`` saves with a tight bounding box).
    """
    if handles:
        fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   bbox_transform=fig.transFigure, alignment="left")  # fmt: skip


def no_data_figure(title: str, message: str) -> Figure:
    """A small figure that says there was nothing to plot, and why."""
    fig = new_figure(5.0, 2.4)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(
        0.5, 0.62, "no data", ha="center", va="center", fontsize=18, weight="bold", transform=ax.transAxes
    )
    ax.text(0.5, 0.3, message, ha="center", va="center", fontsize=9, wrap=True, transform=ax.transAxes)
    ax.set_title(title)
    return fig


def save_no_data(title: str, message: str, out_pdf: str | Path) -> Path:
    """Write the :func:`no_data_figure` as ``out_pdf`` (+ PNG): a target always gets a file."""
    save_figure(no_data_figure(title, message), out_pdf)
    return Path(out_pdf)


def png_path(out_pdf: str | Path) -> Path:
    """The PNG beside a PDF: same folder and stem."""
    return Path(out_pdf).with_suffix(".png")


def save_figure(fig: Figure, out_pdf: str | Path) -> tuple[Path, Path]:
    """Write ``fig`` as ``out_pdf`` and the PNG beside it (dpi 200), each atomically.

    The PNG is renamed into place first and the PDF last, so a PDF on disk (the workflow's
    target) always has its PNG. Returns (pdf path, png path).
    """
    out_pdf = Path(out_pdf)
    if out_pdf.suffix.lower() != ".pdf":
        raise ValueError(f"figure output must end in .pdf, got {out_pdf}")
    out_png = png_path(out_pdf)
    with matplotlib.rc_context(RC):
        with atomic_path(out_pdf, suffix=".pdf") as tmp_pdf:
            with atomic_path(out_png, suffix=".png") as tmp_png:
                fig.savefig(tmp_png, format="png", dpi=DPI, bbox_inches="tight")
                # No creation date, so rerunning a figure on the same data gives the same file.
                fig.savefig(tmp_pdf, format="pdf", bbox_inches="tight", metadata={"CreationDate": None})
    return out_pdf, out_png
