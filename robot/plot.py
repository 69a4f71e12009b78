"""Headless (Agg) figure of a view plan: the table, camera frustums, the arm in a few poses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot.config import RigConfig
from robot.model import arm_model_for
from robot.planning import ViewPlan


def _frustum(T: np.ndarray, depth: float = 0.06, half_w: float = 0.04, half_h: float = 0.03):
    corners = np.array([[-half_w, -half_h, depth], [half_w, -half_h, depth], [half_w, half_h, depth],
                        [-half_w, half_h, depth]])
    world = corners @ T[:3, :3].T + T[:3, 3]
    o = T[:3, 3]
    lines = [np.array([o, c]) for c in world] + [np.array([world[i], world[(i + 1) % 4]]) for i in range(4)]
    return lines


def plot_plan(rig: RigConfig, plan: ViewPlan, path: str | Path, n_arm_poses: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    model = arm_model_for(rig)
    fig = plt.figure(figsize=(9, 8))
    ax = fig.add_subplot(projection="3d")
    cx, cy = rig.table.centre
    sx, sy = rig.table.size
    z = rig.table.height
    table = [[cx - sx / 2, cy - sy / 2, z], [cx + sx / 2, cy - sy / 2, z], [cx + sx / 2, cy + sy / 2, z],
             [cx - sx / 2, cy + sy / 2, z]]
    ax.add_collection3d(Poly3DCollection([table], facecolor="0.85", edgecolor="0.5", alpha=0.6))
    ax.scatter(*plan.target_world, color="red", s=30, label="look-at target")
    ordered = plan.ordered_camera_poses
    for k, T in enumerate(ordered):
        colour = plt.cm.viridis(k / max(len(ordered) - 1, 1))
        for seg in _frustum(T):
            ax.plot(*seg.T, color=colour, lw=0.8)
    path_pts = ordered[:, :3, 3]
    ax.plot(*path_pts.T, color="0.4", lw=0.6, ls="--", label="visiting order")
    pick = np.linspace(0, len(plan) - 1, min(n_arm_poses, len(plan))).round().astype(int)
    for i in pick:
        q = plan.ordered_joint_positions[i]
        frames = model.collision_frames(q)
        pts = (rig.T_world_base @ frames)[:, :3, 3]
        ax.plot(*pts.T, "-o", color="tab:orange", lw=2, ms=3)
    ax.plot([], [], "-o", color="tab:orange", label="arm (some views)")
    base = rig.T_world_base[:3, 3]
    ax.scatter(*base, color="black", marker="s", s=40, label="robot base")
    lo, hi = np.asarray(rig.workspace.min), np.asarray(rig.workspace.max)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[2], hi[2])
    ax.set_box_aspect(hi - lo)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_zlabel("z (m)")
    ax.view_init(elev=28, azim=-60)
    ax.set_title(f"{rig.model}: {len(plan)} of {plan.requested} views planned "
                 f"(joint travel {plan.stats.get('joint_travel_ordered_rad', float('nan')):.1f} rad)")
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
