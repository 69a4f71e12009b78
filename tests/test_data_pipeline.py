"""prepare, torch datasets, viewpoints and the `ldsrig data` commands on small stores."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from datasets.prepare import crop_resize_intrinsics, prepare_store
from datasets.store import SceneStore, StoreError
from datasets.torch_data import ImageDataset, SceneViewsDataset
from datasets.viewpoints import clevr_mv_viewpoint, pose_viewpoint


def look_at(eye, target=(0.0, 0.0, 0.0)):
    from common.geometry import look_at as shared

    return shared(eye, target)


def project(K, T_world_cam, point):
    p_cam = np.linalg.inv(T_world_cam) @ np.append(point, 1.0)
    uv = K @ p_cam[:3]
    return uv[:2] / uv[2]


def make_projected_store(path, h=48, w=80, views=4):
    """A store whose images show a bright square exactly where a known 3-D point projects."""
    K = np.array([[60.0, 0, 39.5], [0, 60.0, 23.5], [0, 0, 1]])
    point = np.array([0.05, -0.03, 0.0])
    with SceneStore.create(path, h, w, ground_truth=True, max_objects=2, attrs={"source": "test"}) as store:
        store.add_scene("s0", {"objects": [{"shape": "marker", "position_world": point.tolist()}]})
        for v in range(views):
            angle = 2 * np.pi * v / views
            T = look_at([0.5 * np.cos(angle), 0.5 * np.sin(angle), 0.4])
            u, vv = np.round(project(K, T, point)).astype(int)
            rgb = np.zeros((h, w, 3), np.uint8)
            labels = np.zeros((h, w), np.uint8)
            rgb[vv - 2: vv + 3, u - 2: u + 3] = 255
            labels[vv - 2: vv + 3, u - 2: u + 3] = 1
            store.append_images("s0", rgb, T, K, label_map=labels, amodal_masks=labels[None] > 0)
        store.set_scene_state("s0", "complete")
    return path, point


def test_prepare_keeps_projection_consistent_and_source_untouched(tmp_path):
    src, point = make_projected_store(tmp_path / "raw.zarr")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file() and p.name != ".writer.lock"}
    dst = prepare_store(src, tmp_path / "train.zarr", size=24, progress=False)
    after = {p: p.read_bytes() for p in src.rglob("*") if p.is_file() and p.name != ".writer.lock"}
    assert before == after, "prepare modified the source store"
    out = SceneStore.open(dst)
    assert (out.height, out.width, out.num_images) == (24, 24, 4)
    rows = out.images(slice(0, 4))
    for K, T, labels, rgb in zip(rows["intrinsics"], rows["camera_pose_world"], rows["label_map"], rows["rgb"]):
        u, v = project(K, T, point)
        ys, xs = np.nonzero(labels)
        assert abs(xs.mean() - u) < 1.0 and abs(ys.mean() - v) < 1.0  # the marker is where K says
        assert set(np.unique(labels)) <= {0, 1}  # nearest neighbour keeps labels labels
        assert rgb[int(round(v)), int(round(u))].mean() > 100
    assert out.scene_state("s0") == "complete"
    assert out.attrs["prepare"]["size"] == 24
    with pytest.raises(StoreError, match="already exists"):
        prepare_store(src, dst, size=24, progress=False)


def test_crop_resize_intrinsics_identity_and_halving():
    K = np.array([[100.0, 0, 49.5], [0, 100.0, 29.5], [0, 0, 1]])
    assert np.allclose(crop_resize_intrinsics(K, 0, 0, 1.0), K)
    half = crop_resize_intrinsics(K, 20, 0, 0.5)  # crop 20 px on the left, halve
    assert np.allclose(half, [[50.0, 0, 14.5], [0, 50.0, 14.5], [0, 0, 1]])


def test_image_dataset_items(tmp_path):
    path, _ = make_projected_store(tmp_path / "s.zarr")
    for in_memory in (True, False):
        ds = ImageDataset(path, in_memory=in_memory)
        assert len(ds) == 4
        item = ds[2]
        assert item["image"].shape == (3, 48, 80) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() == 1.0
        assert item["label_map"].dtype == torch.int64 and item["amodal_masks"].shape == (2, 48, 80)
        assert item["viewpoint"].shape == (9,) and int(item["image_index"]) == 2
    loader = torch.utils.data.DataLoader(ImageDataset(path, in_memory=False), batch_size=2, num_workers=2)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [2, 2]


def test_scene_views_dataset_samples_views(tmp_path):
    path, _ = make_projected_store(tmp_path / "s.zarr")
    torch.manual_seed(0)
    ds = SceneViewsDataset(path, num_views=3)
    item = ds[0]
    assert item["image"].shape == (3, 3, 48, 80) and item["viewpoint"].shape == (3, 9)
    assert len(set(item["image_index"].tolist())) == 3
    ordered = SceneViewsDataset(path, shuffle_views=False)[0]
    assert ordered["image_index"].tolist() == [0, 1, 2, 3]
    with pytest.raises(StoreError, match="has 9 views"):
        SceneViewsDataset(path, num_views=9)


def test_scene_views_nearest_window_takes_neighbouring_cameras(tmp_path):
    path, _ = make_projected_store(tmp_path / "ring.zarr", views=8)  # cameras every 45 deg round
    for in_memory in (True, False):
        ordered = SceneViewsDataset(path, num_views=3, shuffle_views=False, view_window="nearest",
                                    in_memory=in_memory)[0]
        assert ordered["image_index"].tolist() == [0, 1, 7]  # the first view, then its two neighbours
        ds = SceneViewsDataset(path, num_views=3, view_window="nearest", in_memory=in_memory)
        anchors = set()
        for seed in range(12):
            views = ds[(0, seed)]["image_index"].tolist()
            assert views == ds[(0, seed)]["image_index"].tolist()  # a seeded draw replays
            centre = next(v for v in views if {(v - 1) % 8, (v + 1) % 8} <= set(views))
            assert set(views) == {(centre - 1) % 8, centre, (centre + 1) % 8}
            anchors.add(centre)
        assert len(anchors) > 3  # windows from all round, not one
    with pytest.raises(ValueError, match="view_window"):
        SceneViewsDataset(path, num_views=3, view_window="arc")
    # the model config chooses it: training and evaluation open the store the same way
    from common.errors import ConfigError
    from lds.data import open_store_dataset
    from lds.models.mulmon import MulMONConfig

    cfg = MulMONConfig(height=48, width=80, num_views=3, view_window="nearest")
    assert open_store_dataset(path, cfg, training=False)[0]["image_index"].tolist() == [0, 1, 7]
    with pytest.raises(ConfigError, match="view_window"):
        MulMONConfig(view_window="arc")


def test_viewpoint_vectors():
    T = look_at([3.0, 0.0, 2.0])
    assert np.allclose(clevr_mv_viewpoint(T), [0, 0, 0])  # MulMON: unit xy direction minus [1,0,0]
    assert np.allclose(clevr_mv_viewpoint(look_at([0.0, -5.0, 2.0])), [-1, -1, 0])
    v = pose_viewpoint(T)
    assert np.allclose(v[:3], [3, 0, 2]) and np.isclose(np.linalg.norm(v[3:6]), 1)
    assert np.isclose(np.dot(v[3:6], v[6:9]), 0, atol=1e-6)


def test_data_cli_info_check_prepare(tmp_path):
    runner = CliRunner()
    path, _ = make_projected_store(tmp_path / "s.zarr")
    result = runner.invoke(app, ["data", "info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["images"] == 4 and info["ground_truth"] and info["sources"] == {"test": 1}
    result = runner.invoke(app, ["data", "check", str(path), "-q"])
    assert result.exit_code == 0 and "ok" in result.output
    result = runner.invoke(app, ["data", "prepare", str(path), str(tmp_path / "p.zarr"), "--size", "16", "-q"])
    assert result.exit_code == 0, result.output
    assert SceneStore.open(tmp_path / "p.zarr").height == 16


def test_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "cli", "data", "info", str(tmp_path / "nope")],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no store at") and "Traceback" not in proc.stderr
    (tmp_path / "junk").mkdir()
    proc = subprocess.run([sys.executable, "-m", "cli", "data", "check", str(tmp_path / "junk")],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 1 and "not a zarr store" in proc.stdout
