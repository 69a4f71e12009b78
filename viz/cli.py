"""`ldsrig data view STORE` and the live view options of `ldsrig capture scene|session`
(``--view``, ``--rrd PATH``).  Argument handling only; the work is in viz/rerun_view.py."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

VIEW_HELP = ("show the capture live in Rerun: the arm, the camera frustum, the planned viewpoints "
             "and every committed frame (spawns the viewer; without a display writes STORE.rrd)")
RRD_HELP = "write the Rerun recording to this .rrd file (open it later with `rerun FILE`)"


def live_view(view: bool, rrd: Optional[Path], store: Path, name: str):
    """The capture observer for ``--view`` / ``--rrd`` (None when neither was given). Checks that
    rerun-sdk is installed before anything moves."""
    from viz.rerun_view import RerunCaptureView, choose_target, default_rrd_path

    target = choose_target(view, rrd, default_rrd_path(store))
    if target is None:
        return None
    observer = RerunCaptureView(target, name)  # raises the install hint without rerun-sdk
    note = " (no display: open it with `rerun FILE`)" if not target.spawn and rrd is None else ""
    typer.echo(f"live view: {target.describe()}{note}")
    return observer


def view_command(
    store: Path = typer.Argument(..., help="Scene store to show."),
    scene: list[str] = typer.Option([], "--scene", help="scene id to show (repeatable; default: the first)"),
    all_scenes: bool = typer.Option(False, "--all", help="every scene that is not discarded"),
    rrd: Optional[Path] = typer.Option(None, "--rrd", help=RRD_HELP),
) -> None:
    """Show a stored scene's views in their poses in Rerun (frusta, images, objects)."""
    from viz.rerun_view import choose_target, default_rrd_path, import_rerun, view_store

    import_rerun()
    target = choose_target(True, rrd, default_rrd_path(store))
    if rrd is not None:
        target = type(target)(spawn=False, rrd=target.rrd)  # an explicit file: just write it
    summary = view_store(store, target, scenes=scene or None, all_scenes=all_scenes)
    note = " (no display: open it with `rerun FILE`)" if not target.spawn and rrd is None else ""
    typer.echo(f"{summary.views} views of {len(summary.scenes)} scene(s) ({', '.join(summary.scenes)}) "
               f"sent to {target.describe()}{note}")
