"""The object record shared by the synthetic generators (and written into scene metadata)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SceneObject:
    """One object.  ``half_extent`` is the nominal radius (CLEVR's size value: sphere radius,
    half the side of a cube, radius and half height of a cylinder); ``position_world`` is the
    object's centre, which sits ``half_height`` above the ground; ``rotation`` is CLEVR's yaw in
    degrees about world +z."""

    shape: str
    color: str
    color_rgb: tuple[float, float, float]  # linear reflectance given to the renderer, 0..1
    material: str
    size: str
    half_extent: float
    position_world: tuple[float, float, float]
    rotation: float

    def to_metadata(self) -> dict:
        out = asdict(self)
        out["color_rgb"] = [float(v) for v in self.color_rgb]
        out["position_world"] = [float(v) for v in self.position_world]
        out["3d_coords"] = out["position_world"]  # the CLE-MV field name, for importer parity
        return out

    @classmethod
    def from_metadata(cls, meta: dict) -> "SceneObject":
        return cls(shape=meta["shape"], color=meta["color"], color_rgb=tuple(meta["color_rgb"]),
                   material=meta["material"], size=str(meta["size"]),
                   half_extent=float(meta["half_extent"]),
                   position_world=tuple(float(v) for v in meta["position_world"]),
                   rotation=float(meta["rotation"]))


def place_without_overlap(rng: np.random.Generator, radii: list[float], half_width: float,
                          min_gap: float, max_tries: int = 200) -> list[tuple[float, float]] | None:
    """CLEVR-style rejection placement of discs (footprint radii) in [-half_width, half_width]^2
    with at least ``min_gap`` between any two discs; None if some object does not fit."""
    placed: list[tuple[float, float, float]] = []
    for radius in radii:
        limit = half_width - radius
        for _ in range(max_tries):
            x, y = rng.uniform(-limit, limit, size=2)
            if all(np.hypot(x - px, y - py) - radius - pr >= min_gap for px, py, pr in placed):
                placed.append((float(x), float(y), radius))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]
