"""``ldsrig data import FORMAT SRC DST``: the typer command (mounted by datasets/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def import_command(
    # A plain string checked by import_dataset, so a wrong name is one clear line (UserError).
    format: Annotated[str, typer.Argument(
        metavar="FORMAT", help="Source format: clevr-mv, clevr-mv-raw, gqn-jaco, multi-object, "
        "colmap or nerfstudio.")],
    src: Annotated[Path, typer.Argument(help=(
        "clevr-mv: the JSON index (clevr_mv_train.json); clevr-mv-raw: the generator's output "
        "folder; gqn-jaco: the .h5 file; multi-object: the .tfrecords file; colmap: a project "
        "(images/, sparse/0/), a model folder, or a folder of projects (one scene each); "
        "nerfstudio: transforms.json, its folder, or a folder of such folders (one scene each)."))],
    dst: Annotated[Path, typer.Argument(help="Scene store to create, or to resume an interrupted import into.")],
    data_root: Annotated[Optional[Path], typer.Option(
        "--data-root", help="clevr-mv: folder that the index's data_path entries are relative to "
        "(default: found next to the index or above it).")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="multi-object: multi_dsprites_{binarized,colored_on_grayscale,"
        "colored_on_colored}, objects_room[_six_objects|_empty_room|_identical_color], "
        "clevr_with_masks or tetrominoes.")] = None,
    scene_map: Annotated[Optional[Path], typer.Option(
        "--scene-map", help="colmap, nerfstudio: JSON {scene id: [image names]} splitting one "
        "model or transforms.json into scenes (images not named are left out).")] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", help="Import at most this many scenes (counting ones already imported).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Import a public dataset into a scene store (resumable: re-run to continue)."""
    from datasets.importers import import_dataset

    report = import_dataset(
        format.lower(), src, dst, data_root=data_root, dataset=dataset, limit=limit,
        progress=progress, scene_map=scene_map,
    )
    typer.echo(report.summary())
