"""Rig config, kinematics, look-at, viewpoint planning and the plan file."""

import json

import numpy as np
import pytest

from common.errors import ConfigError, UserError
from robot.config import ViewPlanConfig, load_rig_config, pose_matrix
from robot.errors import ModelLoadError, PlanningError
from common.geometry import look_at
from robot.geometry import invert, pose_error
from robot.model import ArmModel, arm_model_for, segment_distances
from robot.planning import ViewPlan, joint_travel, order_views, plan_viewpoints
from robot.safety import SafetyChecker


@pytest.fixture(scope="module")
def rig():
    return load_rig_config()


@pytest.fixture(scope="module")
def plan(rig):
    return plan_viewpoints(rig, 12, seed=3)


def test_default_rig_loads_and_overrides_apply(tmp_path):
    rig = load_rig_config(None, ["views.radius=0.4", "base_pose_world=[-0.5, 0.1, 0, 0, 0, 1.5708]"])
    assert rig.views.radius == 0.4
    T = rig.T_world_base
    assert np.allclose(T[:3, 3], [-0.5, 0.1, 0.0])
    assert np.allclose(T[:3, 0], [0.0, 1.0, 0.0], atol=1e-4)     # yaw 90 deg
    path = tmp_path / "rig.yaml"
    path.write_text("model: DH.UR5\nviews:\n  n_views: 20\n")
    rig2 = load_rig_config(path)
    assert rig2.model == "DH.UR5" and rig2.views.n_views == 20
    assert rig2.views.radius == ViewPlanConfig().radius             # unset in the file: the default


def test_bad_config_values_are_user_errors():
    with pytest.raises(ConfigError, match="workspace"):
        load_rig_config(None, ["workspace.min=[0, 0, 2]"])
    with pytest.raises(ConfigError, match="flange_to_camera"):
        pose_matrix([[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "flange_to_camera")
    with pytest.raises(ConfigError, match="unknown"):
        load_rig_config(None, ["views.radiuss=0.3"])


def test_models_that_need_the_network_are_refused_with_alternatives():
    with pytest.raises(ModelLoadError, match="DH.UR5") as info:
        ArmModel("UR5")
    assert "offline" in str(info.value) and isinstance(info.value, UserError)
    with pytest.raises(ModelLoadError, match="Panda"):
        ArmModel("NoSuchRobot")
    assert ArmModel("DH.UR5").n == 6


@pytest.mark.parametrize("name", ["Panda", "DH.UR5"])
def test_ik_round_trip(name):
    model = ArmModel(name)
    rng = np.random.default_rng(0)
    lo, hi = model.qlim
    solved = 0
    for _ in range(5):
        q_true = model.ready + rng.uniform(-0.3, 0.3, model.n)
        q_true = np.clip(q_true, lo + 0.05, hi - 0.05)
        T = model.fkine_flange(q_true)
        ik = model.ik_flange(T, model.ready, seed=1)
        assert ik.success, ik.reason
        dt, dr = pose_error(model.fkine_flange(ik.q), T)
        assert dt < 1e-5 and dr < 1e-5
        assert np.all(ik.q >= lo - 1e-9) and np.all(ik.q <= hi + 1e-9)
        solved += 1
    assert solved == 5


def test_look_at_points_camera_z_at_target_with_opencv_axes():
    target = np.array([0.1, -0.2, 0.03])
    for eye in ([0.5, 0.2, 0.4], [-0.3, 0.0, 0.3], [0.1, -0.2, 0.8]):
        T = look_at(eye, target)
        R = T[:3, :3]
        assert np.allclose(R.T @ R, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
        direction = (target - np.asarray(eye)) / np.linalg.norm(target - np.asarray(eye))
        assert np.allclose(T[:3, 2], direction)
        # the target projects onto the optical axis: camera coordinates (0, 0, +distance)
        p_cam = invert(T) @ np.append(target, 1.0)
        assert np.allclose(p_cam[:2], 0.0, atol=1e-9) and p_cam[2] > 0
        if abs(direction[2]) < 0.99:
            assert T[2, 1] < 0          # image +y (down) points down in the world


def test_segment_distance_cases():
    p = np.array([[0.0, 0, 0], [0, 0, 0], [0, 0, 0]])
    q = np.array([[1.0, 0, 0], [1, 0, 0], [0, 0, 0]])
    p2 = np.array([[0.5, 1, 0], [2, 0, 0], [0, 3, 4]])
    q2 = np.array([[0.5, 2, 0], [3, 0, 0], [0, 3, 4]])
    assert np.allclose(segment_distances(p, q, p2, q2), [1.0, 1.0, 5.0])


def test_planned_views_satisfy_every_constraint(rig, plan):
    assert len(plan) == 12 and plan.complete
    model = arm_model_for(rig)
    checker = SafetyChecker(rig, model)
    lo, hi = model.qlim
    target = rig.target_world
    for i in range(len(plan)):
        q = plan.joint_positions[i]
        assert np.all(q >= lo) and np.all(q <= hi)
        assert checker.check(q) is None
        T = rig.T_world_base @ model.fkine_flange(q) @ rig.T_flange_camera
        dt, dr = pose_error(T, plan.camera_pose_world[i])
        assert dt < 1e-4 and dr < 1e-4                       # the joints realise the pose
        p = T[:3, 3]
        assert p[2] - rig.table.height >= rig.safety.min_camera_height
        assert np.all(p >= rig.workspace.min) and np.all(p <= rig.workspace.max)
        axis = (target - p) / np.linalg.norm(target - p)
        assert np.dot(T[:3, 2], axis) > 1 - 1e-6           # +z at the table centre
        assert np.isclose(np.linalg.norm(target - p), rig.views.radius, atol=1e-4)
        el = np.degrees(np.arcsin((p[2] - target[2]) / rig.views.radius))
        assert rig.views.elevation_min_deg - 1e-6 <= el <= rig.views.elevation_max_deg + 1e-6
    assert sorted(plan.order.tolist()) == list(range(len(plan)))
    assert plan.stats["joint_travel_ordered_rad"] <= plan.stats["joint_travel_unordered_rad"]


def test_unreachable_cap_is_reported_per_candidate():
    # a cap 2 m away: every candidate leaves the workspace; the report says so for each one
    rig = load_rig_config(None, ["views.radius=2.0", "views.max_rounds=1"])
    with pytest.raises(PlanningError, match="outside_workspace"):
        plan_viewpoints(rig, 5)
    # a cap partly below the camera margin: those candidates drop with that reason, others survive
    rig = load_rig_config(None, ["views.elevation_min_deg=5", "views.elevation_max_deg=60", "views.max_rounds=3"])
    result = plan_viewpoints(rig, 8, seed=1)
    assert len(result) == 8                                   # re-sampling made up the losses
    assert result.drop_counts().get("below_table_margin", 0) >= 1
    assert result.stats["rounds"] >= 2
    assert all({"candidate", "reason", "detail", "azimuth_deg", "elevation_deg"} <= set(d) for d in result.drops)


def test_ordering_shortens_travel_and_keeps_every_view():
    rng = np.random.default_rng(0)
    qs = rng.uniform(-2, 2, (15, 6))
    start = np.zeros(6)
    order = order_views(qs, start)
    assert sorted(order.tolist()) == list(range(15))
    assert joint_travel(qs[order], start) < joint_travel(qs, start)


def test_plan_file_round_trip_and_rig_check(tmp_path, rig, plan):
    path = plan.save(tmp_path / "plans" / "scene.json")
    loaded = ViewPlan.load(path)
    assert np.allclose(loaded.camera_pose_world, plan.camera_pose_world)
    assert np.allclose(loaded.joint_positions, plan.joint_positions)
    assert loaded.order.tolist() == plan.order.tolist()
    assert loaded.drops == json.loads(plan.to_json())["drops"]
    assert np.allclose(ViewPlan.from_json(plan.to_json()).ordered_joint_positions, plan.ordered_joint_positions)
    loaded.check_rig(rig)                                     # same rig: accepted
    moved = load_rig_config(None, ["base_pose_world=[-0.5, 0, 0, 0, 0, 0]"])
    with pytest.raises(PlanningError, match="T_world_base"):
        loaded.check_rig(moved)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(PlanningError):
        ViewPlan.load(tmp_path / "bad.json")
