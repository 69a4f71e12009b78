"""`ldsrig data ...`: inspect, check, repair and prepare stores; synthesise and import scenes."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console(soft_wrap=True)  # one problem per line, greppable


@app.command("info")
def info(store: Path = typer.Argument(..., help="Scene store (a zarr directory)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Scenes, images, sizes, sources and ground truth in a store."""
    from datasets.inspect import store_summary

    summary = store_summary(store)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"scene store {store}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("schema", f"v{summary['schema_version']}"),
        ("scenes", f"{summary['scenes']}  ({', '.join(f'{k}: {v}' for k, v in summary['scene_states'].items()) or 'none'})"),
        ("images", str(summary["images"])),
        ("image size", f"{summary['image_size'][1]} x {summary['image_size'][0]} (W x H)"),
        ("views per scene", "{} - {}".format(*summary["views_per_scene"])),
        ("ground truth", "visible + amodal masks" if summary["ground_truth"] else "none"),
        ("objects per scene", "{} - {}".format(*summary["objects_per_scene"]) if summary["objects_per_scene"] else "unknown"),
        ("sources", ", ".join(f"{k} ({v})" for k, v in summary["sources"].items()) or "unknown"),
        ("taken by a robot", f"{summary['robot_images']} images"),
        ("uncommitted rows", str(summary["uncommitted_rows"])),
        ("on disk", f"{summary['disk_bytes'] / 2**20:.1f} MiB"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


@app.command("check")
def check(store: Path = typer.Argument(..., help="Scene store to validate."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")) -> None:
    """Validate schema, poses, intrinsics and masks; exit non-zero on any error."""
    from datasets.inspect import check_store

    problems = check_store(store, progress=not quiet)
    for problem in problems:
        colour = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{colour}]{problem.severity}[/]: {problem.message}")
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        console.print(f"[red]{store}: {errors} error(s)[/]")
        raise typer.Exit(1)
    console.print(f"[green]{store}: ok[/]")


@app.command("repair")
def repair(store: Path = typer.Argument(..., help="Scene store to repair.")) -> None:
    """Drop rows past the commit marker left by a writer that died (committed data untouched)."""
    from datasets.store import SceneStore

    reader = SceneStore.open(store)
    tail = reader.uncommitted_rows()
    reader.close()
    with SceneStore.open(store, mode="a"):  # opening for append truncates the uncommitted tail
        pass
    console.print(f"{store}: dropped {tail} uncommitted row(s); {reader.num_images} committed images kept")


@app.command("prepare")
def prepare(src: Path = typer.Argument(..., help="Raw scene store (left untouched)."),
            dst: Path = typer.Argument(..., help="New training store to write."),
            size: int = typer.Option(64, "--size", help="Output side length in pixels (square)."),
            quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Derive a square training store: centre crop, area resize, nearest masks, adjusted K."""
    from datasets.prepare import prepare_store

    prepare_store(src, dst, size, progress=not quiet)
    console.print(f"wrote {dst}")


def _mount(module: str, attr: str, name: str, as_group: bool, help: str) -> None:
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name in (module, module.rsplit(".", 1)[0]):
            return
        raise
    if as_group:
        app.add_typer(obj, name=name, help=help)
    else:
        app.command(name, help=help)(obj)


_mount("datasets.synth.cli", "synth_app", "synth", True, "Render synthetic multi-view scenes with Mitsuba 3.")
_mount("datasets.importers.cli", "import_command", "import", False,
       "Import a public data set (clevr-mv, clevr-mv-raw, gqn-jaco, multi-object) or a posed "
       "image set (colmap, nerfstudio) into a new store.")
_mount("datasets.posed.cli", "export_app", "export", True,
       "Write a store's scenes as posed image sets: nerfstudio or colmap.")
_mount("datasets.posed.cli", "audit_poses_command", "audit-poses", False,
       "Check stored poses against the images: triangulated features, reprojection error per view.")
_mount("viz.cli", "view_command", "view", False,
       "Show a stored scene's views in their poses in Rerun (needs rerun-sdk, the 'view' extra).")
