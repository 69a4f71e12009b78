"""The rig's geometry and the arm's limits, as one dataclass config (YAML + ``key.sub=value``).

Frames (all in metres, right-handed):

* world  = the table frame: the table top is the plane ``z = table.height``; +z points up.
* base   = the robot's base frame; ``base_pose_world`` is T_world_base.
* flange = the arm's mounting flange (for the Panda ``panda_link8``, not the gripper TCP).
* camera = OpenCV camera axes (+x right, +y down, +z forward); ``flange_to_camera`` is
  T_flange_camera, the hand-eye calibration result.

So ``T_world_camera = base_pose_world @ fkine(q) @ flange_to_camera``.

The embedded default is a Franka Panda standing on the table 0.6 m behind the centre of a
0.6 m x 0.6 m scene area, with a camera 5 cm off the flange looking along the flange's z axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from common.config import load_config
from common.errors import ConfigError


@dataclass
class TableConfig:
    height: float = 0.0                          # z of the table top in the world frame
    centre: tuple[float, float] = (0.0, 0.0)     # x, y of the scene area's centre
    size: tuple[float, float] = (0.6, 0.6)       # x, y extent of the scene area


@dataclass
class WorkspaceConfig:
    """Axis-aligned box (world frame) the camera and flange must never leave."""

    min: tuple[float, float, float] = (-0.75, -0.65, 0.0)
    max: tuple[float, float, float] = (0.55, 0.65, 1.0)


@dataclass
class SafetyConfig:
    min_camera_height: float = 0.12      # camera origin above the table top, metres
    link_table_clearance: float = 0.02   # every moving link's collision shape above the table
    camera_radius: float = 0.04          # the camera body, as a sphere round the camera origin
    self_collision: bool = True          # where the model has collision shapes
    check_step_rad: float = 0.02         # densest joint step between checked trajectory samples


@dataclass
class MotionConfig:
    """Joint speed/acceleration limits (rad/s, rad/s^2): one value for all joints, or one per joint."""

    max_joint_speed: list[float] = field(default_factory=lambda: [0.8])
    max_joint_accel: list[float] = field(default_factory=lambda: [1.5])
    time_step_s: float = 0.01            # trajectory sample spacing for the simulated arm
    settle_time_s: float = 0.15          # vibration settling after a move (simulated arm)
    settle_tolerance_rad: float = 1e-3   # |q - target| to call a move arrived


@dataclass
class ViewPlanConfig:
    """Look-at viewpoints on a spherical cap round the target point above the table centre."""

    n_views: int = 25
    # camera distance from the target, metres: at 0.32 m a 62-degree webcam sees 2-4 cubes within
    # +-8 cm of the centre filling ~15 % of the centre crop (docs/synthetic.md); closer, transits
    # between low views come within the 12 cm table margin
    radius: float = 0.32
    target_height: float = 0.025         # look-at point above the table centre (half a cube)
    elevation_min_deg: float = 30.0
    elevation_max_deg: float = 65.0
    azimuth_centre_deg: float = 180.0    # world azimuth the cap is centred on (180 = towards -x)
    azimuth_spread_deg: float = 200.0    # total azimuth range covered
    max_rounds: int = 5                  # re-sampling rounds to reach the requested count
    ik_searches: int = 20                # IK random restarts per candidate after the seeded try


@dataclass
class URConfig:
    host: str = "192.168.1.10"
    frequency: float = 500.0             # RTDE frequency, Hz (CB3: 125)
    move_timeout_s: float = 60.0


@dataclass
class RigConfig:
    model: str = "Panda"                 # rtb.models.<name>, e.g. "Panda", "DH.UR5", "DH.Panda"
    flange_link: str = "auto"            # link the camera is mounted on ("auto": the model's flange)
    # T_world_base: [x, y, z, roll, pitch, yaw] (radians, extrinsic xyz) or a 4x4 matrix
    base_pose_world: list[Any] = field(default_factory=lambda: [-0.6, 0.0, 0.0, 0.0, 0.0, 0.0])
    # T_flange_camera (hand-eye): a 4x4 matrix or [x, y, z, roll, pitch, yaw]
    flange_to_camera: list[Any] = field(default_factory=lambda: [
        [1.0, 0.0, 0.0, 0.05],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.02],
        [0.0, 0.0, 0.0, 1.0],
    ])
    home: list[float] = field(default_factory=list)   # empty: the model's ready pose (qr)
    table: TableConfig = field(default_factory=TableConfig)
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    views: ViewPlanConfig = field(default_factory=ViewPlanConfig)
    ur: URConfig = field(default_factory=URConfig)

    def __post_init__(self) -> None:
        pose_matrix(self.base_pose_world, "base_pose_world")
        pose_matrix(self.flange_to_camera, "flange_to_camera")
        lo, hi = np.asarray(self.workspace.min), np.asarray(self.workspace.max)
        if np.any(lo >= hi):
            raise ConfigError(f"workspace.min {list(lo)} must be below workspace.max {list(hi)}")
        v = self.views
        if not 0.0 <= v.elevation_min_deg <= v.elevation_max_deg <= 90.0:
            raise ConfigError("views: need 0 <= elevation_min_deg <= elevation_max_deg <= 90")
        if v.radius <= 0 or v.n_views < 1:
            raise ConfigError("views: radius must be > 0 and n_views >= 1")
        if not 0.0 < v.azimuth_spread_deg <= 360.0:
            raise ConfigError("views.azimuth_spread_deg must be in (0, 360]")
        for name in ("max_joint_speed", "max_joint_accel"):
            values = getattr(self.motion, name)
            if not values or any(x <= 0 for x in values):
                raise ConfigError(f"motion.{name} must be positive values, got {values}")

    # Resolved geometry as numpy (cheap; the config itself stays plain YAML-able data).
    @property
    def T_world_base(self) -> np.ndarray:
        return pose_matrix(self.base_pose_world, "base_pose_world")

    @property
    def T_flange_camera(self) -> np.ndarray:
        return pose_matrix(self.flange_to_camera, "flange_to_camera")

    @property
    def target_world(self) -> np.ndarray:
        """The point every planned camera looks at: above the table centre by target_height."""
        cx, cy = self.table.centre
        return np.array([cx, cy, self.table.height + self.views.target_height])

    def joint_limits_per_joint(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(max speed, max accel) per joint for an ``n``-joint arm, broadcasting single values."""
        out = []
        for name in ("max_joint_speed", "max_joint_accel"):
            values = np.asarray(getattr(self.motion, name), dtype=float)
            if values.size == 1:
                values = np.full(n, float(values[0]))
            if values.size != n:
                raise ConfigError(f"motion.{name} has {values.size} values but the arm has {n} joints")
            out.append(values)
        return out[0], out[1]


def pose_matrix(value: Any, name: str) -> np.ndarray:
    """A 4x4 homogeneous matrix from a 4x4 list or [x, y, z, roll, pitch, yaw] (radians)."""
    arr = np.asarray(value, dtype=float)
    if arr.shape == (6,):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_euler("xyz", arr[3:]).as_matrix()
        T[:3, 3] = arr[:3]
        return T
    if arr.shape == (4, 4):
        R = arr[:3, :3]
        if not np.allclose(arr[3], [0, 0, 0, 1]) or not np.allclose(R @ R.T, np.eye(3), atol=1e-4) \
                or np.linalg.det(R) < 0:
            raise ConfigError(f"{name}: not a rigid transform (rotation must be orthonormal, last row 0 0 0 1)")
        return arr
    raise ConfigError(f"{name}: expected a 4x4 matrix or [x, y, z, roll, pitch, yaw], got shape {arr.shape}")


def load_rig_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RigConfig:
    """The embedded default rig, then the YAML file (if any), then ``key.sub=value`` overrides."""
    return load_config(RigConfig, path, overrides)


def rig_fingerprint(rig: RigConfig) -> dict:
    """The parts of the rig a saved plan depends on (checked when a plan is reused)."""
    return {
        "model": rig.model,
        "flange_link": rig.flange_link,
        "T_world_base": np.round(rig.T_world_base, 6).tolist(),
        "T_flange_camera": np.round(rig.T_flange_camera, 6).tolist(),
    }


__all__ = [
    "RigConfig", "TableConfig", "WorkspaceConfig", "SafetyConfig", "MotionConfig", "ViewPlanConfig",
    "URConfig", "load_rig_config", "pose_matrix", "rig_fingerprint",
]
