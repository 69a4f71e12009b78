"""The paper's studies as commands: a spec (YAML) -> runs (train, eval, gap) -> a report.

    spec = load_spec("experiments/monet_clevr_mv_small.yaml")
    run_study(spec, "studies/small", slice_=(0, 1))
    build_report("studies/small")          # report.html + report.md + PNGs
"""

from lds.experiments.spec import (ExperimentSpec, RunSpec, SpecError, expand_runs, load_spec,
                                  parse_slice, select_slice)
from lds.experiments.runner import is_finished, load_run_with_slots, run_dir_of, run_study

__all__ = ["ExperimentSpec", "RunSpec", "SpecError", "expand_runs", "load_spec", "parse_slice",
           "select_slice", "is_finished", "load_run_with_slots", "run_dir_of", "run_study"]
