"""Importers: bring public multi-object datasets into the scene store.

``import_dataset(format, src, dst, ...)`` is the one entry point; ``ldsrig data import FORMAT SRC
DST`` calls it.  Formats:

- ``clevr-mv``: CLE-MV / Dolphin packed format (JSON index + npz archive per scene).
- ``clevr-mv-raw``: the CLE-MV generator's raw output folder (images/, masks/, scenes/).
- ``gqn-jaco``: GQN-Jaco h5 (images + 7-D viewpoints, no masks).
- ``multi-object``: DeepMind multi_object_datasets TFRecords (needs ``dataset``).
- ``colmap``: COLMAP models with their images (pycolmap, the ``colmap`` extra).
- ``nerfstudio``: transforms.json folders.

The two posed formats take one scene per model / transforms.json folder, or a ``scene_map``
(datasets/importers/posed.py).

Imports are resumable: re-running the same command skips complete scenes and redoes an
interrupted one.  Conventions and derived quantities: docs/importers.md.
"""

from __future__ import annotations

from pathlib import Path

from datasets.importers.base import (
    ImportPlan,
    ImportReport,
    ImportSourceError,
    ImportTargetError,
    write_import,
)

FORMATS = ("clevr-mv", "clevr-mv-raw", "gqn-jaco", "multi-object", "colmap", "nerfstudio")
POSED_FORMATS = ("colmap", "nerfstudio")


def plan_import(
    format: str,
    src: str | Path,
    *,
    data_root: str | Path | None = None,
    dataset: str | None = None,
    scene_map: str | Path | None = None,
) -> ImportPlan:
    """Inspect SRC and return what would be imported (no pixels read yet)."""
    if scene_map is not None and format not in POSED_FORMATS:
        raise ImportSourceError(f"--scene-map applies to {' and '.join(POSED_FORMATS)} imports only")
    if format == "clevr-mv":
        from datasets.importers.clevr_mv import read_packed

        return read_packed(src, data_root=data_root)
    if format == "clevr-mv-raw":
        from datasets.importers.clevr_mv import read_raw

        return read_raw(src)
    if format == "gqn-jaco":
        from datasets.importers.gqn_jaco import read_gqn_jaco

        return read_gqn_jaco(src)
    if format == "multi-object":
        from datasets.importers.multi_object import read_multi_object

        return read_multi_object(src, dataset)
    if format == "colmap":
        from datasets.importers.posed import read_colmap_source

        return read_colmap_source(src, scene_map)
    if format == "nerfstudio":
        from datasets.importers.posed import read_nerfstudio_source

        return read_nerfstudio_source(src, scene_map)
    raise ImportSourceError(f"unknown import format {format!r}; choose one of {', '.join(FORMATS)}")


def import_dataset(
    format: str,
    src: str | Path,
    dst: str | Path,
    *,
    data_root: str | Path | None = None,
    dataset: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    scene_map: str | Path | None = None,
) -> ImportReport:
    """Import SRC (of ``format``) into the scene store DST, creating it or resuming into it."""
    if limit is not None and limit < 0:
        raise ImportSourceError("--limit must be >= 0")
    plan = plan_import(format, src, data_root=data_root, dataset=dataset, scene_map=scene_map)
    return write_import(dst, plan, limit=limit, progress=progress, description=f"import {format}")


__all__ = [
    "FORMATS",
    "POSED_FORMATS",
    "ImportPlan",
    "ImportReport",
    "ImportSourceError",
    "ImportTargetError",
    "import_dataset",
    "plan_import",
]
