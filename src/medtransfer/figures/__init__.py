"""Figures and tables: the last stage, drawn from the tidy result CSVs only.

Every figure function has the signature ``f(input_csv, out_pdf, **options) -> Path`` and writes
``out_pdf`` and the PNG beside it (same stem), atomically. The figure catalog
(:mod:`medtransfer.figures.catalog`) lists every figure with the CSV it reads, its function,
its report place and its caption, so the workflow makes every figure a target of its own:

    from medtransfer.figures.catalog import FIGURES

    FIGURES["convergence"].function("results/analysis/history.csv", "results/figures/convergence.pdf")

This package face imports nothing, so the Snakefile can read the catalog without matplotlib.
The summary table is :func:`medtransfer.figures.tables.summary_table`.
"""
