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


def audit_poses_command(
    store: Annotated[Path, typer.Argument(help="Scene store whose poses to audit (read only).")],
    scene: Annotated[Optional[list[str]], typer.Option(
        "--scene", help="Scene id to audit (repeat for several; default: every complete scene).")] = None,
    flag_px: Annotated[float, typer.Option(
        "--flag-px", help="Flag a view whose median reprojection error exceeds this many pixels "
        "(and 3x the scene's typical view).")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Triangulate image features from the stored poses (pycolmap) and report the reprojection
    error per view and scene; flag views whose pose disagrees with the images (exit 1)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from datasets.posed.audit import AuditConfig, audit_poses

    report = audit_poses(store, AuditConfig(flag_px=flag_px), tuple(scene or ()))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console = Console(soft_wrap=True)
        for audit in report.scenes:
            table = Table(title=f"{audit.scene_id}: median {audit.median_px:.2f} px over all "
                                f"points, typical view {audit.typical_view_px:.2f} px")
            for column in ("view", "points", "median px", "mean px", ""):
                table.add_column(column, justify="right" if column else "left")
            for v in audit.views:
                verdict = ("[red]FLAGGED[/]" if v.flagged else "ok") if v.audited else "[yellow]not audited[/]"
                table.add_row(str(v.view_index), str(v.points), f"{v.median_px:.2f}", f"{v.mean_px:.2f}", verdict)
            console.print(table)
        flagged = report.flagged
        console.print(f"{store}: {len(flagged)} view(s) flagged" + (
            ": " + ", ".join(f"{s} view {v}" for s, v in flagged) if flagged else ""))
    if report.flagged:
        raise typer.Exit(1)
