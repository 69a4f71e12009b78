"""`ldsrig data export {nerfstudio,colmap} STORE OUT` and `ldsrig data audit-poses STORE`
(mounted by datasets/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

export_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Write a store's scenes as posed image sets (one folder per scene).")

_STORE = typer.Argument(help="Scene store to read (left untouched).")
_OUT = typer.Argument(help="Folder to write; each scene lands in OUT/<scene id>/.")
_SCENES = typer.Option("--scene", help="Scene id to export (repeat for several; default: every "
                       "complete scene).")


@export_app.command("nerfstudio")
def export_nerfstudio_command(
    store: Annotated[Path, _STORE],
    out: Annotated[Path, _OUT],
    scene: Annotated[Optional[list[str]], _SCENES] = None,
    masks: Annotated[bool, typer.Option("--masks/--no-masks", help=(
        "With ground truth: write mask_path (255 = object pixels, what nerfstudio trains on) "
        "and the label maps."))] = True,
) -> None:
    """transforms.json (OpenGL camera-to-world, OPENCV camera), images and masks per scene."""
    from datasets.posed.export import ExportConfig
    from datasets.posed.nerfstudio import export_nerfstudio

    report = export_nerfstudio(store, out, ExportConfig(scenes=tuple(scene or ()), masks=masks))
    typer.echo(report.summary())


@export_app.command("colmap")
def export_colmap_command(
    store: Annotated[Path, _STORE],
    out: Annotated[Path, _OUT],
    scene: Annotated[Optional[list[str]], _SCENES] = None,
) -> None:
    """A COLMAP model (OPENCV cameras, world-to-camera poses, known object points) per scene."""
    from datasets.posed.colmap import export_colmap
    from datasets.posed.export import ExportConfig

    report = export_colmap(store, out, ExportConfig(scenes=tuple(scene or ())))
    typer.echo(report.summary())
