"""The demo (`ldsrig demo`, lds/cli/demo.py): the whole loop on the simulated rig, no hardware needed.

    simulated capture (arm + camera + random cube scenes)  ->  raw store
    prepare (centre crop, resize)                           ->  training store
    train MONet (control) and MONet+ (LDS) in the CPU-scale regime
    evaluate both on a held-out scene, compare, draw Figure 2
    write report.md (tables + figures) into the output folder

Decomposition takes tens of thousands of images (docs/results/monet_cpu_regime), more than a
few minutes on 2 cores, so by default both models start from small checkpoints that the
committed study trained (``lds/assets/demo/``, made by ``scripts/make_demo_checkpoints.sh``)
and train briefly from there on the newly captured scenes, so every stage of the pipeline runs.
``init=none`` trains from scratch instead.

Every stage is resumable: run it again and finished stages are skipped (the capture finishes
open scenes, training resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from common.config import load_config, save_config
from common.errors import ConfigError


ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo"
# The regime the shipped checkpoints were trained in (experiments/monet_cpu_regime.yaml).
REGIME = ["model.num_slots=5", "optim.lr=1e-3"]


@dataclass
class DemoConfig:
    scenes: int = 5                 # simulated cube scenes (the last one is held out for evaluation)
    views: int = 12                 # viewpoints per scene, planned on the default rig
    capture_width: int = 160        # simulated webcam resolution (Mitsuba renders on the CPU)
    capture_height: int = 120
    capture_spp: int = 144          # samples per pixel of the simulated camera (docs/synthetic.md)
    size: int = 32                  # training images are size x size (64 is the paper's)
    # "shipped": start both models from lds/assets/demo (trained by the committed study);
    # "none": from a fresh initialisation (objects need ~8000 steps: docs/results)
    init: str = "shipped"
    steps: int = 200                # gradient steps per model, on top of the shipped ones
    batch_size: int = 8
    lds_weight: float = 0.5         # Table 1: MONet+
    seed: int = 0
    figure_examples: int = 4

    def __post_init__(self) -> None:
        if self.scenes < 2:
            raise ConfigError("the demo needs at least 2 scenes (one is held out for evaluation)")
        if self.size % 8 or self.size < 32:
            raise ConfigError("size must be a multiple of 8 and at least 32 (MONet's encoder has 4 stride-2 convs)")
        if self.init not in ("shipped", "none"):
            raise ConfigError(f"init must be 'shipped' or 'none', got {self.init!r}")
        if self.init == "shipped" and self.size != 32:
            raise ConfigError("the shipped checkpoints are 32x32 models: use size=32, or init=none")

    def initial_weights(self, lds: bool) -> str:
        if self.init == "none":
            return ""
        path = ASSETS / f"{'monet_lds' if lds else 'monet0'}_cubes32.safetensors"
        if not path.is_file():
            raise ConfigError(f"the shipped checkpoint {path} is missing (run "
                              "scripts/make_demo_checkpoints.sh, or use init=none)")
        return str(path)


def run_demo(out: Path, cfg: DemoConfig, console: Console | None = None) -> Path:
    from capture.session import CaptureConfig, CaptureRig, contact_sheet, open_store_for_capture, run_session
    from datasets.prepare import prepare_store
    from datasets.store import SceneStore
    from datasets.torch_data import ImageDataset
    from lds.evaluation.figures import figure2_for_dataset
    from lds.evaluation import EvalResult, compare, comparison_table, evaluate
    from lds.training.config import load_train_config
    from lds.training.loop import train
    from lds.training.runs import latest_checkpoint_step, load_run

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    timings: dict[str, float] = {}
    raw_path, train_path = out / "raw.zarr", out / f"train{cfg.size}.zarr"

    # 1. Capture on the simulated rig: the same session code the real rig runs.
    started = time.perf_counter()
    capture_cfg = load_config(CaptureConfig, None, [
        "camera.backend=sim", "arm=sim", f"camera.width={cfg.capture_width}",
        f"camera.height={cfg.capture_height}", f"camera.sim_spp={cfg.capture_spp}",
        f"n_views={cfg.views}", f"sim.seed={cfg.seed}", f"plan_seed={cfg.seed}"])
    done = 0
    if raw_path.exists():
        with SceneStore.open(raw_path) as st:
            done = sum(st.scene_state(s) == "complete" for s in st.scene_ids)
    if done < cfg.scenes:
        console.rule(f"[bold]1/4 capture: {cfg.scenes - done} simulated scene(s), {cfg.views} views each")
        rig = CaptureRig(capture_cfg)
        with open_store_for_capture(raw_path, rig.cfg.camera, rig.sim) as st, rig:
            run_session(st, rig, cfg.scenes - done, prompt=None, echo=console.print, resume=True)
    timings["capture"] = time.perf_counter() - started
    with SceneStore.open(raw_path) as st:
        scene_ids = [s for s in st.scene_ids if st.scene_state(s) == "complete"][: cfg.scenes]
        contact_sheet(st, scene_ids[0], out / "capture_scene0.png", columns=6)

    # 2. Derive the training store.
    started = time.perf_counter()
    if not train_path.exists():
        console.rule(f"[bold]2/4 prepare: {cfg.size}x{cfg.size} training store")
        prepare_store(raw_path, train_path, cfg.size)
    timings["prepare"] = time.perf_counter() - started
    train_scenes, test_scenes = scene_ids[:-1], scene_ids[-1:]
    train_set = ImageDataset(train_path, scene_ids=train_scenes)
    test_set = ImageDataset(train_path, scene_ids=test_scenes)

    # 3. Train MONet without and with LDS (same seed, same data order).
    runs = {}
    for name, lds in [("control", False), ("lds", True)]:
        started = time.perf_counter()
        run_dir = out / "runs" / f"monet-{name}"
        tcfg = load_train_config("monet", None, REGIME + [
            f"model.height={cfg.size}", f"model.width={cfg.size}",
            f"optim.batch_size={cfg.batch_size}", f"optim.steps={cfg.steps}", f"seed={cfg.seed}",
            f"lds.enabled={lds}", f"lds.weight={cfg.lds_weight}",
            f"log.every={max(1, min(25, cfg.steps))}", f"log.checkpoint_every={max(1, cfg.steps // 3)}",
        ])
        tcfg.init_from = cfg.initial_weights(lds)
        tcfg.data = str(train_path)
        step = latest_checkpoint_step(run_dir) if (run_dir / "config.yaml").exists() else None
        if step is None or step < cfg.steps:
            console.rule(f"[bold]3/4 train MONet{'+' if lds else '0'} ({'LDS' if lds else 'control'}), "
                         f"{cfg.steps} steps of {cfg.batch_size} images")
            train(tcfg, run_dir, dataset=train_set, resume=step is not None)
        runs[name] = run_dir
        timings[f"train_{name}"] = time.perf_counter() - started

    # 4. Evaluate on the held-out scene, compare, figures.
    started = time.perf_counter()
    console.rule("[bold]4/4 evaluate on the held-out scene")
    results, models = {}, {}
    for name, run_dir in runs.items():
        model, _ = load_run(run_dir)
        models[name] = model
        results[name] = evaluate(model, test_set, batch_size=32, progress=False,
                                 meta={"run": str(run_dir), "data": str(train_path), "scenes": test_scenes})
        results[name].save(run_dir / "eval" / "eval.json")
    console.print(comparison_table(results["control"], results["lds"], "MONet0", "MONet+"))
    figure = figure2_for_dataset([models["control"], models["lds"]], test_set, cfg.figure_examples,
                          out / "figure2.png", labels=["MONet0", "MONet+"])
    timings["evaluate"] = time.perf_counter() - started
    report = _write_report(out, cfg, compare(results["control"], results["lds"]), results, timings,
                           figure, train_scenes, test_scenes)
    return report


def _fmt(name: str, value, signed: bool = False) -> str:
    from lds.evaluation.metrics import metric

    if value is None:
        return "-"
    entry = metric(name)
    text = entry.format(value)
    return ("+" + text) if signed and value * entry.scale >= 0 else text


def _write_report(out: Path, cfg: DemoConfig, rows: dict, results: dict, timings: dict,
                  figure: Path, train_scenes: list[str], test_scenes: list[str]) -> Path:
    if cfg.init == "shipped":
        start = ("Both models started from the checkpoints in `lds/assets/demo/`, made by the "
                 "committed study (docs/results/monet_cpu_regime: seed 0 of MONet0 and MONet+ after "
                 "8000 steps of 8 images on 100 other simulated cube scenes; "
                 "`scripts/make_demo_checkpoints.sh`), and then trained")
    else:
        start = "Both models were trained from a fresh initialisation for"
    control, lds = results["control"], results["lds"]

    def headline(name: str) -> str:
        return f"{_fmt(name, control.mean(name))} (MONet0) and {_fmt(name, lds.mean(name))} (MONet+)"

    lines = [
        "# ldsrig demo: MONet with and without LDS on the simulated rig",
        "",
        f"{cfg.scenes} simulated cube scenes x {cfg.views} views captured at "
        f"{cfg.capture_width}x{cfg.capture_height} by the simulated arm and camera. {start} "
        f"{cfg.steps} steps of {cfg.batch_size} images at {cfg.size}x{cfg.size} on scenes "
        f"{', '.join(train_scenes)}; evaluated on held-out scene {', '.join(test_scenes)} "
        f"({control.meta.get('num_images', '?')} images, none seen in training).",
        "",
        f"Measured on the held-out scene: FG-ARI {headline('fg_ari')} on the attention masks "
        f"MONet segments with ({headline('decoded_fg_ari')} on the decoded masks); images with a "
        f"duplicated component {headline('dup_gt')} %, with the table split between slots "
        f"{headline('dup_bg')} %, with a duplicate found without ground truth "
        f"{headline('dup_nogt')} %. One scene is a small sample: the study's figures (240 test "
        "images, validation curves of three seeds, a public MONet beside ours) are in "
        "docs/results/monet_cpu_regime.",
        "",
        "| metric | MONet0 (control) | MONet+ (LDS) | LDS - control |",
        "| --- | --- | --- | --- |",
    ]
    from lds.evaluation.metrics import metric, segmentation_source_of

    source = segmentation_source_of(results["control"].meta)
    for name, row in rows.items():
        if name == "dSim":
            continue
        label = metric(name, source).label
        lines.append(f"| {label} | {_fmt(name, row['control'])} | {_fmt(name, row['lds'])} | "
                     f"{_fmt(name, row['delta'], signed=True)} |")
    if "dSim" in rows:
        lines += ["", f"dSim = Sim(control) - Sim(LDS) = {_fmt('sim', rows['dSim']['delta'], signed=True)} "
                      "(positive: LDS made the slot latents less alike)."]
    lines += [
        "",
        "## Figure 2 layout (top: MONet0, bottom: MONet+)",
        "",
        f"![figure 2]({figure.name})",
        "",
        "## One captured scene",
        "",
        "![capture](capture_scene0.png)",
        "",
        "## Time per stage (seconds)",
        "",
        "| stage | s |",
        "| --- | --- |",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        "",
        "Files: `raw.zarr` (capture), "
        f"`train{cfg.size}.zarr` (training store), `runs/monet-control`, `runs/monet-lds` (configs, "
        "checkpoints, metrics.jsonl, TensorBoard logs, eval/eval.json).",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["DemoConfig", "run_demo"]
