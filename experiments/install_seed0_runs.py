"""Install the study's seed-0 cube-scene runs from the checkpoints shipped for the demo.

The seed-0 runs of experiments/monet_cpu_regime.yaml were trained once (2026-11, AVX-512 Xeon);
their step-8000 weights are lds/assets/demo/*.safetensors (scripts/make_demo_checkpoints.sh) and
their run directories did not survive that machine. This writes, for control and LDS:

    STUDY/runs/monet__cubes-32__{control,lds}__seed0/
        config.yaml                       the study's TrainConfig for the run (as the runner builds it)
        checkpoints/step_0008000.*        the shipped weights (no optimizer state: not resumable)
        validation.jsonl                  --validation-control / --validation-lds, if given

so that `ldsrig experiment run SPEC --out STUDY --only '*cubes-32*seed0'` evaluates them as finished
trainings and `ldsrig experiment report STUDY` puts seed 0 beside the seeds trained here.

    python experiments/install_seed0_runs.py experiments/monet_cpu_regime.yaml STUDY \\
        --validation-control docs/results/monet_cpu_regime/public_cmp/ours_seed0.jsonl
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file

from common.config import save_config
from common.errors import UserError
from lds.experiments.runner import run_dir_of, train_config_for
from lds.experiments.spec import expand_runs, load_spec
from lds.models import build_model
from lds.training.checkpoint import save_checkpoint
from lds.training.runs import CHECKPOINT_DIR, CONFIG_NAME

ASSETS = Path(__file__).resolve().parents[1] / "lds" / "assets" / "demo"
WEIGHTS = {False: "monet0_cubes32.safetensors", True: "monet_lds_cubes32.safetensors"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("study", type=Path)
    parser.add_argument("--store", default="cubes-32")
    parser.add_argument("--validation-control", type=Path)
    parser.add_argument("--validation-lds", type=Path)
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        runs = [r for r in expand_runs(spec) if r.seed == 0 and r.store == args.store and r.is_main]
        if len(runs) != 2:
            raise UserError(f"{args.spec}: expected a control and an LDS seed-0 run on "
                            f"{args.store!r}, found {[r.run_id for r in runs]}")
        for run in runs:
            run_dir = run_dir_of(args.study, run)
            if (run_dir / CONFIG_NAME).exists():
                raise UserError(f"{run_dir} exists; remove it to reinstall")
            cfg = train_config_for(spec, run)
            model = build_model(cfg.model.name, cfg.model)
            # strict: the shipped weights must be exactly this run's model
            model.load_state_dict(load_file(str(ASSETS / WEIGHTS[run.lds])), strict=True)
            save_checkpoint(run_dir / CHECKPOINT_DIR, spec.train.steps, model,
                            extra={"seed": run.seed, "installed_from": WEIGHTS[run.lds]})
            curve = args.validation_lds if run.lds else args.validation_control
            if curve is not None:
                shutil.copyfile(curve, run_dir / "validation.jsonl")
            save_config(cfg, run_dir / CONFIG_NAME)    # last: the runner's "this is a run"
            print(f"{run_dir} <- {WEIGHTS[run.lds]}")
    except (UserError, OSError, RuntimeError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
