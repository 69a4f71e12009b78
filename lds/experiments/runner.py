"""Run a study: train, evaluate (and gap-estimate) every run of a spec, resumably.

    study_dir/
        spec.yaml                   the spec as run (store paths absolute)
        runs/<run_id>/              a normal training run directory (config.yaml, checkpoints/ ...)
            eval/eval.json          evaluation on the spec's eval store
            eval/eval_K<k>.json     the test-K ablation: the same weights run with k slots
            eval/eval_obs<n>.json   MulMON with eval.observed_views: n views observed per scene
            gap/gap.json            per-image inference gap (when gap.enabled)
        status.jsonl                one row per finished step (run, stage, seconds)

A run is *finished* when its final checkpoint (step == train.steps) and eval/eval.json exist;
``run_study`` never retrains a finished run. An unfinished run resumes from its latest
checkpoint (the loop's resume is exact), and a run directory left without any checkpoint is
started afresh. Each later stage (eval, test-K, gap) is skipped when its file exists for the
final checkpoint, so rerunning a study, or a study with a stage newly enabled, does only the
missing work.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from common.config import to_dict
from common.errors import UserError
from lds.experiments.spec import ExperimentSpec, RunSpec, expand_runs, select_slice

RUNS_DIR = "runs"
SPEC_FILE = "spec.yaml"
STATUS_FILE = "status.jsonl"


def run_dir_of(study_dir: str | Path, run: RunSpec) -> Path:
    return Path(study_dir) / RUNS_DIR / run.run_id


def train_config_for(spec: ExperimentSpec, run: RunSpec):
    """The TrainConfig of one run: paper defaults < model overrides < train overrides < the run."""
    from lds.training.config import load_train_config

    overrides = list(spec.models[run.model]) + list(spec.train.overrides) + [
        f"optim.steps={spec.train.steps}",
        f"seed={run.seed}",
        f"lds.enabled={str(run.lds).lower()}",
        f"lds.weight={spec.lds.weight}",
        f"lds.sigma={run.sigma if run.sigma is not None else spec.lds.sigma}",
        f"lds.latents={run.latents or spec.lds.latents}",
        f"lds.from_iteration={spec.lds.from_iteration}",
        f"device={spec.device}",
    ]
    if run.num_slots is not None:
        overrides.append(f"model.num_slots={run.num_slots}")
    cfg = load_train_config(run.model, None, overrides)
    if spec.train.init_from:
        cfg.init_from = spec.train.init_path(run)
    cfg.data = spec.stores[run.store].train
    if spec.stores[run.store].val:
        cfg.validate.data = spec.stores[run.store].val
    return cfg


def final_step_done(run_dir: Path, steps: int) -> bool:
    from lds.training.runs import latest_checkpoint_step

    return (run_dir / "config.yaml").is_file() and latest_checkpoint_step(run_dir) == steps


def is_finished(run_dir: Path, steps: int) -> bool:
    """Final checkpoint and eval.json both exist (the resumability contract)."""
    return final_step_done(run_dir, steps) and (run_dir / "eval" / "eval.json").is_file()


def load_run_with_slots(run_dir: Path, num_slots: int | None = None, device: str = "cpu"):
    """``load_run``, optionally rebuilding the model with another K and loading the same weights.

    MONet's parameters do not depend on K (one attention network applied K-1 times, one
    component VAE shared by all slots; the per-slot pixel sigmas are a non-persistent buffer),
    so a strict load succeeds. A model whose weights do depend on K fails the strict load,
    which is reported as a UserError naming the mismatch.
    """
    from lds.models import build_model
    from lds.training.checkpoint import load_checkpoint
    from lds.training.runs import load_run, read_run_config

    if num_slots is None:
        return load_run(run_dir, map_location=device)
    cfg = read_run_config(run_dir, [f"model.num_slots={num_slots}"])
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoints", None, device)
    model = build_model(cfg.model.name, cfg.model)
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{run_dir}: the {cfg.model.name} weights depend on K, so it cannot be "
                        f"evaluated at K={num_slots}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), cfg


@dataclass
class StageLog:
    study_dir: Path
    echo: Callable[[str], None]

    def __call__(self, run: RunSpec, stage: str, seconds: float, **extra) -> None:
        row = {"run": run.run_id, "stage": stage, "seconds": round(seconds, 2),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        with open(self.study_dir / STATUS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.echo(f"{run.run_id}: {stage} done in {seconds:.0f} s")


# Settings a file written before the setting existed was made with.
_META_DEFAULTS = {"amp": "off"}


def _eval_file_current(path: Path, steps: int, **settings) -> bool:
    """The file exists, was made from the final checkpoint and with the same settings."""
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text()).get("meta", {})
    except json.JSONDecodeError:
        return False
    return meta.get("checkpoint_step") == steps and all(
        meta.get(k, _META_DEFAULTS.get(k)) == v for k, v in settings.items())


def execute_run(spec: ExperimentSpec, run: RunSpec, study_dir: Path, progress: bool = True,
                log: StageLog | None = None, threads: int | None = None) -> dict[str, str]:
    """Bring one run up to date: train (or resume), evaluate, test-K, gap. Returns stage -> what
    happened ("done" / "skipped"). ``threads``: torch CPU threads of the stages after training
    (default: the run's own ``threads`` setting, where it has one)."""
    from lds.evaluation import evaluate, make_validator
    from lds.evaluation.metrics import MetricsConfig
    from common.config import load_config
    from lds.data import open_eval_dataset
    from lds.training.loop import train

    log = log or StageLog(study_dir, print)
    run_dir = run_dir_of(study_dir, run)
    steps = spec.train.steps
    happened: dict[str, str] = {}

    if final_step_done(run_dir, steps):
        happened["train"] = "skipped"
    else:
        from lds.training.runs import latest_checkpoint_step

        resume = (run_dir / "config.yaml").is_file() and latest_checkpoint_step(run_dir) is not None
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)          # died before its first checkpoint: nothing to keep
        cfg = train_config_for(spec, run)
        started = time.perf_counter()
        train(cfg, run_dir, resume=resume, progress=progress, validator=make_validator(cfg))
        log(run, "train", time.perf_counter() - started, resumed=resume)
        happened["train"] = "done"

    # Evaluation and the gap run on the run's threads too: a pass that only adds the gap to
    # finished runs must not take every core from the study's runs still training.
    stage_threads = threads or train_config_for(spec, run).threads
    if stage_threads > 0:
        torch.set_num_threads(stage_threads)
    store = spec.stores[run.store].eval
    metrics = load_config(MetricsConfig, None, list(spec.eval.metrics))
    dataset = None
    # (stage, K at test time, views observed): None keeps the run's own setting
    variants: list[tuple[str, int | None, int | None]] = [("eval", None, None)]
    if run.sigma is None and run.latents is None:   # train-K x test-K: main and train-K runs
        variants += [(f"eval_K{k}", int(k), None) for k in spec.ablations.test_k]
    if run.is_main and _is_multi_view(run.model):
        variants += [(f"eval_obs{n}", None, int(n)) for n in spec.eval.observed_views]
    for stage, num_slots, observed_views in variants:
        path = run_dir / "eval" / f"{stage}.json"
        if _eval_file_current(path, steps, max_images=spec.eval.max_images):
            happened[stage] = "skipped"
            continue
        model, cfg = load_run_with_slots(run_dir, num_slots, spec.device)
        if observed_views is not None:
            model.cfg.eval_observed = observed_views     # this evaluation only
        dataset = dataset or open_eval_dataset(Path(store), cfg.model)   # views for MulMON
        started = time.perf_counter()
        meta = {"run": str(run_dir), "run_id": run.run_id, "data": str(Path(store).resolve()),
                "model": cfg.model.name, "num_slots": cfg.model.num_slots,
                "lds": {"enabled": cfg.lds.enabled, "weight": cfg.lds.weight,
                        "sigma": cfg.lds.sigma, "latents": cfg.lds.latents},
                "checkpoint_step": steps, "seed": cfg.seed, "max_images": spec.eval.max_images}
        if observed_views is not None:
            meta["observed_views"] = observed_views
        result = evaluate(model, dataset, batch_size=spec.eval.batch_size, device=spec.device,
                          max_images=spec.eval.max_images, progress=progress, config=metrics,
                          meta=meta)
        result.save(path)
        log(run, stage, time.perf_counter() - started)
        happened[stage] = "done"

    if spec.gap.enabled and run.is_main:
        from lds.evaluation.gap import GAP_DIR, GAP_FILE, gap_for_run

        path = run_dir / GAP_DIR / GAP_FILE
        if _eval_file_current(path, steps, samples=spec.gap.samples, max_images=spec.gap.max_images,
                              amp=spec.gap.amp):
            happened["gap"] = "skipped"
        else:
            started = time.perf_counter()
            gap_for_run(run_dir, store, num_samples=spec.gap.samples,
                        max_images=spec.gap.max_images, chunk=spec.gap.chunk,
                        batch_size=spec.gap.batch_size, device=spec.device, progress=progress,
                        amp=spec.gap.amp,
                        out=path, extra_meta={"checkpoint_step": steps, "run_id": run.run_id})
            log(run, "gap", time.perf_counter() - started)
            happened["gap"] = "done"
    return happened


def _is_multi_view(model: str) -> bool:
    """Whether the model observes some views of a scene and predicts the others (MulMON)."""
    from dataclasses import fields

    from lds.models import MODEL_CONFIGS

    return any(f.name == "eval_observed" for f in fields(MODEL_CONFIGS[model]))


def _with_defaults(saved: dict) -> dict:
    """A saved spec's sections with the defaults of settings added since it was written (e.g.
    lds.latents), so an older study directory compares equal to the same spec read today."""
    from lds.experiments.spec import LDSSection, StorePaths, TrainSection

    out = dict(saved)
    for key, section in (("train", TrainSection), ("lds", LDSSection)):
        if isinstance(saved.get(key), dict):
            out[key] = {**to_dict(section()), **saved[key]}
    if isinstance(saved.get("stores"), dict):
        out["stores"] = {name: {**to_dict(StorePaths()), **paths} if isinstance(paths, dict)
                         else paths for name, paths in saved["stores"].items()}
    return out


def write_spec(spec: ExperimentSpec, study_dir: Path) -> Path:
    """Save the spec as run; a study directory keeps one spec (a different one is an error,
    except for what only adds work: gap and eval settings are not compared, and seeds, stores
    and models may be added, since the runs already there stay what they were)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / SPEC_FILE
    data = to_dict(spec)
    data["stores"] = {k: to_dict(v) for k, v in spec.stores.items()}
    if path.is_file():
        old = _with_defaults(yaml.safe_load(path.read_text()) or {})
        for key in ("train", "lds"):
            if old.get(key) != data.get(key):
                raise UserError(f"{study_dir} already holds a study with a different {key!r} "
                                f"section; use another directory (or restore the spec)")
        # seeds, stores and models may only grow: every entry already there must stay as it was
        for key in ("seeds", "stores", "models"):
            before, now = old.get(key) or {}, data.get(key) or {}
            if key == "seeds":
                before, now = dict.fromkeys(before, True), dict.fromkeys(now, True)
            changed = sorted(name for name in before if now.get(name) != before[name])
            if changed:
                raise UserError(f"{study_dir} already holds a study whose {key} {changed} "
                                f"differ or are dropped here; use another directory (or restore the spec)")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_study(spec: ExperimentSpec, study_dir: str | Path, slice_: tuple[int, int] = (0, 1),
              progress: bool = True, echo: Callable[[str], None] = print,
              threads: int | None = None, only: str | None = None
              ) -> list[tuple[RunSpec, dict[str, str]]]:
    """Execute this slice of the study's runs in order (``only``: a glob on the run ids, for
    example to add the gap to finished runs while others still train); returns what each run did."""
    study_dir = Path(study_dir)
    runs = select_slice(expand_runs(spec), *slice_)
    if only:
        runs = [run for run in runs if fnmatch.fnmatchcase(run.run_id, only)]
        if not runs:
            raise UserError(f"--only {only!r} matches none of the study's runs")
    # Only the stores these runs use must exist: a slice of cube runs needs no CLE-MV store.
    for name in dict.fromkeys(run.store for run in runs):
        paths = spec.stores[name]
        for p in dict.fromkeys(p for p in (paths.train, paths.val, paths.eval) if p):
            if not Path(p).exists():
                raise UserError(f"store {name!r}: {p} does not exist")
    # ... and each run's starting weights, before hours of other runs go by
    for run in runs:
        start = spec.train.init_path(run)
        if start and not Path(start).is_file() and not is_finished(run_dir_of(study_dir, run), spec.train.steps):
            raise UserError(f"{run.run_id}: train.init_from {start} does not exist")
    write_spec(spec, study_dir)
    if threads:
        torch.set_num_threads(threads)
    log = StageLog(study_dir, echo)
    done = []
    for i, run in enumerate(runs, 1):
        echo(f"[{i}/{len(runs)}] {run.run_id}")
        done.append((run, execute_run(spec, run, study_dir, progress, log, threads)))
    return done


def study_spec(study_dir: str | Path) -> ExperimentSpec:
    """The spec saved in a study directory."""
    from lds.experiments.spec import load_spec

    path = Path(study_dir) / SPEC_FILE
    if not path.is_file():
        raise UserError(f"{study_dir} is not an experiment directory (no {SPEC_FILE})")
    return load_spec(path)
