"""Viewpoint planning: look-at camera poses on a spherical cap round the table centre, solved with
IK, filtered by the safety rules, re-sampled to reach the requested count, ordered for short travel.

The saved :class:`ViewPlan` (JSON) holds everything needed to repeat a scene's viewpoints exactly
on another day: camera poses, joint configurations, the visiting order, and the rig it was made
for.  Arrays are in *view index* order (a view's index never changes); ``order`` is the sequence
in which to visit them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.io import atomic_write_text
from robot.config import RigConfig, rig_fingerprint
from robot.errors import PlanningError
from common.geometry import look_at
from robot.geometry import invert, pose_error
from robot.model import ArmModel, arm_model_for
from robot.safety import SafetyChecker

PLAN_FORMAT = "ldsrig.viewplan/1"
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


@dataclass
class ViewPlan:
    camera_pose_world: np.ndarray          # (N, 4, 4) T_world_camera, OpenCV axes
    joint_positions: np.ndarray            # (N, dof)
    order: np.ndarray                      # (N,) visiting order: indices into the arrays above
    azimuth_deg: np.ndarray                # (N,)
    elevation_deg: np.ndarray              # (N,)
    target_world: np.ndarray               # (3,) look-at point
    home: np.ndarray                       # (dof,) where the arm starts and ends
    requested: int
    rig: dict                              # rig_fingerprint of the rig it was planned for
    drops: list[dict] = field(default_factory=list)   # one entry per rejected candidate
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.joint_positions.shape[0])

    @property
    def complete(self) -> bool:
        return len(self) >= self.requested

    @property
    def ordered_camera_poses(self) -> np.ndarray:
        return self.camera_pose_world[self.order]

    @property
    def ordered_joint_positions(self) -> np.ndarray:
        return self.joint_positions[self.order]

    def drop_counts(self) -> dict[str, int]:
        return dict(Counter(d["reason"] for d in self.drops))

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "requested": self.requested,
            "target_world": self.target_world.tolist(),
            "home": self.home.tolist(),
            "order": self.order.tolist(),
            "views": [
                {"index": i, "azimuth_deg": float(self.azimuth_deg[i]), "elevation_deg": float(self.elevation_deg[i]),
                 "camera_pose_world": self.camera_pose_world[i].tolist(),
                 "joint_positions": self.joint_positions[i].tolist()}
                for i in range(len(self))
            ],
            "rig": self.rig,
            "stats": self.stats,
            "drops": self.drops,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> "ViewPlan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanningError(f"not a view plan (expected format {PLAN_FORMAT!r})")
        try:
            views = data["views"]
            n = len(views)
            dof = len(data["home"])
            plan = cls(
                camera_pose_world=np.asarray([v["camera_pose_world"] for v in views], dtype=float).reshape(n, 4, 4),
                joint_positions=np.asarray([v["joint_positions"] for v in views], dtype=float).reshape(n, dof),
                order=np.asarray(data["order"], dtype=int).reshape(n),
                azimuth_deg=np.asarray([v["azimuth_deg"] for v in views], dtype=float),
                elevation_deg=np.asarray([v["elevation_deg"] for v in views], dtype=float),
                target_world=np.asarray(data["target_world"], dtype=float).reshape(3),
                home=np.asarray(data["home"], dtype=float),
                requested=int(data["requested"]),
                rig=dict(data["rig"]),
                drops=list(data.get("drops", [])),
                stats=dict(data.get("stats", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanningError(f"view plan is malformed: {type(exc).__name__}: {exc}") from None
        if sorted(plan.order.tolist()) != list(range(n)):
            raise PlanningError("view plan is malformed: 'order' is not a permutation of the views")
        for name, values in (("joint_positions", plan.joint_positions),
                             ("camera_pose_world", plan.camera_pose_world)):
            bad = [i for i in range(n) if not np.all(np.isfinite(values[i]))]
            if bad:
                raise PlanningError(f"view plan is malformed: view {bad[0]} has non-finite {name}")
        if not np.all(np.isfinite(plan.home)):
            raise PlanningError("view plan is malformed: home has non-finite joint values")
        return plan

    @classmethod
    def from_json(cls, text: str) -> "ViewPlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanningError(f"view plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())      # never leave half a plan behind

    @classmethod
    def load(cls, path: str | Path) -> "ViewPlan":
        path = Path(path)
        if not path.is_file():
            raise PlanningError(f"view plan {path} does not exist")
        return cls.from_json(path.read_text())

    def check_rig(self, rig: RigConfig, tol: float = 1e-4) -> None:
        """Refuse to reuse a plan on a rig whose model, base pose or hand-eye differ from it, and
        re-check every stored configuration against this rig's safety rules."""
        now = rig_fingerprint(rig)
        if now["model"] != self.rig.get("model"):
            raise PlanningError(f"plan was made for model {self.rig.get('model')!r}, this rig is {now['model']!r}")
        for key in ("T_world_base", "T_flange_camera"):
            if not np.allclose(np.asarray(now[key]), np.asarray(self.rig.get(key)), atol=tol):
                raise PlanningError(f"plan was made with a different {key}; re-plan for this rig")
        checker = SafetyChecker(rig)
        for i, q in enumerate(self.joint_positions):
            v = checker.check(q)
            if v is not None:
                raise PlanningError(f"plan view {i} is unsafe on this rig: {v}")


def cap_directions(n: int, rig: RigConfig, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth, elevation) in radians of ``n`` points spread evenly over the cap's area (a
    Fibonacci lattice: sin(elevation) uniform, azimuth stepped by the golden ratio)."""
    v = rig.views
    s_lo, s_hi = np.sin(np.radians(v.elevation_min_deg)), np.sin(np.radians(v.elevation_max_deg))
    k = np.arange(n)
    elevation = np.arcsin(s_lo + (s_hi - s_lo) * (k + 0.5) / n)
    frac = (k * _GOLDEN + offset) % 1.0
    azimuth = np.radians(v.azimuth_centre_deg + v.azimuth_spread_deg * (frac - 0.5))
    return azimuth, elevation


def camera_pose_for(rig: RigConfig, azimuth: float, elevation: float) -> np.ndarray:
    target = rig.target_world
    eye = target + rig.views.radius * np.array([np.cos(elevation) * np.cos(azimuth),
                                                np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    return look_at(eye, target)


def joint_travel(qs: np.ndarray, start: np.ndarray) -> float:
    """Total joint travel (sum over legs of sum_j |dq_j|, radians) from ``start`` through ``qs``."""
    path = np.vstack([start[None], qs])
    return float(np.abs(np.diff(path, axis=0)).sum())


def order_views(joint_positions: np.ndarray, start: np.ndarray) -> np.ndarray:
    """A short open tour from ``start`` over all views: nearest neighbour, then 2-opt (L1 joint
    distance).  Exact TSP is pointless here; 2-opt gets within a few percent for 20-30 points."""
    n = len(joint_positions)
    if n <= 1:
        return np.arange(n)
    pts = np.vstack([start[None], joint_positions])          # node 0 = start
    dist = np.abs(pts[:, None, :] - pts[None, :, :]).sum(-1)
    tour, left = [0], set(range(1, n + 1))
    while left:
        nxt = min(left, key=lambda j: dist[tour[-1], j])
        tour.append(nxt)
        left.remove(nxt)
    tour = np.asarray(tour)
    improved = True
    while improved:                                          # 2-opt on an open path, start fixed
        improved = False
        for i in range(1, n):
            for k in range(i + 1, n + 1):
                a, b = tour[i - 1], tour[i]
                before = dist[a, b] + (dist[tour[k], tour[k + 1]] if k < n else 0.0)
                after = dist[a, tour[k]] + (dist[b, tour[k + 1]] if k < n else 0.0)
                if after < before - 1e-12:
                    tour[i:k + 1] = tour[i:k + 1][::-1]
                    improved = True
    return tour[1:] - 1


def plan_viewpoints(rig: RigConfig, n_views: int | None = None, seed: int = 0,
                    model: ArmModel | None = None, progress=None) -> ViewPlan:
    """Plan ``n_views`` reachable look-at viewpoints (default ``rig.views.n_views``).

    Round 0 tries ``n`` candidates spread over the cap; while fewer than ``n`` survive, each later
    round tries ``n * (round + 1)`` more with a shifted lattice and adds the survivors farthest
    (in viewing direction) from those already chosen.  ``progress(done, total)`` is called per
    candidate when given.  Raises :class:`PlanningError` when no candidate survives at all.
    """
    n = int(n_views if n_views is not None else rig.views.n_views)
    if n < 1:
        raise PlanningError("n_views must be at least 1")
    started = time.perf_counter()
    model = model if model is not None else arm_model_for(rig)
    checker = SafetyChecker(rig, model)
    rng = np.random.default_rng(seed)
    home = np.asarray(rig.home, dtype=float) if rig.home else model.ready.copy()
    if home.shape != (model.n,):
        raise PlanningError(f"home has {home.size} values but {rig.model} has {model.n} joints")
    home_violation = checker.check(home)
    if home_violation is not None:
        raise PlanningError(f"the home configuration {np.round(home, 3).tolist()} is unsafe on this rig "
                            f"({home_violation}); set home to a safe pose above the table")
    T_base_world = invert(rig.T_world_base)
    T_camera_flange = invert(rig.T_flange_camera)

    survivors: list[dict] = []
    drops: list[dict] = []
    tried = 0
    rounds = 0
    for rnd in range(max(1, rig.views.max_rounds)):
        rounds = rnd + 1
        m = n * (rnd + 1)
        offset = 0.0 if rnd == 0 else rng.uniform()
        azimuths, elevations = cap_directions(m, rig, offset)
        for az, el in zip(azimuths, elevations):
            cand = {"candidate": tried, "round": rnd, "azimuth_deg": round(float(np.degrees(az)), 3),
                    "elevation_deg": round(float(np.degrees(el)), 3)}
            tried += 1
            T_world_cam = camera_pose_for(rig, az, el)
            # camera-only rules first: no IK needed to know these fail
            pre = _camera_only_violation(checker, T_world_cam)
            if pre is not None:
                drops.append({**cand, "reason": pre[0], "detail": pre[1]})
                continue
            T_base_flange = T_base_world @ T_world_cam @ T_camera_flange
            # seed from the closest solved view (similar poses have similar joints), else home
            q0 = home
            if survivors:
                dirs = np.array([[s["az"], s["el"]] for s in survivors])
                q0 = survivors[int(np.argmin(np.abs(dirs - [az, el]).sum(1)))]["q"]
            ik = model.ik_flange(T_base_flange, q0, seed=int(rng.integers(2**31)), searches=rig.views.ik_searches)
            if not ik.success:
                drops.append({**cand, "reason": "ik_failed", "detail": ik.reason})
                continue
            v = checker.check(ik.q)
            if v is not None:
                drops.append({**cand, "reason": v.reason, "detail": v.detail})
                continue
            survivors.append({**cand, "az": az, "el": el, "T": T_world_cam, "q": ik.q})
            if progress is not None:
                progress(len(survivors), n)
        if len(survivors) >= n:
            break
    if not survivors:
        raise PlanningError(f"no viewpoint survived out of {tried} candidates "
                            f"({dict(Counter(d['reason'] for d in drops))}); widen views.* or move the base")

    # Choose, order, and check the transits between views: a view whose transit is unsafe both
    # directly and via home is dropped ("unsafe_transit") and the choice made again from the pool.
    leg_cache: dict = {}
    excluded: set[int] = set()
    while True:
        pool = [i for i in range(len(survivors)) if i not in excluded]
        if not pool:
            raise PlanningError(f"no viewpoint with a safe transit out of {tried} candidates; widen views.* or move the base")
        chosen = [pool[k] for k in _spread_selection([survivors[i] for i in pool], n)]
        poses = np.stack([survivors[i]["T"] for i in chosen])
        qs = np.stack([survivors[i]["q"] for i in chosen])
        travel_before = joint_travel(qs, home)
        order = order_views(qs, home)
        travel_order_only = joint_travel(qs[order], home)
        # IK restarts land on different arm branches; re-solve each view from its predecessor on
        # the tour and keep the nearer solution when it is safe, then re-order (two passes).
        for _ in range(2):
            qs = _rebranch_along(qs, order, poses, home, model, checker, T_base_world, T_camera_flange)
            order = order_views(qs, home)
        for k, i in enumerate(chosen):
            survivors[i]["q"] = qs[k]
        bad, via_home = _check_transits(checker, qs, order, home, leg_cache)
        if bad is None:
            break
        victim = chosen[bad[0]]
        excluded.add(victim)
        cand = {k: survivors[victim][k] for k in ("candidate", "round", "azimuth_deg", "elevation_deg")}
        drops.append({**cand, "reason": "unsafe_transit", "detail": bad[1]})
    travel_after = joint_travel(qs[order], home)
    elapsed = time.perf_counter() - started
    stats = {
        "requested": n, "planned": len(chosen), "candidates_tried": tried, "rounds": rounds,
        "survived": len(survivors), "success_rate": len(survivors) / tried,
        "planning_time_s": round(elapsed, 4),
        "joint_travel_unordered_rad": round(travel_before, 4),
        "joint_travel_ordered_only_rad": round(travel_order_only, 4),
        "joint_travel_ordered_rad": round(travel_after, 4),
        "transits_via_home": via_home,
        "self_collision_checked": bool(model.has_collision_shapes and rig.safety.self_collision),
        "seed": seed,
    }
    return ViewPlan(
        camera_pose_world=poses, joint_positions=qs, order=order,
        azimuth_deg=np.degrees([survivors[i]["az"] for i in chosen]),
        elevation_deg=np.degrees([survivors[i]["el"] for i in chosen]),
        target_world=rig.target_world, home=home, requested=n, rig=rig_fingerprint(rig),
        drops=drops, stats=stats)


def _check_transits(checker, qs, order, home, cache):
    """Check home -> views in order -> home.  Returns (None, n_via_home) when every transit is
    safe directly or via home, else ((position in qs of the view to drop, reason), n_via_home)."""
    from robot.trajectory import first_unsafe_on_path

    def unsafe(a, b):
        key = (a.tobytes(), b.tobytes())
        if key not in cache:
            cache[key] = first_unsafe_on_path(checker, a, b)
        return cache[key]

    seq = [home] + [qs[i] for i in order] + [home]
    idx = [None] + list(order) + [None]
    via = 0
    for k in range(len(seq) - 1):
        a, b = seq[k], seq[k + 1]
        hit = unsafe(a, b)
        if hit is None:
            continue
        if unsafe(a, home) is None and unsafe(home, b) is None:
            via += 1
            continue
        view = idx[k + 1] if idx[k + 1] is not None else idx[k]
        return (int(view), f"transit unsafe directly and via home: {hit[1]}"), via
    return None, via


def _rebranch_along(qs, order, poses, home, model, checker, T_base_world, T_camera_flange) -> np.ndarray:
    qs = qs.copy()
    prev = home
    for i in order:
        ik = model.ik_flange(T_base_world @ poses[i] @ T_camera_flange, prev, seed=0, searches=0)
        if ik.success and np.abs(ik.q - prev).sum() < np.abs(qs[i] - prev).sum() - 1e-6 \
                and checker.check(ik.q) is None:
            qs[i] = ik.q
        prev = qs[i]
    return qs


def _camera_only_violation(checker: SafetyChecker, T_world_cam: np.ndarray):
    rig = checker.rig
    p = T_world_cam[:3, 3]
    height = p[2] - rig.table.height
    if height < rig.safety.min_camera_height:
        return "below_table_margin", f"camera {height:.3f} m above the table, minimum {rig.safety.min_camera_height:.3f} m"
    if np.any(p < checker.box_lo) or np.any(p > checker.box_hi):
        return "outside_workspace", f"camera at ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) m is outside the workspace box"
    return None


def _spread_selection(survivors: list[dict], n: int) -> list[int]:
    """Indices of up to ``n`` survivors: all round-0 ones, then farthest-point fill by direction."""
    if len(survivors) <= n:
        return list(range(len(survivors)))
    dirs = np.array([[np.cos(s["el"]) * np.cos(s["az"]), np.cos(s["el"]) * np.sin(s["az"]), np.sin(s["el"])]
                     for s in survivors])
    chosen = [i for i, s in enumerate(survivors) if s["round"] == 0][:n]
    if not chosen:
        chosen = [0]
    while len(chosen) < n:
        sims = dirs @ dirs[chosen].T                       # cosine to each chosen direction
        score = sims.max(axis=1)
        score[chosen] = np.inf
        chosen.append(int(np.argmin(score)))
    return sorted(chosen)


def verify_view(rig: RigConfig, plan: ViewPlan, i: int, model: ArmModel | None = None) -> tuple[float, float]:
    """(metres, radians) between a view's stored camera pose and FK of its stored joints."""
    model = model if model is not None else arm_model_for(rig)
    T = rig.T_world_base @ model.fkine_flange(plan.joint_positions[i]) @ rig.T_flange_camera
    return pose_error(T, plan.camera_pose_world[i])
