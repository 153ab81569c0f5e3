"""The sections of the study report, and a result's place in them (no imports beyond the
standard library: the figure catalog and the Snakefile read them).

Snakemake's report lists *categories* in the sidebar (sorted by name, hence the numbers) and,
inside each, *subcategories* with their results. Categories follow the questions the papers ask:
which initialisation helps at which data size; how fast fine-tuning converges; how the
representations differ; where the features are reused; how the evaluation protocol and the
source change the answer; then the tables and the provenance.
"""

from __future__ import annotations

from dataclasses import dataclass

PERFORMANCE = "1 Performance by initialisation and data size"
CONVERGENCE = "2 Convergence"
SIMILARITY = "3 Representation similarity"
FEATURE_REUSE = "4 Feature reuse"
PROTOCOLS = "5 Protocols and sources"
TABLES = "6 Tables"
PROVENANCE = "7 Provenance"
OTHER = "8 Other figures"
CATEGORIES: tuple[str, ...] = (PERFORMANCE, CONVERGENCE, SIMILARITY, FEATURE_REUSE, PROTOCOLS, TABLES,
                               PROVENANCE, OTHER)  # fmt: skip


@dataclass(frozen=True)
class Place:
    """A result's place in the report: sidebar category, subcategory, and what it shows (a
    column of the result list)."""

    category: str
    subcategory: str
    title: str
