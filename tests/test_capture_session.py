"""Capture sessions on the simulated rig, end to end: the operator prompts driven from a script,
Ctrl-C, a camera that dies mid-scene, and a process killed with SIGKILL then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from capture.camera import CameraError
from capture.session import (CaptureConfig, CaptureInterrupted, CaptureRig, capture_scene, contact_sheet,
                             image_checksums, open_store_for_capture, run_session)
from common.config import load_config
from datasets.store import SceneStore

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["camera.width=64", "camera.height=48", "camera.sim_spp=2", "n_views=4"]


def _rig(extra=()) -> CaptureRig:
    return CaptureRig(load_config(CaptureConfig, None, SMALL + list(extra)))


def _scripted(answers):
    answers = list(answers)
    asked = []

    def prompt(text):
        asked.append(text)
        if not answers:
            raise EOFError
        return answers.pop(0)
    return prompt, asked


def test_simulated_session_with_scripted_operator(tmp_path):
    rig = _rig()
    # scene 1: capture; scene 2: add notes, capture; scene 3: redo scene 2 instead, then skip.
    prompt, asked = _scripted(["", "n", "cubes touching", "", "r", "x", "s"])
    echoed = []
    with rig, open_store_for_capture(tmp_path / "store", rig.cfg.camera, rig.sim) as store:
        result = run_session(store, rig, 3, prompt=prompt, echo=echoed.append)
        plan = rig.plan()
    assert [s.scene_id for s in result.scenes] == ["scene_0000", "scene_0002"]
    assert result.redone == ["scene_0001"] and result.skipped == 1 and not result.quit_early
    assert any("unknown choice 'x'" in line for line in echoed)
    assert any(line.startswith("scene_0000: complete, 4/4 views") for line in echoed)

    with SceneStore.open(tmp_path / "store") as store:
        assert store.has_ground_truth and store.num_images == 12
        assert [store.scene_state(s) for s in store.scene_ids] == ["complete", "aborted", "complete"]
        assert store.scene_metadata("scene_0001")["notes"] == "cubes touching"
        assert store.scene_metadata("scene_0002")["notes"].startswith("redo of scene_0001")
        for sid in store.scene_ids:
            meta = store.scene_metadata(sid)
            assert meta["source"] == "sim-rig" and 2 <= len(meta["objects"]) <= 4
            idx = store.scene_image_indices(sid)
            rows = store.images(idx)
            assert rows["view_index"].tolist() == [0, 1, 2, 3]
            # Poses and joints are those the arm reached: the plan's, in visiting order.
            np.testing.assert_allclose(rows["camera_pose_world"], plan.ordered_camera_poses, atol=1e-6)
            np.testing.assert_allclose(rows["joint_positions"][:, :7], plan.ordered_joint_positions, atol=1e-6)
            assert np.all(np.isnan(rows["joint_positions"][:, 7]))  # the Panda has 7 joints
            assert rows["intrinsics"][0, 0, 0] > 0 and np.all(np.diff(rows["timestamp"]) > 0)
            # Ground truth from the renderer: every cube visible somewhere, labels within range.
            assert rows["label_map"].max() == len(meta["objects"])
            assert rows["amodal_masks"][:, : len(meta["objects"])].any(axis=(0, 2, 3)).all()
            assert rows["rgb"].std() > 5  # a real rendering, not a blank frame
            runs = meta["capture_runs"]
            assert runs[-1]["outcome"] == "complete" and len(runs[-1]["views"]) == 4
        sheet = contact_sheet(store, "scene_0000", tmp_path / "sheet.png")
        assert cv2.imread(str(sheet)).shape[0] > 48


def test_ctrl_c_stops_the_arm_and_the_scene_resumes(tmp_path):
    rig = _rig(["n_views=5"])

    def ctrl_c_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with rig, open_store_for_capture(tmp_path / "store", rig.cfg.camera, rig.sim) as store:
        with pytest.raises(CaptureInterrupted, match="2 of 5 views committed; finish it with `ldsrig capture scene --resume --scene s`"):
            capture_scene(store, "s", rig, progress=ctrl_c_after_two, log=lambda s: None)
        assert not rig.arm.is_moving()
        assert store.scene_state("s") == "open" and len(store.scene_image_indices("s")) == 2
        before = image_checksums(store, store.scene_image_indices("s"))
        summary = capture_scene(store, "s", rig, resume=True, log=lambda s: None)
        assert summary.views_before == 2 and len(summary.views) == 3
        idx = store.scene_image_indices("s")
        assert store.images(idx)["view_index"].tolist() == [0, 1, 2, 3, 4]
        assert image_checksums(store, idx[:2]) == before
        assert store.scene_state("s") == "complete"
        assert [r["outcome"] for r in store.scene_metadata("s")["capture_runs"]] == ["interrupted", "complete"]


def test_camera_that_stops_delivering_stops_the_scene_and_keeps_the_views(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):  # textured frames that pass the blur and exposure checks
        cv2.imwrite(str(tmp_path / f"f_{i:02d}.png"), rng.integers(30, 220, (48, 64, 3), dtype=np.uint8))
    rig = CaptureRig(load_config(CaptureConfig, None, [
        "camera.backend=opencv", f"camera.source={tmp_path / 'f_%02d.png'}", "camera.width=64",
        "camera.height=48", "camera.fx=60", "camera.fy=60", "camera.cx=32", "camera.cy=24", "n_views=5"]))
    with rig, open_store_for_capture(tmp_path / "store", rig.cfg.camera, rig.sim) as store:
        with pytest.raises(CameraError, match="stopped at view 3: arm halted, 3 of 5 views kept"):
            capture_scene(store, "real", rig, log=lambda s: None)
        assert not store.has_ground_truth
        assert store.scene_state("real") == "open" and len(store.scene_image_indices("real")) == 3
        np.testing.assert_allclose(store.images([0])["intrinsics"][0], [[60, 0, 32], [0, 60, 24], [0, 0, 1]])


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _committed(path) -> int:
    try:
        with SceneStore.open(path) as store:
            return store.num_images
    except Exception:  # not created yet
        return 0


def test_kill_9_mid_scene_then_resume_keeps_committed_views_bit_for_bit(tmp_path):
    store_path = tmp_path / "store"
    sets = [f"--set={s}" for s in SMALL + ["n_views=8", "arm_realtime=true"]]
    proc = _cli("capture", "scene", "--sim", "--store", str(store_path), "--scene", "k", *sets)
    deadline = time.monotonic() + 120
    while _committed(store_path) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the capture never committed 3 views"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with SceneStore.open(store_path) as store:
        n_before = store.num_images
        before = image_checksums(store, store.scene_image_indices("k"))
        assert 3 <= n_before < 8 and store.scene_state("k") == "open"

    done = _cli("capture", "scene", "--sim", "--store", str(store_path), "--scene", "k", "--resume", *sets[:-1])
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert "k: complete, 8/8 views" in out
    with SceneStore.open(store_path) as store:
        idx = store.scene_image_indices("k")
        rows = store.images(idx)
        assert store.num_images == 8 and store.scene_state("k") == "complete"
        assert rows["view_index"].tolist() == list(range(8))
        assert image_checksums(store, idx[:n_before]) == before
        assert len({p.tobytes() for p in rows["camera_pose_world"]}) == 8  # no view taken twice


def test_session_cli_reads_operator_answers_from_stdin(tmp_path):
    sets = [f"--set={s}" for s in SMALL + ["n_views=2"]]
    proc = _cli("capture", "session", "--sim", "--store", str(tmp_path / "store"), "--scenes", "3", *sets,
                "--contact-sheets", str(tmp_path / "sheets"), stdin=subprocess.PIPE)
    out, err = proc.communicate("n\nfirst scene\n\nq\n", timeout=300)
    assert proc.returncode == 0, err
    assert "arrange" not in out and "simulated: new random cubes for scene_0000" in out
    assert "session: 1 scenes captured (2 views), 0 skipped, 0 redone, quit early" in out
    assert (tmp_path / "sheets" / "scene_0000.png").is_file()
    with SceneStore.open(tmp_path / "store") as store:
        assert store.scene_metadata("scene_0000")["notes"] == "first scene"


def test_a_scene_resumes_from_home_at_every_view_index():
    """Interrupted after k views, a resumed run starts at home; the planner checked home ->
    view 0 and view -> view, not home -> view k (with 12 views, k = 4 and 10 were refused).
    The arm now reaches view k by the checked route, from a fresh arm at home, for every k."""
    from robot.backends import open_arm
    from capture.session import _reach_resume_view

    rig = _rig(["n_views=12"])
    tour = rig.plan().ordered_joint_positions
    for k in range(1, len(tour)):
        with open_arm(rig.rig, "sim", fast=True) as arm:      # a new process: the arm at home
            _reach_resume_view(arm, tour, k, log=lambda s: None)
            arm.move_to(tour[k])                              # what the capture loop does next
            np.testing.assert_allclose(arm.joint_positions(), tour[k], atol=1e-6)


def test_interrupted_where_home_to_view_is_unsafe_then_resumed(tmp_path):
    """The end-to-end case: interrupted after 4 of 12 views, resumed by a new process' rig."""
    rig = _rig(["n_views=12"])

    def stop_after_four(done, total):
        if done == 4:
            raise KeyboardInterrupt

    with rig, open_store_for_capture(tmp_path / "store", rig.cfg.camera, rig.sim) as store:
        with pytest.raises(CaptureInterrupted):
            capture_scene(store, "s", rig, progress=stop_after_four, log=lambda s: None)
    resumed, logged = _rig(["n_views=12"]), []
    with resumed, open_store_for_capture(tmp_path / "store", resumed.cfg.camera, resumed.sim) as store:
        summary = capture_scene(store, "s", resumed, resume=True, log=logged.append)
        assert store.scene_state("s") == "complete" and len(store.scene_image_indices("s")) == 12
    assert summary.views_committed == 12
    assert any("planned route" in line for line in logged)


def test_sigterm_mid_scene_stops_the_arm_records_it_and_releases_the_lock(tmp_path):
    store_path = tmp_path / "store"
    sets = [f"--set={s}" for s in SMALL + ["n_views=8", "arm_realtime=true"]]
    proc = _cli("capture", "scene", "--sim", "--store", str(store_path), "--scene", "t", *sets)
    deadline = time.monotonic() + 120
    while _committed(store_path) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the capture never committed 2 views"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err
    assert "interrupted at view" in err + out and "arm stopped" in err + out
    with SceneStore.open(store_path, mode="a") as store:       # the writer lock was released
        assert store.scene_state("t") == "open"
        assert store.scene_metadata("t")["capture_runs"][-1]["outcome"] == "interrupted"


def test_an_edited_plan_is_checked_whole_before_the_first_motion(tmp_path):
    import json

    from robot.errors import PlanningError

    plan_path = tmp_path / "plan.json"
    _rig().plan().save(plan_path)
    data = json.loads(plan_path.read_text())
    data["views"][2]["joint_positions"][1] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(data))
    rig = _rig([f"plan={tmp_path / 'nan.json'}"])
    with rig, open_store_for_capture(tmp_path / "store", rig.cfg.camera, rig.sim) as store:
        with pytest.raises(PlanningError, match="view 2 has non-finite joint_positions"):
            capture_scene(store, "s", rig, log=lambda s: None)
        assert store.num_images == 0 and not store.all_scenes()
    data = json.loads(plan_path.read_text())
    view = int(data["order"][3])
    data["views"][view]["joint_positions"][3] = 3.5           # far outside the Panda's limits
    (tmp_path / "unsafe.json").write_text(json.dumps(data))
    rig = _rig([f"plan={tmp_path / 'unsafe.json'}"])
    with rig, open_store_for_capture(tmp_path / "store", rig.cfg.camera, rig.sim) as store:
        home = rig.arm.joint_positions()
        with pytest.raises(PlanningError, match="unsafe on this rig: joint_limits"):
            capture_scene(store, "s", rig, log=lambda s: None)
        np.testing.assert_array_equal(rig.arm.joint_positions(), home)
        assert store.num_images == 0 and not store.all_scenes()
    # the empty store left behind does not block a capture with another image size
    rig = _rig(["camera.width=32", "camera.height=24", "n_views=2"])
    with rig, open_store_for_capture(tmp_path / "store", rig.cfg.camera, rig.sim) as store:
        capture_scene(store, "s", rig, log=lambda s: None)
        assert store.width == 32 and store.num_images == 2
