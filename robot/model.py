"""Arm kinematics on top of roboticstoolbox-python: model loading, flange FK, IK, collision capsules.

Only models that load offline are accepted by their short names: ``Panda`` (URDF bundled with the
toolbox) and every DH model (``DH.UR5``, ``DH.Panda``, ...).  The URDF UR models fetch their files
through ``robot_descriptions`` at first use and fail offline; ``URDF.<Name>`` still tries them for
someone who has them cached, and turns any failure into a :class:`ModelLoadError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from robot.errors import ModelLoadError

# URDF models whose files ship inside roboticstoolbox (verified to load without a network).
_OFFLINE_URDF = ("Panda",)


def offline_model_names() -> list[str]:
    import roboticstoolbox as rtb

    dh = sorted(n for n in dir(rtb.models.DH) if not n.startswith("_") and isinstance(getattr(rtb.models.DH, n), type))
    return list(_OFFLINE_URDF) + [f"DH.{n}" for n in dh]


def load_robot_model(name: str):
    """An rtb robot from ``"Panda"``, ``"DH.UR5"``, ``"URDF.Panda"``...; clear errors otherwise."""
    import roboticstoolbox as rtb

    parts = name.strip().split(".")
    alternatives = ", ".join(offline_model_names())
    if len(parts) == 1 and parts[0] not in _OFFLINE_URDF:
        dh = f"DH.{parts[0]}"
        hint = f" (the offline DH model {dh} has the same kinematics)" if dh in offline_model_names() else ""
        if hasattr(rtb.models.URDF, parts[0]):
            raise ModelLoadError(
                f"robot model {name!r} is a URDF model that downloads its files at first use and fails "
                f"offline{hint}; use one that loads offline: {alternatives} (or 'URDF.{parts[0]}' to try it anyway)")
        raise ModelLoadError(f"unknown robot model {name!r}{hint}; models that load offline: {alternatives}")
    node = rtb.models
    for part in parts:
        node = getattr(node, part, None)
        if node is None:
            raise ModelLoadError(f"unknown robot model {name!r}; models that load offline: {alternatives}")
    if not isinstance(node, type):
        raise ModelLoadError(f"{name!r} is not a robot model class; models that load offline: {alternatives}")
    try:
        return node()
    except Exception as exc:  # network failures, missing meshes, git errors: all the user's to fix
        raise ModelLoadError(
            f"robot model {name!r} could not load ({type(exc).__name__}: {exc}); "
            f"models that load offline: {alternatives}") from None


@dataclass(frozen=True)
class Capsule:
    """A swept sphere on one kinematic frame: the segment a-b (frame coordinates) grown by radius."""

    frame: int             # index into ArmModel.collision_frames(q)
    a: np.ndarray
    b: np.ndarray
    radius: float
    depth: int             # position along the serial chain (neighbours are never checked)
    name: str


@dataclass
class IKResult:
    q: np.ndarray
    success: bool
    reason: str


class ArmModel:
    """One loaded robot model: flange forward kinematics, IK for the flange, collision capsules.

    Everything is in the robot's base frame; the rig adds the base pose and the hand-eye.
    """

    def __init__(self, name: str, flange_link: str = "auto"):
        self.name = name
        self.robot = load_robot_model(name)
        self.n = int(self.robot.n)
        self.qlim = np.asarray(self.robot.qlim, dtype=float).reshape(2, self.n)
        self.is_dh = not hasattr(self.robot, "ee_links") or type(self.robot).__module__.startswith(
            "roboticstoolbox.models.DH")
        self._end = None
        if not self.is_dh:
            if flange_link == "auto":
                self._end = self.robot.ee_links[0]
            else:
                names = [link.name for link in self.robot.links]
                if flange_link not in names:
                    raise ModelLoadError(f"flange_link {flange_link!r} is not a link of {name}; links: {', '.join(names)}")
                self._end = self.robot.links[names.index(flange_link)]
        elif flange_link not in ("auto", ""):
            raise ModelLoadError(f"{name} is a DH model: its flange is its last link; set flange_link: auto")
        self.ready = np.asarray(getattr(self.robot, "qr", np.zeros(self.n)), dtype=float)
        self.capsules, self.has_collision_shapes = self._build_capsules()
        self.self_collision_pairs = self._default_pairs()

    # -- kinematics -------------------------------------------------------------------------
    @property
    def flange_link_name(self) -> str:
        return self._end.name if self._end is not None else f"link{self.n}"

    def fkine_flange(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        if self._end is None:
            return np.asarray(self.robot.fkine(q).A)
        return np.asarray(self.robot.fkine(q, end=self._end).A)

    def ik_flange(self, T_base_flange: np.ndarray, q0, seed: int = 0, searches: int = 20) -> IKResult:
        """Flange pose -> joints with ``ikine_LM`` from ``q0`` first, then random restarts.

        Joint limits are enforced by the solver; a tight tolerance keeps fkine(ik(T)) = T to ~1e-6.
        """
        from spatialmath import SE3

        Tep = SE3(np.asarray(T_base_flange, dtype=float), check=False)
        kwargs = dict(ilimit=60, tol=1e-12, joint_limits=True)
        if self._end is not None:
            kwargs["end"] = self._end
        sol = self.robot.ikine_LM(Tep, q0=np.asarray(q0, dtype=float), slimit=1, seed=seed, **kwargs)
        if not sol.success and searches > 0:
            sol = self.robot.ikine_LM(Tep, slimit=searches, seed=seed, **kwargs)
        reason = "" if sol.success else (sol.reason or "no solution within the joint limits")
        return IKResult(np.asarray(sol.q, dtype=float), bool(sol.success), str(reason))

    def collision_frames(self, q) -> np.ndarray:
        """(F, 4, 4) frames the capsules hang on, base frame; the last one is the flange."""
        q = np.asarray(q, dtype=float)
        allT = self.robot.fkine_all(q)
        if self.is_dh:
            frames = [np.asarray(T.A) for T in allT]         # base, then one per joint
        else:
            frames = [np.asarray(allT[link.number].A) for link in self._chain]
        frames.append(self.fkine_flange(q))
        return np.stack(frames)

    # -- collision geometry -------------------------------------------------------------------
    def _build_capsules(self) -> tuple[list[Capsule], bool]:
        caps: list[Capsule] = []
        if self.is_dh:
            # No shapes in DH models: a 4 cm capsule between consecutive joint frames, good enough
            # to keep the arm off the table, not for self-collision.
            self._chain = []
            for i in range(1, self.n + 1):
                caps.append(Capsule(i, np.zeros(3), np.zeros(3), 0.04, i, f"joint{i}"))
            return caps, False
        # the serial chain from the base to the flange
        chain, link = [], self._end
        while link is not None:
            chain.append(link)
            link = link.parent
        self._chain = chain[::-1]
        for depth, link in enumerate(self._chain):
            for shape in link.collision:
                kind = type(shape).__name__
                T = np.asarray(shape.T if hasattr(shape, "T") else np.eye(4))
                if kind == "Sphere":
                    a = b = T[:3, 3]
                    r = float(shape.radius)
                elif kind == "Cylinder":
                    half = 0.5 * float(shape.length) * T[:3, 2]
                    a, b = T[:3, 3] - half, T[:3, 3] + half
                    r = float(shape.radius)
                elif kind == "Cuboid":
                    a = b = T[:3, 3]
                    r = 0.5 * float(np.linalg.norm(shape.scale))   # the box's bounding sphere
                else:       # meshes: no primitive to check; the other shapes of the link remain
                    continue
                caps.append(Capsule(depth, np.array(a), np.array(b), r, depth, link.name))
        return caps, bool(caps)

    def add_camera_capsule(self, T_flange_camera: np.ndarray, radius: float) -> None:
        """The camera body: a sphere at the camera origin, carried by the flange frame."""
        centre = np.asarray(T_flange_camera)[:3, 3]
        flange_frame = len(self._chain) if not self.is_dh else self.n + 1
        depth = (max(c.depth for c in self.capsules) + 1) if self.capsules else 0
        self.capsules = [c for c in self.capsules if c.name != "camera"]
        self.capsules.append(Capsule(flange_frame, centre.copy(), centre.copy(), radius, depth, "camera"))
        self.self_collision_pairs = self._default_pairs()

    def _default_pairs(self) -> np.ndarray:
        """Capsule pairs worth checking: three or more links apart along the chain, and apart at
        the ready pose (shapes that overlap there overlap by design, as an SRDF would declare)."""
        if not self.has_collision_shapes:
            return np.zeros((0, 2), dtype=int)
        pairs = [(i, j) for i in range(len(self.capsules)) for j in range(i + 1, len(self.capsules))
                 if abs(self.capsules[i].depth - self.capsules[j].depth) >= 3]
        if not pairs:
            return np.zeros((0, 2), dtype=int)
        pairs = np.asarray(pairs, dtype=int)
        a, b, r = self.capsule_segments(self.collision_frames(self.ready))
        gap = segment_distances(a[pairs[:, 0]], b[pairs[:, 0]], a[pairs[:, 1]], b[pairs[:, 1]]) \
            - r[pairs[:, 0]] - r[pairs[:, 1]]
        return pairs[gap > 0]

    def capsule_segments(self, frames: np.ndarray):
        """World (here: base-frame) endpoints (C,3), (C,3) and radii (C,) of every capsule."""
        a = np.stack([frames[c.frame, :3, :3] @ c.a + frames[c.frame, :3, 3] for c in self.capsules])
        b = np.stack([frames[c.frame, :3, :3] @ c.b + frames[c.frame, :3, 3] for c in self.capsules])
        if self.is_dh:
            # joint-to-joint segments: from the previous frame's origin to this one's
            for k, c in enumerate(self.capsules):
                if c.name.startswith("joint"):
                    a[k] = frames[c.frame - 1, :3, 3]
        r = np.array([c.radius for c in self.capsules])
        return a, b, r


def segment_distances(p1, q1, p2, q2) -> np.ndarray:
    """Closest distance between segments p1-q1 and p2-q2, vectorised over the leading axis
    (Ericson, Real-Time Collision Detection, 5.1.9)."""
    eps = 1e-12
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a = np.einsum("ij,ij->i", d1, d1)
    e = np.einsum("ij,ij->i", d2, d2)
    f = np.einsum("ij,ij->i", d2, r)
    c = np.einsum("ij,ij->i", d1, r)
    b = np.einsum("ij,ij->i", d1, d2)
    denom = a * e - b * b
    s = np.where(denom > eps, np.clip((b * f - c * e) / np.where(denom > eps, denom, 1.0), 0.0, 1.0), 0.0)
    t = np.where(e > eps, (b * s + f) / np.where(e > eps, e, 1.0), 0.0)
    safe_a = np.where(a > eps, a, 1.0)
    s = np.where(t < 0.0, np.where(a > eps, np.clip(-c / safe_a, 0.0, 1.0), 0.0), s)
    s = np.where(t > 1.0, np.where(a > eps, np.clip((b - c) / safe_a, 0.0, 1.0), 0.0), s)
    t = np.clip(t, 0.0, 1.0)
    closest = (p1 + d1 * s[:, None]) - (p2 + d2 * t[:, None])
    return np.linalg.norm(closest, axis=1)


@lru_cache(maxsize=8)
def _cached_model(name: str, flange_link: str) -> ArmModel:
    return ArmModel(name, flange_link)


def arm_model_for(rig) -> ArmModel:
    """The rig's arm model with the camera body attached (a fresh object: capsules are per rig)."""
    import copy

    base = _cached_model(rig.model, rig.flange_link)
    model = copy.copy(base)
    model.capsules = list(base.capsules)
    model.add_camera_capsule(rig.T_flange_camera, rig.safety.camera_radius)
    return model
