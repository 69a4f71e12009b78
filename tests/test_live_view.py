"""The Rerun views, read back with the Rerun SDK: `ldsrig capture session --sim --rrd` (the live
view: plan, arm, camera, every committed frame) and `ldsrig data view` (a stored scene's views in
their poses), their one-line errors, and the capture observer they hang on."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from common.geometry import look_at, pinhole_intrinsics
from datasets.store import SceneStore

ROOT = Path(__file__).resolve().parents[1]
rerun = pytest.importorskip("rerun", reason="the view extra (rerun-sdk) is not installed")


# -- reading a recording back ------------------------------------------------------------------------

def read_rrd(path) -> dict[str, list[dict]]:
    """Every logged row of an .rrd, per entity path: {column name: value}, timelines as integers
    (sequence numbers, nanoseconds), plus "static"."""
    import pyarrow as pa
    from rerun.chunk import RrdReader

    rows: dict[str, list[dict]] = defaultdict(list)
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        names = [n for n in batch.schema.names if not n.startswith("rerun.controls")]
        columns = {}
        for name in names:
            column = batch.column(name)
            if pa.types.is_timestamp(column.type):
                column = column.cast(pa.int64())
            columns[name] = column.to_pylist()
        for i in range(batch.num_rows):
            rows[chunk.entity_path].append({"static": chunk.is_static, **{n: columns[n][i] for n in names}})
    return rows


def component(rows: list[dict], name: str) -> list[dict]:
    """The rows that carry ``name`` (an archetype:field column), in step/view order."""
    found = [r for r in rows if r.get(name) is not None]
    return sorted(found, key=lambda r: (r.get("step") or 0, r.get("view") or 0))


def transform_of(row: dict) -> np.ndarray:
    """The 4x4 camera-to-world of a Transform3D row (Rerun stores mat3x3 column-major)."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(row["Transform3D:mat3x3"][0], dtype=np.float64).reshape(3, 3).T
    T[:3, 3] = row["Transform3D:translation"][0]
    return T


def _ldsrig(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the real command line in this process: (exit code, stdout, stderr)."""
    import cli

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["ldsrig", *map(str, args)])
    code = cli.run()
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code: int, err: str, *words: str) -> None:
    text = err.strip()
    assert code != 0
    assert "Traceback" not in err and text.startswith("error:"), err
    assert len(text.splitlines()) == 1, text
    for word in words:
        assert word in text, text


@pytest.fixture
def no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


def make_store(path, scenes=("a", "b"), views=3, identity=False) -> Path:
    rng = np.random.default_rng(0)
    H, W = 12, 16
    with SceneStore.create(path, H, W) as st:
        for s, sid in enumerate(scenes):
            objects = [{"shape": "cube", "color": "red", "color_rgb": [0.8, 0.1, 0.1], "half_extent": 0.02,
                        "position_world": [0.01 * s, 0.0, 0.02], "rotation": 30.0}]
            st.add_scene(sid, {"objects": objects})
            angles = np.linspace(0, 2, views) + s
            poses = (np.repeat(np.eye(4)[None], views, 0) if identity else
                     np.stack([look_at([0.3 * np.cos(t), 0.3 * np.sin(t), 0.2 + 0.01 * k], [0, 0, 0.02])
                               for k, t in enumerate(angles)]))
            K = np.repeat(pinhole_intrinsics(14.0, 15.0, W, H)[None], views, 0)
            st.append_images(sid, rng.integers(0, 255, (views, H, W, 3), dtype=np.uint8), poses, K,
                             timestamp=1.7e9 + 10 * s + np.arange(views, dtype=float))
    return Path(path)


# -- data view ---------------------------------------------------------------------------------------

def test_data_view_places_every_view_in_its_pose(tmp_path, monkeypatch, capsys, no_display):
    store = make_store(tmp_path / "s.zarr")
    code, out, err = _ldsrig(monkeypatch, capsys, "data", "view", store, "--scene", "b")
    assert code == 0, err
    rrd = tmp_path / "s.rrd"  # no display: STORE.rrd beside the store, and it says so
    assert f"3 views of 1 scene(s) (b) sent to {rrd} (no display" in out
    rows = read_rrd(rrd)
    assert rows["/world"][0]["ViewCoordinates:xyz"] == [[3, 5, 1]]  # RIGHT_HAND_Z_UP
    assert not any("/scenes/a" in e for e in rows)  # only the scene asked for
    with SceneStore.open(store) as st:
        data = st.images(st.scene_image_indices("b"))
    for k in range(3):
        entity = f"/world/scenes/b/view_{k:03d}"
        (tf,) = component(rows[entity], "Transform3D:translation")
        T = transform_of(tf)
        np.testing.assert_allclose(T[:3, 3], data["camera_pose_world"][k][:3, 3], atol=1e-6)
        np.testing.assert_allclose(T[:3, :3], data["camera_pose_world"][k][:3, :3], atol=1e-6)
        assert tf["view"] == k and tf["capture_time"] == int(round(data["timestamp"][k] * 1e9))
        (pin,) = component(rows[entity], "Pinhole:image_from_camera")
        K = np.asarray(pin["Pinhole:image_from_camera"][0]).reshape(3, 3).T
        np.testing.assert_allclose(K, data["intrinsics"][k] + [[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]], atol=1e-5)
        assert pin["Pinhole:resolution"] == [[16.0, 12.0]] and pin["Pinhole:camera_xyz"] == [[3, 2, 5]]  # RDF
        (img,) = component(rows[entity + "/image"], "Image:buffer")
        assert img["Image:format"][0]["width"] == 16 and img["Image:format"][0]["height"] == 12
        assert bytes(img["Image:buffer"][0]) == data["rgb"][k].tobytes()
    (boxes,) = rows["/world/scenes/b/objects"]
    np.testing.assert_allclose(boxes["Boxes3D:centers"], [[0.01, 0.0, 0.02]], atol=1e-7)


def test_data_view_all_scenes_and_an_explicit_rrd(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISPLAY", ":0")  # a display, but --rrd: the file only, no viewer
    store = make_store(tmp_path / "s.zarr")
    code, out, err = _ldsrig(monkeypatch, capsys, "data", "view", store, "--all", "--rrd", tmp_path / "x" / "v.rrd")
    assert code == 0, err
    assert "6 views of 2 scene(s) (a, b)" in out and "viewer" not in out
    rows = read_rrd(tmp_path / "x" / "v.rrd")
    assert {e for e in rows if "/view_" in e and not e.endswith("/image")} == {
        f"/world/scenes/{s}/view_{k:03d}" for s in "ab" for k in range(3)}
    # without --scene or --all: the first scene only
    code, out, err = _ldsrig(monkeypatch, capsys, "data", "view", store, "--rrd", tmp_path / "first.rrd")
    assert code == 0 and "(a)" in out, err


def test_data_view_bad_input_is_one_line(tmp_path, monkeypatch, capsys, no_display):
    code, _, err = _ldsrig(monkeypatch, capsys, "data", "view", tmp_path / "nothing.zarr")
    _one_line_error(code, err, "no store at")
    store = make_store(tmp_path / "s.zarr")
    code, _, err = _ldsrig(monkeypatch, capsys, "data", "view", store, "--scene", "zzz")
    _one_line_error(code, err, "no scene 'zzz'", "its scenes: a, b")
    flat = make_store(tmp_path / "flat.zarr", scenes=("m",), views=2, identity=True)
    code, _, err = _ldsrig(monkeypatch, capsys, "data", "view", flat)
    _one_line_error(code, err, "scene 'm'", "has no camera poses")
    assert not (tmp_path / "flat.rrd").exists()  # refused before any recording was started


def test_without_rerun_sdk_the_views_say_how_to_install_it(tmp_path, monkeypatch, capsys, no_display):
    monkeypatch.setitem(sys.modules, "rerun", None)  # `import rerun` now fails as if not installed
    store = make_store(tmp_path / "s.zarr")
    code, _, err = _ldsrig(monkeypatch, capsys, "data", "view", store)
    _one_line_error(code, err, "pip install 'ldsrig[view]'")
    code, _, err = _ldsrig(monkeypatch, capsys, "capture", "session", "--sim", "--no-prompt", "--view",
                           "--store", tmp_path / "cap.zarr")
    _one_line_error(code, err, "pip install 'ldsrig[view]'")
    assert not (tmp_path / "cap.zarr").exists()  # refused before the store or the arm was touched
    # the capture itself does not need it (the core commands never import rerun)
    assert "rerun" not in {name.split(".")[0] for name in _imports_outside_viz()}


# -- the live view of a capture ----------------------------------------------------------------------

def test_capture_session_live_view_records_plan_arm_and_every_committed_frame(tmp_path, monkeypatch, capsys,
                                                                               no_display):
    store_path, rrd = tmp_path / "cap.zarr", tmp_path / "live.rrd"
    code, out, err = _ldsrig(monkeypatch, capsys, "capture", "session", "--sim", "--no-prompt", "--scenes", "1",
                             "--store", store_path, "--rrd", rrd, "--set", "camera.width=32",
                             "--set", "camera.height=24", "--set", "camera.sim_spp=1", "--set", "n_views=3")
    assert code == 0, err
    assert f"live view: {rrd}" in out and "1 scenes captured (3 views)" in out
    rows = read_rrd(rrd)
    with SceneStore.open(store_path) as st:
        (sid,) = st.scene_ids
        data = st.images(st.scene_image_indices(sid))
        meta = st.scene_metadata(sid)
    from robot.planning import ViewPlan

    plan = ViewPlan.from_dict(meta["plan"])

    # the planned viewpoints, in visiting order
    (planned,) = component(rows["/world/plan/viewpoints"], "Points3D:positions")
    np.testing.assert_allclose(planned["Points3D:positions"], plan.ordered_camera_poses[:, :3, 3], atol=1e-6)
    assert planned["Points3D:labels"] == ["view 0", "view 1", "view 2"]

    # every committed frame: its pose, intrinsics and image exactly as stored
    frames = []
    for k in range(3):
        entity = f"/world/scenes/{sid}/view_{k:03d}"
        (tf,) = component(rows[entity], "Transform3D:translation")
        np.testing.assert_allclose(transform_of(tf), data["camera_pose_world"][k], atol=1e-6)
        assert tf["view"] == k and tf["capture_time"] == int(round(data["timestamp"][k] * 1e9))
        (img,) = component(rows[entity + "/image"], "Image:buffer")
        assert bytes(img["Image:buffer"][0]) == data["rgb"][k].tobytes()
        (pin,) = component(rows[entity], "Pinhole:image_from_camera")
        np.testing.assert_allclose(np.asarray(pin["Pinhole:image_from_camera"][0]).reshape(3, 3).T[:2, :2],
                                   data["intrinsics"][k][:2, :2], atol=1e-4)
        frames.append(tf["step"])
    assert frames == sorted(frames)

    # the arm moved: link chains along the trajectories, from the base at the rig's base pose to
    # the camera; and where the camera on the arm was when each frame came in is that frame's pose
    links = component(rows["/world/arm/links"], "LineStrips3D:strips")
    assert len(links) > 3 * 3
    from robot.config import load_rig_config

    rig = load_rig_config(None, None)
    base = np.asarray(rig.T_world_base)[:3, 3]
    for row in links:
        chain = np.asarray(row["LineStrips3D:strips"][0])
        assert chain.shape[0] >= 8  # Panda: base, 7 joints, flange, camera
        np.testing.assert_allclose(chain[0], base, atol=1e-6)
    cameras = component(rows["/world/arm/camera"], "Transform3D:translation")
    for k, step in enumerate(frames):
        before = [c for c in cameras if c["step"] < step][-1]
        np.testing.assert_allclose(transform_of(before), data["camera_pose_world"][k], atol=1e-5)
        chain_before = [r for r in links if r["step"] < step][-1]
        np.testing.assert_allclose(chain_before["LineStrips3D:strips"][0][-1], data["camera_pose_world"][k][:3, 3],
                                   atol=1e-5)
    (frustum,) = component(rows["/world/arm/camera"], "Pinhole:resolution")
    assert frustum["Pinhole:resolution"] == [[32.0, 24.0]]
    feed = component(rows["/world/arm/camera/image"], "EncodedImage:blob")
    assert [f["step"] for f in feed] == frames  # the live feed: one JPEG per committed frame
    # the arm went home after the scene: the last chain ends at the home camera position
    home_camera = np.asarray(rig.T_world_base) @ _fk_flange(plan.home) @ np.asarray(rig.T_flange_camera)
    np.testing.assert_allclose(links[-1]["LineStrips3D:strips"][0][-1], home_camera[:3, 3], atol=1e-5)


def _fk_flange(q):
    from robot.config import load_rig_config
    from robot.model import arm_model_for

    return arm_model_for(load_rig_config(None, None)).fkine_flange(q)


def test_viewer_with_a_display_file_without_one_and_always_with_rrd(monkeypatch, no_display):
    from viz.rerun_view import ViewTarget, choose_target, default_rrd_path

    assert default_rrd_path("out/raw.zarr") == Path("out/raw.rrd") and default_rrd_path("st") == Path("st.rrd")
    assert choose_target(False, None, "d.rrd") is None                       # no view asked for
    assert choose_target(True, None, "d.rrd") == ViewTarget(False, Path("d.rrd"))
    assert choose_target(True, "x.rrd", "d.rrd") == ViewTarget(False, Path("x.rrd"))
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert choose_target(True, None, "d.rrd") == ViewTarget(True, None)
    assert choose_target(True, "x.rrd", "d.rrd") == ViewTarget(True, Path("x.rrd"))   # both
    assert choose_target(False, "x.rrd", "d.rrd") == ViewTarget(False, Path("x.rrd"))


# -- the observer hook -------------------------------------------------------------------------------

def test_a_failing_observer_is_dropped_and_motion_is_reported_in_order():
    from capture.observer import CaptureObserver, SafeObserver, report_motion
    from robot.arm import MovePlan
    from robot.trajectory import JointTrajectory

    class Recorder(CaptureObserver):
        def __init__(self):
            self.states = []

        def on_arm_state(self, q):
            self.states.append(q.copy())

        def on_scene_end(self, scene_id, state):
            raise RuntimeError("viewer went away")

    t = np.linspace(0.0, 1.0, 101)
    q = np.stack([t, -t], axis=1)
    move = MovePlan([q[-1]], [JointTrajectory(t, q, q, q)])
    rec = Recorder()
    safe = SafeObserver(rec)
    report_motion(safe, move, interval_s=0.25)
    assert np.allclose([s[0] for s in rec.states], [0.0, 0.25, 0.5, 0.75, 1.0])
    safe.on_scene_end("s", "complete")       # raises inside: logged, observer dropped
    report_motion(safe, move)
    assert len(rec.states) == 5 and safe.inner is None


def _imports_outside_viz():
    for area in ("capture", "robot", "datasets", "common", "lds"):
        for path in sorted((ROOT / area).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    yield from (alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    yield node.module
