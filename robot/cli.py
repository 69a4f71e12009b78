"""`ldsrig robot ...`: show the rig configuration, plan viewpoints, check and home the arm."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
import yaml

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Rig config YAML (default: the embedded rig).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override, e.g. views.radius=0.4 (repeatable).")]
BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="Arm back end: sim or ur.")]
HostOpt = Annotated[Optional[str], typer.Option("--host", help="UR robot address (default: ur.host in the config).")]


def _rig(config: Optional[Path], overrides: Optional[list[str]]):
    from robot.config import load_rig_config

    return load_rig_config(config, overrides or [])


@app.command("show-config")
def show_config(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Print the resolved rig configuration (defaults, then the file, then --set overrides)."""
    from common.config import to_dict
    from robot.model import arm_model_for

    rig = _rig(config, overrides)
    model = arm_model_for(rig)
    data = to_dict(rig)
    if not rig.home:
        data["home"] = [round(float(x), 6) for x in model.ready]
    typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    typer.echo(f"# model {rig.model}: {model.n} joints, flange {model.flange_link_name}, "
               f"collision shapes: {'yes' if model.has_collision_shapes else 'no (self-collision not checked)'}")


@app.command("plan")
def plan(
    views: Annotated[Optional[int], typer.Option("--views", "-n", help="Viewpoints wanted (default views.n_views).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save the plan (JSON).")] = Path("viewplan.json"),
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the plan to this PNG.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for re-sampling and IK restarts.")] = 0,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Plan look-at viewpoints round the table centre, report what dropped and why, save the plan."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from robot.planning import plan_viewpoints

    rig = _rig(config, overrides)
    n = views if views is not None else rig.views.n_views
    with Progress(TextColumn("planning viewpoints"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("plan", total=n)
        result = plan_viewpoints(rig, n, seed=seed, progress=lambda done, total: bar.update(task, completed=min(done, total)))
    st = result.stats
    typer.echo(f"planned {len(result)} of {n} views ({st['candidates_tried']} candidates tried in {st['rounds']} "
               f"round(s), {st['survived']} reachable: success rate {st['success_rate']:.0%}) in {st['planning_time_s']:.2f} s")
    if result.drops:
        typer.echo("dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(result.drop_counts().items())))
        for d in result.drops:
            typer.echo(f"  candidate {d['candidate']:3d} (azimuth {d['azimuth_deg']:7.1f}, elevation "
                       f"{d['elevation_deg']:5.1f}): {d['reason']}: {d['detail']}")
    typer.echo(f"joint travel: {st['joint_travel_unordered_rad']:.1f} rad unordered -> "
               f"{st['joint_travel_ordered_only_rad']:.1f} rad ordered -> {st['joint_travel_ordered_rad']:.1f} rad "
               f"ordered with consistent IK branches; {st['transits_via_home']} transit(s) routed via home")
    if not st["self_collision_checked"]:
        typer.echo(f"note: {rig.model} has no collision shapes: self-collision was not checked")
    path = result.save(out)
    typer.echo(f"saved {path}")
    if plot is not None:
        from robot.plot import plot_plan

        typer.echo(f"plot {plot_plan(rig, result, plot)}")
    if len(result) < n:
        typer.secho(f"warning: only {len(result)} of {n} views are reachable; widen views.* or move the base",
                    fg=typer.colors.YELLOW, err=True)


def _print_state(arm) -> None:
    q = arm.joint_positions()
    margins = arm.joint_limit_margins(q)
    lo, hi = arm.model.qlim
    T = arm.camera_pose_world(q)
    typer.echo(f"model {arm.rig.model} ({arm.dof} joints), settled: {arm.is_settled()}")
    typer.echo(" joint      q (rad)    lower    upper   margin")
    for j in range(arm.dof):
        flag = "  <- near limit" if margins[j] < 0.1 else ""
        typer.echo(f" {j + 1:5d} {q[j]:11.4f} {lo[j]:8.3f} {hi[j]:8.3f} {margins[j]:8.3f}{flag}")
    p = T[:3, 3]
    typer.echo(f"camera at ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) m, looking along ({T[0, 2]:.2f}, {T[1, 2]:.2f}, {T[2, 2]:.2f})")
    violation = arm.checker.check(q)
    typer.echo("safety: ok" if violation is None else f"safety: VIOLATED: {violation}")


@app.command("check")
def check(backend: BackendOpt = "sim", host: HostOpt = None, config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Connect to the arm, print its state and the margin to every joint limit."""
    from robot.backends import open_arm

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    rig = _rig(config, overrides)
    with open_arm(rig, backend, host) as arm:
        _print_state(arm)


@app.command("home")
def home(backend: BackendOpt = "sim", host: HostOpt = None, config: ConfigOpt = None, overrides: SetOpt = None,
         real_time: Annotated[bool, typer.Option("--real-time", help="Simulated arm: move in real time.")] = False) -> None:
    """Move the arm to its home configuration (path checked first)."""
    from robot.backends import open_arm

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    rig = _rig(config, overrides)
    with open_arm(rig, backend, host, fast=not real_time) as arm:
        move = arm.home()
        typer.echo(f"homed in {move.duration:.2f} s{' (via home)' if move.via_home else ''}; "
                   f"q = {np.array2string(arm.joint_positions(), precision=3)}")
