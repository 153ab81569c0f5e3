"""Block × block similarity between two runs, and the seed noise floor it is read against.

A *pair* compares the final (or init) activations of two inits of the same dataset,
architecture, fraction and seed (e.g. WT vs RI after fine-tuning). Its *noise floor* compares
two seeds of the same init: two runs that differ only by chance. A pair's similarity means
something only where it falls below that floor. The comparisons to make are listed by
``medtransfer.study.Study.pairs_spec``; this module only measures them.
"""

from __future__ import annotations

import pandas as pd

from medtransfer.analysis.activations import read_activations
from medtransfer.analysis.cca_subsample import measure_function


def similarity_pairs(spec: dict) -> pd.DataFrame:
    """Tidy rows (PAIRS columns of the figures stage) for every comparison of ``spec``.

    ``spec``: {"dataset", "arch", "fraction", "measures": [...], "comparisons": [{"pair", "kind",
    "init_a", "seed_a", "a": activations.h5, "init_b", "seed_b", "b": activations.h5}, ...]}.
    """
    rows = []
    cache: dict[str, dict] = {}

    def load(path: str) -> dict:
        if path not in cache:
            cache[path] = read_activations(path)
        return cache[path]

    subsample = spec.get("cca_subsample")
    for comparison in spec["comparisons"]:
        acts_a, acts_b = load(comparison["a"]), load(comparison["b"])
        for measure in spec["measures"]:
            function = measure_function(measure, subsample)
            for index_a, (block_a, x) in enumerate(acts_a.items()):
                for index_b, (block_b, y) in enumerate(acts_b.items()):
                    value, sd = function(x, y)
                    rows.append({
                        "dataset": spec["dataset"], "arch": spec["arch"], "fraction": spec["fraction"],
                        "measure": measure, "pair": comparison["pair"], "kind": comparison["kind"],
                        "init_a": comparison["init_a"], "seed_a": comparison["seed_a"],
                        "init_b": comparison["init_b"], "seed_b": comparison["seed_b"],
                        "block_a": block_a, "block_a_index": index_a,
                        "block_b": block_b, "block_b_index": index_b,
                        "value": value,
                        # a `state` of init compares the runs before fine-tuning (source vs source)
                        "state": comparison.get("state", "final"),
                        # a cross-validated study's fold (both sides ran on it)
                        **({"fold": comparison["fold"]} if "fold" in comparison else {}),
                        **({"value_sd": sd} if subsample else {}),
                    })
    return pd.DataFrame(rows)
