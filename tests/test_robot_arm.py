"""Trajectories, the simulated arm, refusals before motion, stops, and the UR back end's errors."""

import sys
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from robot.config import load_rig_config
from robot.errors import RobotError, UnsafeMoveError
from robot.sim import SimulatedArm
from robot.trajectory import minimum_duration, plan_trajectory
from robot.ur import URArm


@pytest.fixture(scope="module")
def rig():
    return load_rig_config()


def test_trajectory_respects_speed_and_accel_limits(rig):
    q0 = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785])
    q1 = q0 + np.array([0.9, 0.3, -0.5, 0.4, 1.2, -0.3, 0.8])
    traj = plan_trajectory(rig, q0, q1)
    vmax, amax = rig.joint_limits_per_joint(7)
    assert np.allclose(traj.q[0], q0) and np.allclose(traj.q[-1], q1)
    assert np.all(np.abs(traj.qd) <= vmax * (1 + 1e-6))
    assert np.all(np.abs(traj.qdd) <= amax * (1 + 1e-6))
    # not slower than it needs to be: some joint reaches its speed or acceleration limit
    assert np.max(np.abs(traj.qd) / vmax) > 0.98 or np.max(np.abs(traj.qdd) / amax) > 0.95
    assert np.isclose(traj.duration, minimum_duration(q0, q1, vmax, amax))
    assert np.max(np.abs(np.diff(traj.q, axis=0))) <= rig.safety.check_step_rad + 1e-9
    # straight joint-space line (what a UR moveJ follows too)
    s = (traj.q - q0) / (q1 - q0)
    assert np.allclose(s, s[:, :1], atol=1e-9)


def test_simulated_arm_reaches_targets_and_settles(rig):
    with SimulatedArm(rig, fast=True) as arm:
        target = arm.home_q + np.array([0.3, 0.2, -0.2, 0.3, 0.1, -0.2, 0.4])
        move = arm.move_to(target)
        assert np.allclose(arm.joint_positions(), target)
        assert arm.is_settled() and not move.via_home
        T = arm.camera_pose_world()
        assert np.allclose(T, rig.T_world_base @ arm.model.fkine_flange(target) @ rig.T_flange_camera)
        # asynchronous move: not settled while moving, settled once it is done
        arm.move_to(arm.home_q, wait=False)
        assert arm.wait_until_settled(10.0)
        assert np.allclose(arm.joint_positions(), arm.home_q)


def test_real_time_mode_takes_the_trajectory_time(rig):
    small = load_rig_config(None, ["motion.max_joint_speed=[2.0]", "motion.max_joint_accel=[8.0]"])
    with SimulatedArm(small, fast=False) as arm:
        target = arm.home_q + 0.05
        arm.move_to(target, wait=False)
        seen_moving = not arm.is_settled()
        assert arm.wait_until_settled(5.0)
        assert seen_moving and np.allclose(arm.joint_positions(), target)


def test_out_of_workspace_target_is_refused_before_any_motion(rig):
    with SimulatedArm(rig) as arm:
        start = arm.joint_positions()
        # joint 2 forward by 1.2 rad drives the camera into the table
        bad = arm.home_q + np.array([0, 1.2, 0, 0, 0, 0, 0])
        with pytest.raises(UnsafeMoveError, match="below_table_margin") as info:
            arm.move_to(bad)
        assert "before any motion" in str(info.value)
        with pytest.raises(UnsafeMoveError, match="joint_limits"):
            arm.move_to(np.zeros(7))                     # Panda joint 4 must stay negative
        narrow = load_rig_config(None, ["workspace.max=[0.55, 0.65, 0.45]"])
        with SimulatedArm(narrow) as low_ceiling:
            with pytest.raises(UnsafeMoveError, match="outside_workspace"):
                low_ceiling.move_to(low_ceiling.home_q + np.array([0, -0.3, 0, 0.6, 0, 0, 0]))
            assert low_ceiling.commands_sent == 0
        with pytest.raises(UnsafeMoveError, match="joint values"):
            arm.move_to([0.0, 0.0])
        assert arm.commands_sent == 0
        assert np.array_equal(arm.joint_positions(), start)


def test_exception_during_motion_stops_the_arm(rig, caplog):
    with SimulatedArm(rig, fast=True) as arm:
        target = arm.home_q + np.array([0.8, 0, 0, 0, 0, 0, 0])
        calls = {"n": 0}
        original = arm._run

        def interrupted(plan):                # Ctrl-C arrives halfway through the trajectory
            traj = plan.trajectories[0]
            half = len(traj.t) // 2
            with arm._lock:
                arm._q[:] = traj.q[half]
            calls["n"] += 1
            raise KeyboardInterrupt

        arm._run = interrupted
        with pytest.raises(KeyboardInterrupt):
            arm.move_to(target)
        arm._run = original
        assert calls["n"] == 1 and not arm.is_moving()
        assert arm._stop.is_set()
        assert "stop sent" in caplog.text and "stopped at q" in caplog.text
        q_stop = arm.joint_positions()
        assert 0.1 < q_stop[0] < 0.7                      # it stayed where it stopped


def test_stop_halts_an_asynchronous_move(rig):
    slow = load_rig_config(None, ["motion.max_joint_speed=[0.2]"])
    with SimulatedArm(slow, fast=False) as arm:
        target = arm.home_q + np.array([0.5, 0, 0, 0, 0, 0, 0])
        arm.move_to(target, wait=False)
        threading.Event().wait(0.3)
        arm.stop()
        q = arm.joint_positions()
        assert arm.stopped and not arm.is_moving()
        assert 0.0 < q[0] < 0.45


class _StandInUR:
    """A stand-in for the ur-rtde control + receive interfaces (no controller runs here):
    moveJ jumps to the target, and tests can raise a protective stop or drop the connection."""

    def __init__(self, q0, protective_stop_on_move=False):
        self.q = np.array(q0, dtype=float)
        self.moves = []
        self.stops = 0
        self.connected = True
        self.protective = False
        self.protective_stop_on_move = protective_stop_on_move

    def moveJ(self, *args):
        self.moves.append(args)
        target = args[0][-1][:len(self.q)] if isinstance(args[0][0], list) else args[0]
        if self.protective_stop_on_move:
            self.protective = True
        else:
            self.q = np.array(target, dtype=float)
        return True

    def getAsyncOperationProgress(self): return -1
    def stopJ(self, *args): self.stops += 1
    def stopScript(self): pass
    def disconnect(self): self.connected = False
    def isConnected(self): return self.connected
    def getActualQ(self): return list(self.q)
    def getActualQd(self): return [0.0] * len(self.q)
    def isProtectiveStopped(self): return self.protective
    def isEmergencyStopped(self): return False


def _ur_rig():
    return load_rig_config(None, ["model=DH.UR5", "base_pose_world=[-0.55, 0, 0, 0, 0, 3.14159265]",
                                  "motion.settle_time_s=0.0", "home=[0.0, -2.0, 1.8, -1.4, -1.5708, 0.0]",
                                  "flange_to_camera=[[1,0,0,0],[0,1,0,0],[0,0,1,0.03],[0,0,0,1]]"])


def test_ur_missing_sdk_is_a_clear_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rtde_control", None)    # as if ur-rtde were not installed
    with pytest.raises(RobotError, match="ur-rtde"):
        with URArm(_ur_rig()):
            pass


def test_ur_refuses_unsafe_moves_before_commanding_and_reports_protective_stop():
    from robot.planning import plan_viewpoints

    rig = _ur_rig()
    views = plan_viewpoints(rig, 2, seed=0)                 # the DH UR5 plans too
    assert len(views) == 2
    home, target = np.array(rig.home), views.joint_positions[views.order[0]]
    robot = _StandInUR(home)
    with URArm(rig, interfaces=lambda host, f: (robot, robot)) as arm:
        with pytest.raises(UnsafeMoveError, match="before any motion"):
            arm.move_to(home + np.array([0, 1.5, 0, 0, 0, 0]))      # shoulder down into the table
        assert robot.moves == []
        arm.move_to(target)
        assert np.allclose(arm.joint_positions(), target) and len(robot.moves) == 1
        robot.protective_stop_on_move = True
        with pytest.raises(RobotError, match="protective stop"):
            arm.move_to(home)
        assert robot.stops >= 1                                     # stop sent on the failure
        robot.protective = False
        robot.connected = False
        with pytest.raises(RobotError, match="lost the connection"):
            arm.joint_positions()
    assert robot.connected is False


def test_cli_plan_check_and_refusal(tmp_path):
    from robot.cli import app

    runner = CliRunner()
    out = tmp_path / "plan.json"
    png = tmp_path / "plan.png"
    result = runner.invoke(app, ["plan", "--views", "6", "--out", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "planned 6 of 6 views" in result.output and out.is_file() and png.stat().st_size > 10_000
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0 and "safety: ok" in result.output and "margin" in result.output
    result = runner.invoke(app, ["show-config", "--set", "views.n_views=9"])
    assert result.exit_code == 0 and "n_views: 9" in result.output
    result = runner.invoke(app, ["show-config", "--set", "model=UR5"])
    assert result.exit_code != 0 and "DH.UR5" in str(result.exception)
