"""The study report: Snakemake's own ``snakemake --report results/report.html``, arranged by the
questions of the papers the study reruns.

- :mod:`~medtransfer.report.places`: the report's sections (categories) and a result's place.
- :mod:`~medtransfer.report.layout`: where each figure and table goes (category, subcategory,
  labels; a figure's from its row of :mod:`medtransfer.figures.catalog`). Imported by the
  Snakefile and the planner, so it stays light (no pandas, matplotlib or torch).
- :mod:`~medtransfer.report.captions` and :mod:`~medtransfer.report.captions_reuse`: each
  figure's caption, a function of the figure's tidy CSV -> reStructuredText (what it shows, what
  the paper found, what this run found, with numbers), named in its catalog row; a figure without
  one gets :func:`~medtransfer.report.captions.generic_caption`. Their shared formatting:
  :mod:`~medtransfer.report.caption_tools`.
- :mod:`~medtransfer.report.tables`: tables as self-contained sortable HTML pages.
- :mod:`~medtransfer.report.front`: the front page (study, grid, dataset sizes, time, commands,
  config as run).

How a caption reaches the report: Snakemake renders a result's caption file with Jinja2 (which
sees the job's wildcards, outputs and config, but cannot read files) and then docutils. The figure
job writes its caption as ``results/figures/NAME.rst`` beside the PDF and PNG, and the caption
template ``workflow/report/figure.rst`` is one docutils ``include`` of that file, so numbers
computed from the CSV land in the report without a second job reading the same CSV.
"""
