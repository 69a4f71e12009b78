"""The pose audit on a simulated capture (Mitsuba renders through known poses): with the true
poses no view is flagged; with a known error injected into one view's stored pose (a 1 cm
hand-eye offset, or a 1 degree turn like a frame taken before the arm settled), exactly that view
is flagged, through the real command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from datasets.store import SceneStore
from tests.posed_stores import render_textured_capture


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return render_textured_capture(tmp_path_factory.mktemp("audit") / "capture.zarr", views=6)


def _with_pose_error(src: Path, dst: Path, view: int, camera_motion: np.ndarray) -> Path:
    """A copy of ``src`` whose stored pose of ``view`` is moved by ``camera_motion`` (a rigid
    transform in that camera's own frame); the images stay as rendered."""
    with SceneStore.open(src) as source, SceneStore.create(dst, source.height, source.width) as out:
        (scene_id,) = source.scene_ids
        rows = source.images(source.scene_image_indices(scene_id))
        poses = rows["camera_pose_world"].copy()
        poses[view] = poses[view] @ camera_motion
        out.add_scene(scene_id, source.scene_metadata(scene_id))
        out.append_images(scene_id, rows["rgb"], poses, rows["intrinsics"])
        out.set_scene_state(scene_id, "complete")
    return dst


def _motion(translation=(0.0, 0.0, 0.0), rotation_deg=(0.0, 0.0, 0.0)) -> np.ndarray:
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    motion[:3, 3] = translation
    return motion


def _audit_cli(store: Path, capsys, monkeypatch):
    import cli

    monkeypatch.setattr(sys, "argv", ["ldsrig", "data", "audit-poses", str(store), "--json"])
    capsys.readouterr()
    code = cli.run()
    return code, json.loads(capsys.readouterr().out)


def test_true_poses_flag_no_view(capture, capsys, monkeypatch):
    code, report = _audit_cli(capture, capsys, monkeypatch)
    assert code == 0 and report["flagged"] == []
    (scene,) = report["scenes"]
    assert all(v["points"] >= 100 for v in scene["views"])      # every view really audited
    assert max(v["median_px"] for v in scene["views"]) < 0.6     # features agree with true poses


@pytest.mark.parametrize("view, motion", [
    (3, _motion(translation=(0.01, 0.0, 0.0))),          # hand-eye: 1 cm sideways
    (1, _motion(rotation_deg=(0.0, 1.0, 0.0))),           # not settled: turned 1 degree
], ids=["hand-eye-1cm", "unsettled-1deg"])
def test_exactly_the_view_with_an_injected_pose_error_is_flagged(capture, view, motion, tmp_path,
                                                                 capsys, monkeypatch):
    store = _with_pose_error(capture, tmp_path / "wrong.zarr", view, motion)
    code, report = _audit_cli(store, capsys, monkeypatch)
    assert code == 1                                       # flagged views fail the command
    assert report["flagged"] == [["capture", view]]
    (scene,) = report["scenes"]
    errors = {v["view_index"]: v["median_px"] for v in scene["views"]}
    others = max(e for v, e in errors.items() if v != view)
    assert errors[view] > 2.0 and errors[view] > 3 * others, errors
