"""What both exporters share: which scenes, the per-scene loop, and the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets.posed.scenes import PosedScene, SceneFolder, read_posed_scene, select_scenes


@dataclass(frozen=True)
class ExportConfig:
    scenes: tuple[str, ...] = ()   # scene ids to export; empty: every complete scene
    masks: bool = True             # write masks where the store has ground truth


@dataclass
class ExportReport:
    out: Path
    format: str
    scene_ids: list[str] = field(default_factory=list)
    images: int = 0
    points: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        points = f", {self.points} points" if self.points else ""
        return (f"{self.format}: {len(self.scene_ids)} scene(s), {self.images} images{points} "
                f"-> {self.out}/<scene id>/ in {self.seconds:.1f} s")


def export_scenes(store_path: str | Path, out: str | Path, config: ExportConfig, format: str,
                  write_scene: Callable[[PosedScene, Path, ExportConfig], int]) -> ExportReport:
    """Read every chosen scene (checking its poses) and hand it to ``write_scene``, which fills
    a fresh folder and returns the number of 3-D points it wrote.  Scenes are checked before any
    is written, so a store without poses writes nothing."""
    from datasets.store import SceneStore

    started = time.perf_counter()
    out = Path(out)
    report = ExportReport(out=out, format=format)
    with SceneStore.open(store_path) as store:
        scene_ids = select_scenes(store, list(config.scenes))
        for scene_id in scene_ids:  # poses and cameras first: fail before writing anything
            read_posed_scene(store, scene_id, with_rgb=False)
        for scene_id in scene_ids:
            scene = read_posed_scene(store, scene_id)
            with SceneFolder(out, scene_id) as folder:
                report.points += write_scene(scene, folder, config)
            report.scene_ids.append(scene_id)
            report.images += scene.num_views
    report.seconds = time.perf_counter() - started
    return report
