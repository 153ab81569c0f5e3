"""Planning the representation-similarity analyses (workflow/rules/analysis.smk): similarity of
each block before and after fine-tuning, per (dataset, arch, fraction) group, and the block ×
block comparisons of configured init pairs with their seed noise floor."""

from __future__ import annotations

from medtransfer import paths
from medtransfer.analysis.measures import MEASURE_NAMES
from medtransfer.errors import ConfigError
from medtransfer.paths import Run


class AnalysisPlan:
    """The similarity analyses of :class:`medtransfer.study.Study`."""

    def _check_analysis(self) -> None:
        """``analysis.measures`` are known measures; ``analysis.reference`` and ``analysis.pairs``
        name init labels of the study."""
        labels = [spec.label for spec in self.inits]
        for i, measure in enumerate(self.analysis["measures"]):
            if measure not in MEASURE_NAMES:
                raise ConfigError(f"config key analysis.measures[{i}]: unknown measure {measure!r}; "
                                  f"allowed: {', '.join(MEASURE_NAMES)}")
        reference = self.analysis.get("reference")
        if reference is not None and reference not in self._init_by_label:
            raise ConfigError(f"config key analysis.reference: {reference!r} is not an init label of the study; "
                              f"labels: {', '.join(labels)}")
        for i, pair in enumerate(self.analysis["pairs"]):
            for side in ("a", "b"):
                if pair[side] not in self._init_by_label:
                    raise ConfigError(
                        f"config key analysis.pairs[{i}].{side}: {pair[side]!r} is not an init label "
                        f"of the study; labels: {', '.join(labels)}"
                    )

    def similarity_spec(self, dataset: str, arch: str, fraction: str) -> dict:
        """similarity(init, final) per block for every run of one (dataset, arch, fraction) group:
        one job per group rather than per run, because the measure is cheap and a job is not."""
        runs = self.run_groups()[(dataset, arch, paths.format_fraction(fraction))]
        return {
            "runs": [{"columns": self.run_columns(run),
                      "activations": {state: paths.activations(run, state) for state in paths.STATES}}
                     for run in runs],
            "measures": self.analysis["measures"],
            "out": paths.group_analysis("similarity_init_final", dataset, arch, fraction),
            **self._cca_subsample_spec(),
        }

    def pair_groups(self) -> list[tuple[str, str, str]]:
        """(dataset, arch, fraction) groups that have block × block comparisons to make."""
        return sorted(self.run_groups()) if self.analysis["pairs"] else []

    def pairs_spec(self, dataset: str, arch: str, fraction: str) -> dict:
        """The comparisons of one group: every configured pair at every seed, and the noise floor
        of each init in a pair (consecutive seeds of the same init; needs two seeds or more)."""
        fraction = paths.format_fraction(fraction)

        def activations_of(init: str, seed: int, state: str, fold: int | None) -> str:
            return paths.activations(Run(dataset, arch, init, fraction, seed, fold), state)

        def fold_key(fold: int | None) -> dict:  # only with study.folds: other specs stay as they were
            return {} if fold is None else {"fold": fold}

        comparisons, floors = [], set()
        for pair in self.analysis["pairs"]:
            state = pair.get("state", "final")
            name = f"{pair['a']} vs {pair['b']}" + _state_suffix(state)
            for seed, fold in self.replicates:  # both sides on the same fold: the same images
                comparisons.append({"pair": name, "kind": "pair", "init_a": pair["a"], "seed_a": seed,
                                    "a": activations_of(pair["a"], seed, state, fold), "init_b": pair["b"],
                                    "seed_b": seed, "b": activations_of(pair["b"], seed, state, fold),
                                    **_state_key(state), **fold_key(fold)})
            floors |= {(pair["a"], state), (pair["b"], state)}
        for init, state in sorted(floors):
            for fold in self.folds:
                for seed_a, seed_b in zip(self.seeds, self.seeds[1:]):
                    comparisons.append({"pair": f"{init} vs {init}" + _state_suffix(state), "kind": "noise_floor",
                                        "init_a": init, "seed_a": seed_a, "a": activations_of(init, seed_a, state, fold),
                                        "init_b": init, "seed_b": seed_b, "b": activations_of(init, seed_b, state, fold),
                                        **_state_key(state), **fold_key(fold)})
        return {"dataset": dataset, "arch": arch, "fraction": float(fraction), "measures": self.analysis["measures"],
                "comparisons": comparisons, "out": paths.group_analysis("similarity_pairs", dataset, arch, fraction),
                **self._cca_subsample_spec()}

    def _cca_subsample_spec(self) -> dict:
        subsample = self.analysis.get("cca_subsample")
        return {"cca_subsample": {"seed": 0, **subsample}} if subsample else {}


def _state_suffix(state: str) -> str:
    """Pairs of the final states keep their names (and CSV rows) of before ``state`` existed."""
    return "" if state == "final" else f" ({state})"


def _state_key(state: str) -> dict:
    return {} if state == "final" else {"state": state}
