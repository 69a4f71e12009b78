"""CLE-MV importers on the real generator sample (raw) and on a packed copy of it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.importers import ImportSourceError, ImportTargetError, import_dataset
from datasets.importers.clevr_mv import store_labels_to_depth_ordered
from datasets.store import SceneStore

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "clevr_mv_raw_sample"  # one real CLE-MV scene, shipped
NAME = "CLEVR_new_000000"
VIEWS = 10


@pytest.fixture()
def raw_sample(tmp_path) -> Path:
    assert FIXTURE.is_dir(), f"fixture {FIXTURE} is missing from the checkout"
    copy = tmp_path / "raw"
    shutil.copytree(FIXTURE, copy)
    for path in copy.rglob("*"):  # tests damage the copy: it must be editable
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def _source_arrays(raw: Path):
    scene = json.loads((raw / "scenes" / f"{NAME}.json").read_text())
    images = np.stack([np.asarray(Image.open(raw / "images" / f"{NAME}_{v:02d}.png")) for v in range(VIEWS)])
    masks = np.stack([np.load(raw / "masks" / f"{NAME}_{v:02d}.npy") for v in range(VIEWS)])
    return scene, images, masks


def _make_packed(raw: Path, root: Path, num_scenes: int = 1, views: int = VIEWS) -> Path:
    """A packed CLE-MV tree (index JSON + npz per scene) built from the real sample; scenes
    after the first reuse its data under other names."""
    scene, images, masks = _source_arrays(raw)
    (root / "data").mkdir(parents=True)
    entries = []
    for number in range(num_scenes):
        name = f"CLEVR_new_{number:06d}"
        with open(root / "data" / f"{name}.npy", "wb") as handle:  # npz despite the suffix
            np.savez_compressed(handle, images=images[:views], masks=masks[:views])
        entry = dict(scene)
        entry["camera"] = {"location": scene["camera"]["location"][:views]}
        entry["depth_orders"] = scene["depth_orders"][:views]
        entry["data_path"] = f"data/{name}.npy"
        entry["image_filename"] = f"{name}.png"
        entries.append(entry)
    index = {"info": {"name": "test"}, "scenes": entries,
             "shape_gallery": ["cube", "sphere", "horse", "dolphin"], "num_views": views}
    index_path = root / "clevr_mv_train.json"
    index_path.write_text(json.dumps(index))
    return index_path


def _read_scene(store_path: Path, scene_id: str):
    store = SceneStore.open(store_path)
    indices = store.scene_image_indices(scene_id)
    return store, store.scene_metadata(scene_id), store.images(indices)


def test_raw_fixture_survives_import(raw_sample, tmp_path):
    dst = tmp_path / "store"
    report = import_dataset("clevr-mv-raw", raw_sample, dst, progress=False)
    assert (report.scenes_written, report.images_written) == (1, VIEWS)

    scene, images, masks = _source_arrays(raw_sample)
    store, meta, rows = _read_scene(dst, NAME)
    assert store.scene_state(NAME) == "complete"
    assert store.attrs["source"] == "import/clevr-mv-raw"
    np.testing.assert_array_equal(rows["rgb"], images[..., :3])
    # Depth orders and camera locations survive, and rebuild the source's label maps exactly.
    assert meta["depth_orders"] == scene["depth_orders"]
    np.testing.assert_array_equal(np.asarray(meta["camera_locations"]), np.asarray(scene["camera"]["location"]))
    for view in range(VIEWS):
        rebuilt = store_labels_to_depth_ordered(rows["label_map"][view], meta["depth_orders"][view])
        np.testing.assert_array_equal(rebuilt, masks[view, ..., 0].astype(np.uint8))
    num_objects = len(scene["objects"])
    np.testing.assert_array_equal(rows["amodal_masks"][:, :num_objects], np.moveaxis(masks[..., 1:] > 0.5, -1, 1))
    # Store convention: every visible pixel of object i lies inside object i's amodal mask.
    for i in range(1, num_objects + 1):
        visible = rows["label_map"] == i
        assert visible.any()
        assert np.all(rows["amodal_masks"][:, i - 1][visible])
    assert [o["shape"] for o in meta["objects"]] == [o["shape"] for o in scene["objects"]]
    assert meta["objects"][0]["position_world"] == pytest.approx(scene["objects"][0]["3d_coords"])


def test_raw_fixture_cameras_reproduce_generator_projections(raw_sample, tmp_path):
    """The derived look-at pose and CLEVR intrinsics project every object centre to the
    generator's own pixel_coords (its depth to 1e-4, its pixel to rounding)."""
    dst = tmp_path / "store"
    import_dataset("clevr-mv-raw", raw_sample, dst, progress=False)
    scene = json.loads((raw_sample / "scenes" / f"{NAME}.json").read_text())
    _, _, rows = _read_scene(dst, NAME)
    np.testing.assert_allclose(rows["camera_pose_world"][:, :3, 3], scene["camera"]["location"])
    np.testing.assert_allclose(rows["intrinsics"][0], [[70, 0, 31.5], [0, 70, 31.5], [0, 0, 1]])
    for view in range(VIEWS):
        pose = rows["camera_pose_world"][view]
        np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-12)
        assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
        world_to_camera = np.linalg.inv(pose)
        for obj in scene["objects"]:
            point = world_to_camera @ np.append(obj["3d_coords"], 1.0)
            pixel = rows["intrinsics"][view] @ (point[:3] / point[2])
            expected_x, expected_y, expected_depth = obj["pixel_coords"][view]
            assert point[2] == pytest.approx(expected_depth, abs=1e-4)
            # The generator rounds Blender's corner-origin coordinate: u_opencv + 0.5.
            assert abs(pixel[0] + 0.5 - expected_x) <= 0.5 + 1e-3
            assert abs(pixel[1] + 0.5 - expected_y) <= 0.5 + 1e-3


def test_packed_matches_raw(raw_sample, tmp_path):
    index = _make_packed(raw_sample, tmp_path / "packed")
    import_dataset("clevr-mv-raw", raw_sample, tmp_path / "raw_store", progress=False)
    report = import_dataset("clevr-mv", index, tmp_path / "packed_store", progress=False)
    assert report.images_written == VIEWS
    _, raw_meta, raw_rows = _read_scene(tmp_path / "raw_store", NAME)
    packed_store, packed_meta, packed_rows = _read_scene(tmp_path / "packed_store", NAME)
    for field in ("rgb", "label_map", "amodal_masks", "camera_pose_world", "intrinsics"):
        np.testing.assert_array_equal(packed_rows[field], raw_rows[field])
    assert packed_meta["depth_orders"] == raw_meta["depth_orders"]
    assert packed_meta["data_path"] == f"data/{NAME}.npy"
    assert packed_store.attrs["import_index"]["shape_gallery"] == ["cube", "sphere", "horse", "dolphin"]


def test_packed_data_root_option_and_lookup(raw_sample, tmp_path):
    index = _make_packed(raw_sample, tmp_path / "packed")
    moved = tmp_path / "elsewhere" / "index.json"
    moved.parent.mkdir()
    index.rename(moved)
    with pytest.raises(ImportSourceError, match="--data-root"):
        import_dataset("clevr-mv", moved, tmp_path / "s1", progress=False)
    assert not (tmp_path / "s1").exists()  # nothing created for a source that cannot be read
    report = import_dataset("clevr-mv", moved, tmp_path / "s2", data_root=tmp_path / "packed", progress=False)
    assert report.images_written == VIEWS


def test_resume_skips_complete_and_redoes_interrupted(raw_sample, tmp_path):
    index = _make_packed(raw_sample, tmp_path / "packed", num_scenes=4, views=3)
    dst = tmp_path / "store"
    first = import_dataset("clevr-mv", index, dst, limit=2, progress=False)
    assert first.scenes_written == 2
    with SceneStore.open(dst) as store:
        committed_before = store.images(slice(0, store.num_images))
    # Leave the state a crash would: scene 2 registered without images; scene 3 with one of
    # its three views committed (something other than this importer wrote it).
    _, images, masks = _source_arrays(raw_sample)
    with SceneStore.open(dst, mode="a") as store:
        store.add_scene("CLEVR_new_000002", {"source": "import/clevr-mv"})
        store.add_scene("CLEVR_new_000003", {"source": "import/clevr-mv"})
        store.append_images("CLEVR_new_000003", images[:1, ..., :3], np.eye(4)[None], np.eye(3)[None],
                            label_map=np.zeros((1, 64, 64), np.uint8),
                            amodal_masks=np.zeros((1, 4, 64, 64), bool))
    second = import_dataset("clevr-mv", index, dst, progress=False)
    assert (second.scenes_skipped, second.scenes_written) == (2, 2)
    with SceneStore.open(dst) as store:
        assert store.scene_ids == [f"CLEVR_new_{n:06d}" for n in range(4)]
        assert all(store.scene_state(s) == "complete" for s in store.scene_ids)
        for scene_id in store.scene_ids:
            rows = store.images(store.scene_image_indices(scene_id))
            np.testing.assert_array_equal(rows["rgb"], images[:3, ..., :3])
            assert rows["view_index"].tolist() == [0, 1, 2]
        # Committed images are untouched.
        again = store.images(slice(0, len(committed_before["rgb"])))
        for field, values in committed_before.items():
            np.testing.assert_array_equal(again[field], values)
    third = import_dataset("clevr-mv", index, dst, progress=False)
    assert (third.scenes_skipped, third.scenes_written) == (4, 0)


def test_sigkill_mid_import_then_resume(raw_sample, tmp_path):
    """Kill the importer process with SIGKILL while it writes; the store opens, what was
    committed is intact, and re-running finishes every scene exactly once."""
    index = _make_packed(raw_sample, tmp_path / "packed", num_scenes=30, views=4)
    dst = tmp_path / "store"
    command = [sys.executable, str(ROOT / "cli.py"), "data", "import", "clevr-mv", str(index), str(dst), "--no-progress"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            commit = dst / "commit" / "zarr.json"
            if commit.is_file():
                try:
                    scenes = json.loads(commit.read_text())["attributes"]["scenes"]
                except (ValueError, KeyError):
                    scenes = []
                if len(scenes) >= 3:
                    break
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    with SceneStore.open(dst) as store:
        killed_at = store.num_images
        before = store.images(slice(0, killed_at), fields=["rgb", "label_map"])
    report = import_dataset("clevr-mv", index, dst, progress=False)
    assert report.scenes_written + report.scenes_skipped + report.scenes_finished == 30
    with SceneStore.open(dst) as store:
        assert len(store.scene_ids) == 30 and len(set(store.scene_ids)) == 30
        assert all(store.scene_state(s) == "complete" for s in store.scene_ids)
        after = store.images(slice(0, killed_at), fields=["rgb", "label_map"])
        np.testing.assert_array_equal(after["rgb"], before["rgb"])
        np.testing.assert_array_equal(after["label_map"], before["label_map"])
        total = sum(len(store.scene_image_indices(s)) for s in store.scene_ids)
        assert total == 30 * 4


# --- bad input ----------------------------------------------------------------------------


def test_missing_mask_file_is_clear_and_keeps_committed_data(raw_sample, tmp_path):
    index = _make_packed(raw_sample, tmp_path / "packed", num_scenes=3, views=2)
    dst = tmp_path / "store"
    import_dataset("clevr-mv", index, dst, limit=1, progress=False)
    (tmp_path / "packed" / "data" / "CLEVR_new_000001.npy").unlink()
    with pytest.raises(ImportSourceError, match="CLEVR_new_000001.npy: scene archive not found"):
        import_dataset("clevr-mv", index, dst, progress=False)
    with SceneStore.open(dst) as store:
        assert store.scene_ids == ["CLEVR_new_000000"]
        assert store.num_images == 2 and store.uncommitted_rows() == 0


def test_corrupt_npz(raw_sample, tmp_path):
    index = _make_packed(raw_sample, tmp_path / "packed", num_scenes=2, views=2)
    path = tmp_path / "packed" / "data" / "CLEVR_new_000001.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImportSourceError, match="corrupt scene archive"):
        import_dataset("clevr-mv", index, tmp_path / "store", progress=False)
    with SceneStore.open(tmp_path / "store") as store:
        assert store.scene_ids == ["CLEVR_new_000000"]


def test_mask_image_shape_mismatch(raw_sample, tmp_path):
    mask_path = raw_sample / "masks" / f"{NAME}_03.npy"
    np.save(mask_path, np.load(mask_path)[:32, :32])
    with pytest.raises(ImportSourceError, match="masks do not match images|differ in shape"):
        import_dataset("clevr-mv-raw", raw_sample, tmp_path / "store", progress=False)


def test_wrong_depth_order_and_labels(raw_sample, tmp_path):
    scene_path = raw_sample / "scenes" / f"{NAME}.json"
    scene = json.loads(scene_path.read_text())
    scene["depth_orders"][2] = [0, 0, 1, 2]
    scene_path.write_text(json.dumps(scene))
    with pytest.raises(ImportSourceError, match=r"depth_orders\[2\]"):
        import_dataset("clevr-mv-raw", raw_sample, tmp_path / "store", progress=False)


def test_wrong_format_and_paths(raw_sample, tmp_path):
    index = _make_packed(raw_sample, tmp_path / "packed")
    with pytest.raises(ImportSourceError, match="not a folder"):
        import_dataset("clevr-mv-raw", index, tmp_path / "s", progress=False)
    with pytest.raises(ImportSourceError, match="not a CLE-MV index"):
        import_dataset("clevr-mv", raw_sample / "scenes" / f"{NAME}.json", tmp_path / "s", progress=False)
    with pytest.raises(ImportSourceError, match="file not found"):
        import_dataset("clevr-mv", tmp_path / "nope.json", tmp_path / "s", progress=False)
    with pytest.raises(ImportSourceError, match="unknown import format"):
        import_dataset("clevr", index, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_resume_into_a_foreign_store_is_refused(raw_sample, tmp_path):
    dst = tmp_path / "store"
    import_dataset("clevr-mv-raw", raw_sample, dst, progress=False)
    index = _make_packed(raw_sample, tmp_path / "packed")
    with pytest.raises(ImportTargetError, match="holds 'import/clevr-mv-raw'"):
        import_dataset("clevr-mv", index, dst, progress=False)


def test_cli_bad_input_is_one_line_and_nonzero(raw_sample, tmp_path):
    (raw_sample / "masks" / f"{NAME}_05.npy").write_bytes(b"garbage")
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "data", "import", "clevr-mv-raw", str(raw_sample),
         str(tmp_path / "store"), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "corrupt mask file" in lines[0] and f"{NAME}_05.npy" in lines[0]


def test_cli_unknown_format_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "data", "import", "clevr", str(tmp_path), str(tmp_path / "s")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: unknown import format 'clevr'; choose one of clevr-mv, clevr-mv-raw, gqn-jaco, "
        "multi-object, colmap, nerfstudio")


def test_imported_scene_gives_mulmon_viewpoints(raw_sample, tmp_path):
    """Through the torch dataset, the imported cameras give MulMON's own CLE-MV viewpoint vector
    (camera location, z := 0, unit length, minus [1,0,0])."""
    from datasets.torch_data import SceneViewsDataset

    dst = tmp_path / "store"
    import_dataset("clevr-mv-raw", raw_sample, dst, progress=False)
    item = SceneViewsDataset(dst, num_views=VIEWS, shuffle_views=False)[0]
    locations = np.asarray(json.loads((raw_sample / "scenes" / f"{NAME}.json").read_text())["camera"]["location"])
    locations[:, 2] = 0.0
    expected = locations / (np.linalg.norm(locations, axis=1, keepdims=True) + 1e-5) - [1.0, 0.0, 0.0]
    np.testing.assert_allclose(item["viewpoint"].numpy(), expected, atol=1e-5)
    assert item["amodal_masks"].shape == (VIEWS, 4, 64, 64)
