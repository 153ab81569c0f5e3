"""How far each block moved during fine-tuning: similarity(init, final) per canonical block."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtransfer.analysis.activations import read_activations
from medtransfer.analysis.cca_subsample import measure_function


def similarity_init_final(init_h5: str, final_h5: str, measures: list[str], columns: dict,
                          cca_subsample: dict | None = None) -> pd.DataFrame:
    """Tidy rows ``columns + block, block_index, measure, value, n_examples, n_features`` for one run.

    ``cca_subsample`` ({channels, positions, repeats, seed}; medtransfer.analysis.cca_subsample):
    the CCA measures are the mean over random channel/position subsets, with a ``value_sd`` column.

    ``n_examples`` (probe images) and ``n_features`` (pooled features of the block) are kept
    because the biased linear CKA of two unrelated representations grows with features / examples
    (~0.4 at 256 / 400, ~0.8 at 2048 / 400): a reader must see them to read a depth trend.
    """
    init_acts, final_acts = read_activations(init_h5), read_activations(final_h5)
    if list(init_acts) != list(final_acts):
        raise ValueError(f"{init_h5} and {final_h5} have different blocks")
    rows = []
    for measure in measures:
        function = measure_function(measure, cca_subsample)
        for index, (block, before) in enumerate(init_acts.items()):
            value, sd = function(before, final_acts[block])
            rows.append({**columns, "block": block, "block_index": index, "measure": measure,
                         "value": value, "n_examples": len(before),
                         "n_features": int(np.prod(before.shape[1:])),
                         **({"value_sd": sd} if cca_subsample else {})})
    return pd.DataFrame(rows)
