"""How far each block moved during fine-tuning: similarity(init, final) per canonical block."""

from __future__ import annotations

import pandas as pd

from medtransfer.analysis.activations import read_activations
from medtransfer.analysis.similarity import MEASURES


def similarity_init_final(init_h5: str, final_h5: str, measures: list[str], columns: dict) -> pd.DataFrame:
    """Tidy rows ``columns + block, block_index, measure, value`` for one run."""
    init_acts, final_acts = read_activations(init_h5), read_activations(final_h5)
    if list(init_acts) != list(final_acts):
        raise ValueError(f"{init_h5} and {final_h5} have different blocks")
    rows = []
    for measure in measures:
        function = MEASURES.get(measure, key="analysis.measures")
        for index, (block, before) in enumerate(init_acts.items()):
            rows.append({**columns, "block": block, "block_index": index, "measure": measure,
                         "value": function(before, final_acts[block])})
    return pd.DataFrame(rows)
