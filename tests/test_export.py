"""Export to nerfstudio and COLMAP against ground truth: the known 3-D centres of rendered cubes,
projected through the exported cameras (pycolmap's own projection; transforms.json read by an
independent implementation of nerfstudio's camera), land on the store's projections."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.store import SceneStore
from tests.posed_stores import distorted_copy, render_cubes, store_projections

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE_PX = 0.05


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    plain = render_cubes(root / "cubes.zarr", scenes=1, views=5)
    return {"plain": plain, "distorted": distorted_copy(plain, root / "distorted.zarr")}


def _scene_truth(store_path: Path):
    """Per scene: image names -> (pose, K, distortion, amodal masks), and the object centres."""
    with SceneStore.open(store_path) as store:
        for scene_id in store.scene_ids:
            indices = store.scene_image_indices(scene_id)
            rows = store.images(indices)
            centres = np.array([o["position_world"] for o in store.scene_metadata(scene_id)["objects"]])
            views = {f"frame_{int(v):05d}.png": (rows["camera_pose_world"][k], rows["intrinsics"][k],
                                                  rows["distortion"][k], rows["amodal_masks"][k])
                     for k, v in enumerate(rows["view_index"])}
            yield scene_id, views, centres


def _nerfstudio_projection(transforms: dict, frame: dict, points: np.ndarray) -> np.ndarray:
    """World points through one transforms.json frame, the way nerfstudio defines its camera:
    c2w in OpenGL axes, OpenCV distortion (k1 k2 k3 k4 radial, p1 p2) on normalised coordinates
    with y down, pixel row i / column j centred at (j + 0.5, i + 0.5); returned in the store's
    pixel-centre convention (centre of pixel (0, 0) at (0, 0)) for comparison."""
    camera = {**transforms, **frame}
    c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
    local = (points - c2w[:3, 3]) @ c2w[:3, :3]         # OpenGL camera frame: x right, y up, z back
    assert np.all(local[:, 2] < 0), "a cube centre behind an exported camera"
    x, y = local[:, 0] / -local[:, 2], -local[:, 1] / -local[:, 2]   # y down, as nerfstudio distorts
    r2 = x * x + y * y
    k1, k2, k3, k4, p1, p2 = (camera.get(key, 0.0) for key in ("k1", "k2", "k3", "k4", "p1", "p2"))
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
    u = camera["fl_x"] * xd + camera["cx"]
    v = camera["fl_y"] * yd + camera["cy"]
    return np.stack([u, v], axis=1) - 0.5


@pytest.mark.parametrize("kind", ["plain", "distorted"])
def test_nerfstudio_export_projects_cube_centres_onto_the_store_projections(stores, kind, tmp_path):
    from datasets.posed.nerfstudio import export_nerfstudio

    report = export_nerfstudio(stores[kind], tmp_path / "ns")
    worst = 0.0
    for scene_id, views, centres in _scene_truth(stores[kind]):
        folder = tmp_path / "ns" / scene_id
        transforms = json.loads((folder / "transforms.json").read_text())
        assert transforms["camera_model"] == "OPENCV"
        # shared intrinsics at the top level for the rendered store, per frame for the other
        assert ("fl_x" in transforms) == (kind == "plain")
        assert [Path(f["file_path"]).name for f in transforms["frames"]] == sorted(views)
        for frame in transforms["frames"]:
            name = Path(frame["file_path"]).name
            pose, K, distortion, amodal = views[name]
            expected = store_projections(pose, K, distortion, centres)
            got = _nerfstudio_projection(transforms, frame, centres)
            worst = max(worst, float(np.abs(got - expected).max()))
            if kind == "plain":  # the store's projection is the truth: it lands on the cube
                for o, (u, v) in enumerate(np.rint(expected).astype(int)):
                    assert amodal[o, v, u], f"{name}: cube {o}'s centre misses its silhouette"
            image = np.asarray(Image.open(folder / frame["file_path"]))
            assert image.shape == (36, 48, 3)
            mask = np.asarray(Image.open(folder / frame["mask_path"]))
            assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    assert worst < TOLERANCE_PX, worst
    assert report.images == 5


@pytest.mark.parametrize("kind", ["plain", "distorted"])
def test_colmap_export_projects_cube_centres_onto_the_store_projections(stores, kind, tmp_path):
    import pycolmap  # the colmap extra; scripts/bootstrap.sh installs it for the tests

    from datasets.posed.colmap import export_colmap

    export_colmap(stores[kind], tmp_path / "colmap")
    worst = 0.0
    for scene_id, views, centres in _scene_truth(stores[kind]):
        folder = tmp_path / "colmap" / scene_id
        rec = pycolmap.Reconstruction(str(folder / "sparse" / "0"))
        assert sorted(im.name for im in rec.images.values()) == sorted(views)
        models = {cam.model.name for cam in rec.cameras.values()}
        # the rendered store has no distortion: one shared OPENCV camera; the distorted one has
        # per-view cameras, FULL_OPENCV where k3 is non-zero
        assert models == ({"OPENCV"} if kind == "plain" else {"OPENCV", "FULL_OPENCV"})
        assert rec.num_cameras() == (1 if kind == "plain" else 5)
        for image in rec.images.values():
            pose, K, distortion, _ = views[image.name]
            expected = store_projections(pose, K, distortion, centres)
            # pycolmap's projection, COLMAP's pixel-centre origin (0.5) moved back to the store's
            got = np.array([image.project_point(c) for c in centres]) - 0.5
            worst = max(worst, float(np.abs(got - expected).max()))
            assert (folder / "images" / image.name).is_file()
        # the cube centres are the model's points, observed where the store projects them
        assert rec.num_points3D() == len(centres)
        for point in rec.points3D.values():
            o = int(np.argmin(np.linalg.norm(centres - point.xyz, axis=1)))
            assert np.allclose(point.xyz, centres[o], atol=1e-12)
            assert point.track.length() == len(views)  # every view sees every cube here
            for element in point.track.elements:
                image = rec.images[element.image_id]
                pose, K, distortion, _ = views[image.name]
                expected = store_projections(pose, K, distortion, centres[o:o + 1])[0]
                observed = image.points2D[element.point2D_idx].xy - 0.5
                worst = max(worst, float(np.abs(observed - expected).max()))
    assert worst < TOLERANCE_PX, worst


def test_export_cli_writes_each_scene_once(stores, tmp_path):
    run = lambda *args: subprocess.run([sys.executable, str(ROOT / "cli.py"), "data", "export", *args],
                                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    first = run("nerfstudio", str(stores["plain"]), "out")
    assert first.returncode == 0, first.stderr
    assert "1 scene(s), 5 images" in first.stdout
    again = run("nerfstudio", str(stores["plain"]), "out")
    assert again.returncode != 0 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
    assert not list((tmp_path / "out").glob(".*partial"))
