"""How far each block moved during fine-tuning: similarity(init, final) per canonical block."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtransfer.analysis.activations import read_activations
from medtransfer.analysis.similarity import MEASURES


def similarity_init_final(init_h5: str, final_h5: str, measures: list[str], columns: dict) -> pd.DataFrame:
    """Tidy rows ``columns + block, block_index, measure, value, n_examples, n_features`` for one run.

    ``n_examples`` (probe images) and ``n_features`` (pooled features of the block) are kept
    because the biased linear CKA of two unrelated representations grows with features / examples
    (~0.4 at 256 / 400, ~0.8 at 2048 / 400): a reader must see them to read a depth trend.
    """
    init_acts, final_acts = read_activations(init_h5), read_activations(final_h5)
    if list(init_acts) != list(final_acts):
        raise ValueError(f"{init_h5} and {final_h5} have different blocks")
    rows = []
    for measure in measures:
        function = MEASURES.get(measure, key="analysis.measures")
        for index, (block, before) in enumerate(init_acts.items()):
            rows.append({**columns, "block": block, "block_index": index, "measure": measure,
                         "value": function(before, final_acts[block]), "n_examples": len(before),
                         "n_features": int(np.prod(before.shape[1:]))})
    return pd.DataFrame(rows)
