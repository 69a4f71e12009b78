"""The arm: rig geometry, viewpoint planning, trajectories, safety checks and back ends.

    from robot import load_rig_config, plan_viewpoints, SimulatedArm
    rig = load_rig_config()                      # embedded default: a Panda at a 0.6 m table area
    plan = plan_viewpoints(rig, 25, seed=0)      # ViewPlan: poses, joints, order, drop report
    with SimulatedArm(rig) as arm:
        for i in plan.order:
            arm.move_to(plan.joint_positions[i])
            T_world_camera = arm.camera_pose_world()
"""

from robot.arm import Arm, BaseArm, MovePlan
from robot.backends import open_arm
from robot.config import RigConfig, load_rig_config, pose_matrix, rig_fingerprint
from robot.errors import ModelLoadError, PlanningError, RobotError, UnsafeMoveError
from robot.model import ArmModel, arm_model_for, load_robot_model, offline_model_names
from robot.planning import ViewPlan, plan_viewpoints
from robot.safety import SafetyChecker, Violation
from robot.sim import SimulatedArm
from robot.trajectory import JointTrajectory, check_move, plan_trajectory


def __getattr__(name):
    # URArm imports nothing from ur-rtde until connected, but keep it out of the eager imports
    if name == "URArm":
        from robot.ur import URArm

        return URArm
    raise AttributeError(name)


__all__ = [
    "Arm", "BaseArm", "MovePlan", "open_arm", "RigConfig", "load_rig_config", "pose_matrix",
    "rig_fingerprint", "RobotError", "ModelLoadError", "PlanningError", "UnsafeMoveError",
    "ArmModel", "arm_model_for", "load_robot_model", "offline_model_names", "ViewPlan",
    "plan_viewpoints", "SafetyChecker", "Violation", "SimulatedArm", "URArm", "JointTrajectory",
    "check_move", "plan_trajectory",
]
