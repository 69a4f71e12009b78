"""Rig-like scenes: 2-4 coloured cubes (4-6 cm) on a white table, seen by a webcam from look-at
poses on a spherical cap around the table centre.

World frame: metres, +z up, the table top is the plane z = 0 and its centre is the origin (the
point the rig's viewpoint planner looks at).  The room: a 1.2 m x 0.8 m white table 0.75 m above a
grey floor, a soft ceiling light (area light, jittered per scene) and ambient light from the walls
(constant environment).  :func:`render_cube_view` is also the simulated rig's camera: it renders
any camera pose and pinhole K at any resolution, then passes the radiance through the simulated
webcam (:mod:`datasets.synth.webcam`: exposure, white balance, vignetting, sensor noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datasets.synth import render
from datasets.synth.webcam import webcam_image
from common.geometry import intrinsics_from_fov, look_at
from datasets.synth.objects import SceneObject, place_without_overlap

CUBE_COLORS = {  # linear reflectances of saturated toy-block paints
    "red": (0.62, 0.04, 0.04), "green": (0.05, 0.40, 0.07), "blue": (0.03, 0.10, 0.55),
    "yellow": (0.75, 0.60, 0.04), "orange": (0.80, 0.25, 0.02), "purple": (0.28, 0.05, 0.45),
    "cyan": (0.04, 0.45, 0.50), "magenta": (0.65, 0.04, 0.35),
}
TABLE_SIZE_M = (1.2, 0.8)
TABLE_HEIGHT_M = 0.75
WEBCAM_FOV_X_DEG = 62.0  # a typical 640x480 USB webcam


@dataclass(frozen=True)
class CubeScene:
    objects: tuple[SceneObject, ...]
    light_position: tuple[float, float, float]
    light_radiance: float
    ambient_radiance: float

    def to_metadata(self) -> dict:
        return {"objects": [o.to_metadata() for o in self.objects],
                "table": {"size_m": list(TABLE_SIZE_M), "top_z_m": 0.0, "height_m": TABLE_HEIGHT_M},
                "lighting": {"light_position": list(self.light_position),
                             "light_radiance": self.light_radiance,
                             "ambient_radiance": self.ambient_radiance},
                "units": "metres"}

    @classmethod
    def from_metadata(cls, meta: dict) -> "CubeScene":
        light = meta["lighting"]
        return cls(tuple(SceneObject.from_metadata(o) for o in meta["objects"]),
                   tuple(light["light_position"]), float(light["light_radiance"]),
                   float(light["ambient_radiance"]))


def sample_cube_scene(rng: np.random.Generator, n_cubes: int | None = None, *, min_cubes: int = 2,
                      max_cubes: int = 4, side_range_m: tuple[float, float] = (0.04, 0.06),
                      placement_half_width_m: float = 0.08, min_gap_m: float = 0.01) -> CubeScene:
    """Cubes of distinct colours, random side and yaw, resting on the table without touching."""
    count = int(n_cubes) if n_cubes is not None else int(rng.integers(min_cubes, max_cubes + 1))
    if not 1 <= count <= len(CUBE_COLORS):
        raise ValueError(f"n_cubes must be 1..{len(CUBE_COLORS)}, got {count}")
    while True:
        sides = rng.uniform(*side_range_m, size=count)
        xy = place_without_overlap(rng, [s / np.sqrt(2.0) for s in sides], placement_half_width_m, min_gap_m)
        if xy is not None:
            break
    colors = rng.choice(list(CUBE_COLORS), size=count, replace=False)
    objects = tuple(
        SceneObject(shape="cube", color=str(c), color_rgb=CUBE_COLORS[str(c)], material="plastic",
                    size=f"{side * 100:.1f}cm", half_extent=float(side / 2),
                    position_world=(x, y, float(side / 2)), rotation=float(rng.uniform(0, 90)))
        for c, side, (x, y) in zip(colors, sides, xy))
    light = (float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.4, 0.4)), float(rng.uniform(1.1, 1.5)))
    return CubeScene(objects, light, float(rng.uniform(20.0, 30.0)), float(rng.uniform(0.25, 0.4)))


def sample_cube_viewpoints(rng: np.random.Generator, num_views: int, *,
                           elevation_deg: tuple[float, float] = (25.0, 65.0),
                           azimuth_deg: tuple[float, float] = (0.0, 360.0),
                           radius_m: tuple[float, float] = (0.35, 0.55),
                           target_jitter_m: float = 0.02) -> np.ndarray:
    """Look-at poses (V,4,4) on a spherical cap around the table centre: azimuth stratified into V
    equal bins (one jittered view each, so views spread around), elevation uniform over the cap's
    area (uniform in sin(elevation)), distance uniform, aim point jittered on the table."""
    lo, hi = np.radians(azimuth_deg)
    az = lo + (hi - lo) * (np.arange(num_views) + rng.uniform(0, 1, num_views)) / num_views
    s0, s1 = np.sin(np.radians(elevation_deg))
    el = np.arcsin(rng.uniform(s0, s1, num_views))
    radius = rng.uniform(*radius_m, num_views)
    poses = []
    for a, e, d in zip(az, el, radius):
        target = np.array([*rng.uniform(-target_jitter_m, target_jitter_m, 2), 0.0])
        eye = target + d * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        poses.append(look_at(eye, target))
    return np.stack(poses)


def _background(scene: CubeScene) -> dict:
    mi = render.mitsuba()
    T = mi.ScalarTransform4f
    half_x, half_y = TABLE_SIZE_M[0] / 2, TABLE_SIZE_M[1] / 2
    return {
        "table": {"type": "rectangle", "to_world": T().scale([half_x, half_y, 1.0]),
                  "bsdf": {"type": "roughplastic", "distribution": "ggx", "alpha": 0.25,
                           "diffuse_reflectance": render.rgb_spectrum([0.78, 0.78, 0.76])}},
        "floor": {"type": "rectangle", "to_world": T().translate([0, 0, -TABLE_HEIGHT_M]).scale([6, 6, 1]),
                  "bsdf": {"type": "diffuse", "reflectance": render.rgb_spectrum([0.25, 0.22, 0.2])}},
        "ceiling_light": {"type": "rectangle",
                          "to_world": T().translate(list(scene.light_position)).scale([0.25, 0.25, 1.0])
                          @ T().rotate([1, 0, 0], 180),
                          "emitter": {"type": "area", "radiance": render.rgb_spectrum([scene.light_radiance] * 3)}},
        "room": {"type": "constant", "radiance": render.rgb_spectrum([scene.ambient_radiance] * 3)},
    }


def load_cube_scene(scene: CubeScene) -> render.LoadedScene:
    shapes = [render.object_shape(o.shape, o.half_extent, o.position_world, o.rotation,
                                  render.bsdf_dict(o.material, o.color_rgb)) for o in scene.objects]
    return render.load_scene(_background(scene), shapes)


_cache: dict = {}


def _loaded(scene: CubeScene) -> render.LoadedScene:
    if _cache.get("key") != scene:
        _cache.clear()
        _cache.update(key=scene, loaded=load_cube_scene(scene))
    return _cache["loaded"]


def render_cube_view(scene: CubeScene, camera_pose_world, intrinsics, width: int, height: int,
                     spp: int = 144, rng: np.random.Generator | None = None, noise: bool = True,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb uint8 HxWx3, label_map uint8 HxW, amodal_masks bool OxHxW) for one camera pose.

    ``rng`` drives the path tracer's seed and the webcam effects (None: a fixed seed 0, so the
    same call gives the same image); ``noise=False`` gives the clean render.  Paths stop after 5
    bounces: the scene is diffuse-ish and deeper paths change nothing visible at webcam noise."""
    rng = np.random.default_rng(0) if rng is None else rng
    loaded = _loaded(scene)
    linear = render.render_linear_rgb(loaded, camera_pose_world, intrinsics, width, height,
                                      spp=spp, seed=int(rng.integers(2**31)), max_depth=5)
    if noise:
        rgb, _ = webcam_image(linear, rng)
    else:
        rgb = render.to_uint8(render.linear_to_srgb(linear))
    label_map, amodal = render.render_masks(loaded, camera_pose_world, intrinsics, width, height)
    return rgb, label_map, amodal


def default_intrinsics(width: int = 640, height: int = 480, fov_x_deg: float = WEBCAM_FOV_X_DEG) -> np.ndarray:
    return intrinsics_from_fov(width, height, fov_x_deg)
