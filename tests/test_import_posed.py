"""Import of COLMAP models and nerfstudio folders: export -> import gives back the store's poses
(to 1e-9), intrinsics, distortion and pixels, one scene per folder or as a scene map says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets.importers import import_dataset
from datasets.store import SceneStore
from tests.posed_stores import distorted_copy, render_cubes

ROOT = Path(__file__).resolve().parents[1]
POSE_TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    plain = render_cubes(root / "cubes.zarr", scenes=2, views=4)
    return {"plain": plain, "distorted": distorted_copy(plain, root / "distorted.zarr")}


def _export(format: str, store: Path, out: Path) -> None:
    if format == "colmap":
        from datasets.posed.colmap import export_colmap as export
    else:
        from datasets.posed.nerfstudio import export_nerfstudio as export
    export(store, out)


def _scene_rows(path: Path) -> dict[str, dict]:
    with SceneStore.open(path) as store:
        return {s: store.images(store.scene_image_indices(s)) for s in store.scene_ids}


def _assert_same_cameras_and_pixels(original: dict, imported: dict) -> float:
    worst = 0.0
    for field in ("camera_pose_world", "intrinsics", "distortion"):
        error = float(np.abs(imported[field] - original[field]).max())
        assert error < POSE_TOLERANCE, (field, error)
        if field == "camera_pose_world":
            worst = error
    np.testing.assert_array_equal(imported["rgb"], original["rgb"])
    return worst


@pytest.mark.parametrize("format", ["colmap", "nerfstudio"])
@pytest.mark.parametrize("kind", ["plain", "distorted"])
def test_export_then_import_gives_back_poses_intrinsics_and_pixels(stores, format, kind, tmp_path):
    _export(format, stores[kind], tmp_path / "exported")
    report = import_dataset(format, tmp_path / "exported", tmp_path / "back.zarr", progress=False)
    assert report.scenes_written == 2 and report.images_written == 8
    original, imported = _scene_rows(stores[kind]), _scene_rows(tmp_path / "back.zarr")
    assert list(imported) == list(original)  # one scene per exported folder, same ids
    for scene_id in original:
        _assert_same_cameras_and_pixels(original[scene_id], imported[scene_id])
    with SceneStore.open(tmp_path / "back.zarr") as back:
        assert back.attrs["source"] == f"import/{format}" and not back.has_ground_truth
        meta = back.scene_metadata(next(iter(original)))
        assert meta["image_names"][0].endswith("frame_00000.png")


def test_a_scene_map_splits_one_source_into_scenes(stores, tmp_path):
    _export("nerfstudio", stores["distorted"], tmp_path / "exported")
    scene_id = "cubes-000001"
    frames = [f"images/frame_{v:05d}.png" for v in range(4)]
    scene_map = tmp_path / "map.json"
    scene_map.write_text(json.dumps({"left": frames[:3], "right": frames[3:]}))
    import_dataset("nerfstudio", tmp_path / "exported" / scene_id, tmp_path / "split.zarr",
                   scene_map=scene_map, progress=False)
    original = _scene_rows(stores["distorted"])[scene_id]
    split = _scene_rows(tmp_path / "split.zarr")
    assert list(split) == ["left", "right"]
    joined = {k: np.concatenate([split["left"][k], split["right"][k]]) for k in split["left"]}
    _assert_same_cameras_and_pixels(original, joined)


def test_import_cli_round_trip_through_colmap(stores, tmp_path):
    _export("colmap", stores["plain"], tmp_path / "exported")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "data", "import", "colmap",
                           str(tmp_path / "exported"), str(tmp_path / "back.zarr"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 scenes (8 images) written" in proc.stdout
    check = subprocess.run([sys.executable, str(ROOT / "cli.py"), "data", "check", "-q",
                            str(tmp_path / "back.zarr")], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
