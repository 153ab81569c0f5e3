"""Planning the representations stage (workflow/rules/representations.smk): the activations of
every canonical block of a run, before and after fine-tuning, on the probe set."""

from __future__ import annotations

from medtransfer import paths
from medtransfer.columns import run_columns
from medtransfer.paths import Run


class RepresentationsPlan:
    """The representations stage of :class:`medtransfer.study.Study`."""

    def activation_spec(self, run: Run) -> dict:
        """What the activations job needs: the run's model files, the probe set and pooling."""
        run_spec = self.run_spec(run)
        keys = ("probe_size", "probe_split", "probe_seed", "pool", "dtype")
        return {
            "run": run.id,
            "run_dir": paths.run_dir(run),
            "cache": run_spec["cache"],
            "arch": run.arch,
            "arch_options": run_spec["arch_options"],
            "init": run_spec["init"],
            "columns": run_columns(run_spec),
            "out": {state: paths.activations(run, state) for state in paths.STATES},
            "training": {k: run_spec["training"][k] for k in ("normalize", "image_size", "resize_mode",
                                                              "eval_batch_size", "max_memory_mb", "num_workers")},
            **{k: self.analysis[k] for k in keys},
            **({"preprocess": run_spec["preprocess"]} if "preprocess" in run_spec else {}),
        }
