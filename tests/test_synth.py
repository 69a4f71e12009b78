"""Synthetic scenes: camera conventions, exact masks, determinism, the CLI, resuming."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.geometry import intrinsics_from_fov, look_at
from datasets.store import SceneStore
from datasets.synth import camera, clevr, cubes, meshes, render
from datasets.synth.generate import (ClevrMVSettings, CubesSettings, SynthError, generate,
                                     render_clevr_mv_scene, render_cubes_scene)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "clevr_mv_raw_sample"  # one real CLE-MV scene, shipped
TINY_CLEVR = ClevrMVSettings(views=3, size=32, spp=4, max_objects=3)
TINY_CUBES = CubesSettings(views=2, width=64, height=48, spp=2)


def _rotation(axis, degrees):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.radians(degrees) * np.asarray(axis, float)).as_matrix()


def test_pose_and_intrinsics_reproduce_mitsuba_rays_exactly():
    """Mitsuba's own world position of what each pixel centre sees projects back onto that pixel
    with the stored (pose, K): OpenCV axes, pixel-centre convention, off-centre principal point,
    non-square image, camera rolled (not a look-at pose)."""
    mi = render.mitsuba()
    width, height = 48, 32
    K = intrinsics_from_fov(width, height, 70.0)
    K[0, 2] += 3.25
    K[1, 2] -= 2.5
    pose = look_at([3.0, -4.0, 2.5], [0.2, 0.1, 0.0])
    pose[:3, :3] = pose[:3, :3] @ _rotation([0, 0, 1], 17.0)  # roll about the optical axis
    scene = mi.load_dict({"type": "scene",
                          "ground": {"type": "rectangle", "to_world": mi.ScalarTransform4f().scale([50, 50, 1])},
                          "ball": {"type": "sphere", "center": [0.3, 0.0, 0.6], "radius": 0.6}})
    sensor = mi.load_dict(camera.mitsuba_sensor_dict(pose, K, width, height, spp=1, pixel_centres=True))
    aov = mi.load_dict({"type": "aov", "aovs": "p:position,i:shape_index"})
    out = np.array(mi.render(scene, sensor=sensor, integrator=aov))
    hit = out[..., 3] > 0
    assert hit.sum() > 0.5 * width * height
    v, u = np.nonzero(hit)
    uv, depth = camera.project_points(out[hit][:, :3], pose, K)
    assert np.all(depth > 0)
    np.testing.assert_allclose(uv, np.column_stack([u, v]), atol=2e-3)


def test_clevr_cameras_match_the_real_cle_mv_sample():
    """Our CLE-MV camera (look at the origin, 49.13 degree FOV) reprojects the sample's objects
    onto the generator's own pixel_coords (Blender's, truncated to integers)."""
    meta = json.loads((FIXTURE / "scenes" / "CLEVR_new_000000.json").read_text())
    K = intrinsics_from_fov(64, 64, clevr.CAMERA_FOV_X_DEG)
    for v, location in enumerate(meta["camera"]["location"]):
        pose = look_at(location, [0, 0, 0])
        assert np.hypot(*location[:2]) == pytest.approx(clevr.CAMERA_RING_RADIUS, abs=0.01)
        assert location[2] == pytest.approx(clevr.CAMERA_HEIGHT, abs=0.01)
        for obj in meta["objects"]:
            uv, depth = camera.project_points(obj["3d_coords"], pose, K)
            expected_u, expected_v, expected_depth = obj["pixel_coords"][v]
            assert depth[0] == pytest.approx(expected_depth, rel=1e-4)
            # Blender's pixel coords count from the image corner: ours + 0.5, truncated.
            assert abs(uv[0, 0] + 0.5 - expected_u) < 1.0 and abs(uv[0, 1] + 0.5 - expected_v) < 1.0


def test_camera_ring_is_even_and_looks_at_origin():
    poses, Ks = clevr.camera_ring(10, 30.0)
    azimuths = np.degrees(np.arctan2(poses[:, 1, 3], poses[:, 0, 3])) % 360
    np.testing.assert_allclose(np.diff(np.unwrap(np.radians(azimuths))), np.radians(36.0), atol=1e-9)
    for pose in poses:
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-12)
        uv, _ = camera.project_points([0, 0, 0], pose, Ks[0])
        np.testing.assert_allclose(uv[0], [31.5, 31.5], atol=1e-9)


def test_masks_align_with_the_rgb_render():
    """Objects made emissive in distinct colours, no other light: wherever a pixel and its
    neighbours share one label, the path-traced RGB is exactly that label's colour (black for
    background), so label maps and images come from the same rays and pixel grid."""
    colours = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    positions = [(-0.9, 0.2, 0.5), (0.2, -0.3, 0.5), (1.0, 0.8, 0.5)]
    shapes = []
    for i, (shape, pos) in enumerate(zip(["cube", "sphere", "cylinder"], positions)):
        black = {"type": "diffuse", "reflectance": render.rgb_spectrum([0.0, 0.0, 0.0])}
        s = render.object_shape(shape, 0.5, pos, 25.0, black)
        if isinstance(s, dict):
            s["emitter"] = {"type": "area", "radiance": render.rgb_spectrum(colours[i + 1])}
        else:  # meshes: rebuild with an emitter property
            mi = render.mitsuba()
            params = mi.traverse(s)
            props = mi.Properties()
            props["bsdf"] = mi.load_dict(black)
            props["emitter"] = mi.load_dict({"type": "area", "radiance": render.rgb_spectrum(colours[i + 1])})
            mesh = mi.Mesh("m", s.vertex_count(), s.face_count(), props=props, has_vertex_normals=True)
            p = mi.traverse(mesh)
            for key in ("vertex_positions", "vertex_normals", "faces"):
                p[key] = params[key]
            p.update()
            s = mesh
        shapes.append(s)
    loaded = render.load_scene({}, shapes)
    width, height = 80, 60
    pose = look_at([1.0, -5.0, 3.0], [0.1, 0.1, 0.4])
    K = intrinsics_from_fov(width, height, 45.0)
    rgb = render.render_linear_rgb(loaded, pose, K, width, height, spp=16, seed=1)
    label_map, amodal = render.render_masks(loaded, pose, K, width, height)
    padded = np.pad(label_map, 1, mode="edge")
    neighbours = np.stack([padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)])
    interior = np.all(neighbours == label_map[None], axis=0)
    for label in range(4):
        region = interior & (label_map == label)
        assert region.sum() > 10, f"label {label} has too few interior pixels"
        np.testing.assert_allclose(rgb[region], np.broadcast_to(colours[label], (region.sum(), 3)), atol=1e-4)
    # Visible implies amodal; amodal of an object includes pixels where it is hidden.
    for i in range(3):
        assert np.all(amodal[i][label_map == i + 1])
        assert amodal[i].sum() >= (label_map == i + 1).sum() > 0


def test_cube_view_centres_and_masks():
    rng = np.random.default_rng(3)
    scene = cubes.sample_cube_scene(rng, n_cubes=3)
    poses = cubes.sample_cube_viewpoints(rng, 3, elevation_deg=(55.0, 75.0))
    K = cubes.default_intrinsics(96, 72)
    for pose in poses:
        rgb, label_map, amodal = cubes.render_cube_view(scene, pose, K, 96, 72, spp=2, rng=rng)
        assert rgb.shape == (72, 96, 3) and rgb.dtype == np.uint8
        assert label_map.shape == (72, 96) and amodal.shape == (3, 72, 96)
        for i, obj in enumerate(scene.objects):
            assert np.all(amodal[i][label_map == i + 1])
            # The top face centre is what a high camera sees of each cube.
            top = np.asarray(obj.position_world) + [0, 0, obj.half_extent]
            (u, v), = np.rint(camera.project_points(top, pose, K)[0]).astype(int)
            assert amodal[i, v, u]
            if label_map[v, u] != 0:
                assert label_map[v, u] == i + 1 or amodal[label_map[v, u] - 1, v, u]
        # Cubes are the only labelled things; the table is background.
        assert set(np.unique(label_map)) <= {0, 1, 2, 3}


def test_single_cube_centre_lands_in_its_visible_mask():
    rng = np.random.default_rng(11)
    scene = cubes.sample_cube_scene(rng, n_cubes=1)
    for pose in cubes.sample_cube_viewpoints(rng, 4):
        K = cubes.default_intrinsics(64, 48)
        _, label_map, _ = cubes.render_cube_view(scene, pose, K, 64, 48, spp=1, rng=rng, noise=False)
        (u, v), = np.rint(camera.project_points(scene.objects[0].position_world, pose, K)[0]).astype(int)
        assert label_map[v, u] == 1


def test_clevr_scene_is_deterministic_and_every_object_visible():
    a = render_clevr_mv_scene(TINY_CLEVR, 5)
    b = render_clevr_mv_scene(TINY_CLEVR, 5)
    for key in ("rgb", "camera_pose_world", "intrinsics", "label_map", "amodal_masks"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["metadata"] == b["metadata"]
    other = render_clevr_mv_scene(TINY_CLEVR, 6)
    assert not np.array_equal(a["rgb"], other["rgb"])
    n = len(a["metadata"]["objects"])
    assert 2 <= n <= 3 and a["amodal_masks"].shape == (3, n, 32, 32)
    min_pixels = max(1, round(TINY_CLEVR.min_visible_pixels * 32 * 32 / 4096))
    for view in range(3):
        counts = np.bincount(a["label_map"][view].ravel(), minlength=n + 1)
        assert np.all(counts[1:] >= min_pixels)
        assert np.all(a["amodal_masks"][view][np.arange(n)[:, None, None] + 1 == a["label_map"][view][None]])
        # Object centres project inside their amodal silhouettes.
        for i, obj in enumerate(a["metadata"]["objects"]):
            uv, _ = camera.project_points(obj["position_world"], a["camera_pose_world"][view], a["intrinsics"][view])
            u, v = np.rint(uv[0]).astype(int)
            assert a["amodal_masks"][view, i, v, u]


def test_complex_shapes_render_with_exact_masks():
    settings = replace(TINY_CLEVR, shapes="complex", views=2)
    result = render_clevr_mv_scene(settings, 2)
    assert all(o["shape"] in clevr.COMPLEX_SHAPES for o in result["metadata"]["objects"])
    assert result["label_map"].max() == len(result["metadata"]["objects"])


@pytest.mark.parametrize("shape", meshes.MESH_SHAPES)
def test_meshes_rest_on_the_ground_with_outward_normals(shape):
    r = 0.5
    vertices, normals, faces = meshes.build(shape, r)
    assert vertices[:, 2].min() == pytest.approx(-meshes.half_height(shape, r), abs=1e-3)
    tri = vertices[faces].astype(np.float64)
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(np.einsum("ij,ij->i", face_normals, normals[faces].sum(1)) > 0)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    # Closed surface: the divergence theorem gives a positive volume.
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
    assert volume > 0.05 * r**3


def test_cubes_scene_is_deterministic():
    a = render_cubes_scene(TINY_CUBES, 1)
    b = render_cubes_scene(TINY_CUBES, 1)
    for key in ("rgb", "camera_pose_world", "label_map", "amodal_masks"):
        np.testing.assert_array_equal(a[key], b[key])
    objects = a["metadata"]["objects"]
    assert 2 <= len(objects) <= 4
    assert all(0.04 <= 2 * o["half_extent"] <= 0.06 for o in objects)
    assert len({o["color"] for o in objects}) == len(objects)


def test_rendering_refuses_non_square_pixels():
    K = intrinsics_from_fov(64, 48, 60.0)
    K[0, 0] *= 1.05
    with pytest.raises(ValueError, match="square pixels"):
        camera.mitsuba_sensor_dict(np.eye(4), K, 64, 48, spp=1)


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "data", "synth", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_end_to_end_with_two_workers_matches_in_process_render(tmp_path):
    out = tmp_path / "clevr.zarr"
    proc = _cli("clevr-mv", str(out), "--scenes", "2", "--views", "3", "--size", "32", "--spp", "4",
                "--max-objects", "3", "-j", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "2 scenes rendered (6 images" in proc.stdout
    store = SceneStore.open(out)
    assert store.scene_ids == ["clevr-mv-000000", "clevr-mv-000001"]
    assert store.has_ground_truth and store.attrs["source"] == "synthetic/clevr-mv"
    for index, scene_id in enumerate(store.scene_ids):
        assert store.scene_state(scene_id) == "complete"
        expected = render_clevr_mv_scene(TINY_CLEVR, index)
        rows = store.images(store.scene_image_indices(scene_id))
        np.testing.assert_array_equal(rows["rgb"], expected["rgb"])
        np.testing.assert_array_equal(rows["label_map"], expected["label_map"])
        n = len(expected["metadata"]["objects"])
        np.testing.assert_array_equal(rows["amodal_masks"][:, :n], expected["amodal_masks"])
        np.testing.assert_array_equal(rows["camera_pose_world"], expected["camera_pose_world"])
        assert store.scene_metadata(scene_id)["objects"] == expected["metadata"]["objects"]


def test_cli_bad_input_is_one_line(tmp_path):
    proc = _cli("clevr-mv", str(tmp_path / "x"), "--scenes", "1", "--shapes", "hexagons")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "--shapes must be one of" in proc.stderr
    not_a_store = tmp_path / "junk"
    not_a_store.mkdir()
    (not_a_store / "file.txt").write_text("hello")
    proc = _cli("cubes", str(not_a_store), "--scenes", "1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _cli("cubes", str(tmp_path / "empty.zarr"), "--scenes", "0")
    assert proc.returncode != 0 and "--scenes must be at least 1" in proc.stderr
    assert not (tmp_path / "empty.zarr").exists()


def test_resume_skips_complete_scenes_and_redoes_an_interrupted_one(tmp_path):
    out = tmp_path / "s.zarr"
    first = generate(out, "clevr-mv", TINY_CLEVR, 1, progress=False)
    assert first.scenes_rendered == 1
    with SceneStore.open(out) as store:
        scene0_rows = store.images(store.scene_image_indices("clevr-mv-000000"))
    # An interrupted run: scene 1 registered and one of its views committed, never completed.
    partial = render_clevr_mv_scene(TINY_CLEVR, 1)
    with SceneStore.open(out, mode="a") as store:
        store.add_scene("clevr-mv-000001", partial["metadata"])
        store.append_images("clevr-mv-000001", partial["rgb"][:1], partial["camera_pose_world"][:1],
                            partial["intrinsics"][:1], label_map=partial["label_map"][:1],
                            amodal_masks=partial["amodal_masks"][:1])
    second = generate(out, "clevr-mv", TINY_CLEVR, 3, progress=False)
    assert (second.scenes_skipped, second.scenes_rendered) == (1, 2)
    assert second.scene_ids == ["clevr-mv-000001", "clevr-mv-000002"]
    with SceneStore.open(out) as store:
        assert store.scene_ids == ["clevr-mv-000000", "clevr-mv-000001", "clevr-mv-000002"]
        assert all(store.scene_state(s) == "complete" for s in store.scene_ids)
        again = store.images(store.scene_image_indices("clevr-mv-000000"))
        np.testing.assert_array_equal(again["rgb"], scene0_rows["rgb"])
        redone = store.images(store.scene_image_indices("clevr-mv-000001"))
        assert len(redone["rgb"]) == 3
        np.testing.assert_array_equal(redone["rgb"], partial["rgb"])
    # A third run has nothing to do; other settings are refused.
    third = generate(out, "clevr-mv", TINY_CLEVR, 3, progress=False)
    assert (third.scenes_skipped, third.scenes_rendered) == (3, 0)
    with pytest.raises(SynthError, match="other settings"):
        generate(out, "clevr-mv", replace(TINY_CLEVR, seed=1), 3, progress=False)
