"""The safety rules every configuration must pass, for planning and before any motion command.

Checked per joint configuration ``q`` (rig geometry from :class:`RigConfig`):

* ``joint_limits``: q inside the model's joint limits;
* ``below_table_margin``: the camera origin at least ``safety.min_camera_height`` above the table;
* ``outside_workspace``: camera and flange origins inside the workspace box;
* ``table_collision``: every moving link's collision capsule ``link_table_clearance`` above the
  table (links that never move, the base, are skipped: they stand on it);
* ``self_collision``: capsules three or more links apart do not touch (models with shapes only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot.config import RigConfig
from robot.model import ArmModel, arm_model_for, segment_distances

REASONS = ("joint_limits", "below_table_margin", "outside_workspace", "table_collision", "self_collision")


@dataclass
class Violation:
    reason: str      # one of REASONS
    detail: str      # human-readable, with numbers

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


def _short(amount: float, unit: str) -> str:
    """How far past a limit, never rounded to nothing (0.120 vs 0.120 hid a 0.4 mm miss)."""
    if unit == "m":
        return f"{amount * 1000:.2g} mm" if amount < 0.01 else f"{amount:.3f} m"
    return f"{amount:.2g} {unit}"


class SafetyChecker:
    def __init__(self, rig: RigConfig, model: ArmModel | None = None):
        self.rig = rig
        self.model = model if model is not None else arm_model_for(rig)
        self.T_world_base = rig.T_world_base
        self.T_flange_camera = rig.T_flange_camera
        self.table_z = rig.table.height
        self.box_lo = np.asarray(rig.workspace.min, dtype=float)
        self.box_hi = np.asarray(rig.workspace.max, dtype=float)
        # capsules on frames that move with some joint (the base link stands on the table)
        moving_from = 1
        self._table_caps = np.array([k for k, c in enumerate(self.model.capsules) if c.depth >= moving_from + 1
                                     or (self.model.is_dh and c.frame >= 2)])

    def camera_pose_world(self, q) -> np.ndarray:
        return self.T_world_base @ self.model.fkine_flange(q) @ self.T_flange_camera

    def check(self, q) -> Violation | None:
        """The first rule ``q`` breaks, or None when it is safe."""
        q = np.asarray(q, dtype=float)
        m = self.model
        lo, hi = m.qlim
        if q.shape != (m.n,):
            return Violation("joint_limits", f"expected {m.n} joint values, got shape {q.shape}")
        bad = np.flatnonzero((q < lo - 1e-9) | (q > hi + 1e-9))
        if bad.size:
            j = bad[0]
            beyond = max(lo[j] - q[j], q[j] - hi[j])
            return Violation("joint_limits", f"joint {j + 1} = {q[j]:.3f} rad outside [{lo[j]:.3f}, "
                                             f"{hi[j]:.3f}] by {_short(beyond, 'rad')}")
        frames = m.collision_frames(q)
        T_world_flange = self.T_world_base @ frames[-1]
        cam = (T_world_flange @ self.T_flange_camera)[:3, 3]
        height = cam[2] - self.table_z
        if height < self.rig.safety.min_camera_height:
            minimum = self.rig.safety.min_camera_height
            return Violation("below_table_margin", f"camera {height:.3f} m above the table, "
                                                   f"{_short(minimum - height, 'm')} below the minimum "
                                                   f"{minimum:.3f} m")
        for label, p in (("camera", cam), ("flange", T_world_flange[:3, 3])):
            if np.any(p < self.box_lo) or np.any(p > self.box_hi):
                return Violation("outside_workspace", f"{label} at ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) m is "
                                                      f"outside the workspace box {_fmt(self.box_lo)}..{_fmt(self.box_hi)}")
        if m.capsules:
            a, b, r = m.capsule_segments(frames)
            R, t = self.T_world_base[:3, :3], self.T_world_base[:3, 3]
            za = a @ R[2] + t[2]
            zb = b @ R[2] + t[2]
            if self._table_caps.size:
                low = np.minimum(za, zb)[self._table_caps] - r[self._table_caps]
                k = int(np.argmin(low))
                clearance = low[k] - self.table_z
                if clearance < self.rig.safety.link_table_clearance:
                    cap = m.capsules[self._table_caps[k]]
                    need = self.rig.safety.link_table_clearance
                    return Violation("table_collision", f"{cap.name} comes {clearance:.3f} m from the table, "
                                                        f"{_short(need - clearance, 'm')} inside the "
                                                        f"clearance {need:.3f} m")
            if self.rig.safety.self_collision and len(m.self_collision_pairs):
                i, j = m.self_collision_pairs[:, 0], m.self_collision_pairs[:, 1]
                gap = segment_distances(a[i], b[i], a[j], b[j]) - r[i] - r[j]
                k = int(np.argmin(gap))
                if gap[k] < 0:
                    return Violation("self_collision", f"{m.capsules[i[k]].name} and {m.capsules[j[k]].name} "
                                                       f"overlap by {-gap[k] * 1000:.0f} mm")
        return None

    def first_violation(self, qs) -> tuple[int, Violation] | None:
        """(index, violation) of the first unsafe configuration in the sequence, or None."""
        for i, q in enumerate(np.asarray(qs, dtype=float)):
            v = self.check(q)
            if v is not None:
                return i, v
        return None
