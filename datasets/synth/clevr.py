"""CLE-MV-like scenes: CLEVR objects on a grey ground, seen from V cameras on a circle.

Units are CLEVR's Blender units, written to the store as if they were metres (1 unit = 1 m),
exactly as the CLE-MV importer stores imported scenes, so synthetic and imported CLE-MV data share
one scale.  Geometry follows the real CLE-MV generator output in tests/fixtures (checked by a
test that reprojects its objects): cameras on a circle of radius 9.92 at height 3.51, looking at
the origin, horizontal field of view 49.13 degrees (Blender's 35 mm lens on a 32 mm sensor, as in
CLEVR), objects in [-3, 3]^2 with their centres ``half_height`` above the ground.  "large"
objects have radius 0.95 as in the sample; "small" keeps CLEVR's 2:1 ratio (0.475).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datasets.synth import render
from common.geometry import intrinsics_from_fov, look_at
from datasets.synth.meshes import half_height
from datasets.synth.objects import SceneObject, place_without_overlap

# CLEVR's properties.json colours (0-255); CLEVR feeds c/255 to Blender as linear base colour, so
# they are used as linear reflectances here too.
CLEVR_COLORS = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
CLEVR_SIZES = {"large": 0.95, "small": 0.475}
CLEVR_MATERIALS = ("rubber", "metal")
BASIC_SHAPES = ("cube", "sphere", "cylinder")
COMPLEX_SHAPES = BASIC_SHAPES + ("cone", "torus", "capsule", "twisted", "duck")
SHAPE_SETS = {"basic": BASIC_SHAPES, "complex": COMPLEX_SHAPES}

CAMERA_RING_RADIUS = 9.92
CAMERA_HEIGHT = 3.51
CAMERA_FOV_X_DEG = float(np.degrees(2 * np.arctan(16.0 / 35.0)))  # 49.13
PLACEMENT_HALF_WIDTH = 3.0
MIN_GAP = 0.25  # CLEVR's min_dist between object surfaces

# Footprint radius / half_extent, for non-overlap (cube: its half diagonal, whatever its yaw).
_FOOTPRINT = {"cube": np.sqrt(2.0), "duck": 1.15, "twisted": 1.07, "capsule": 0.55}


@dataclass(frozen=True)
class ClevrScene:
    objects: tuple[SceneObject, ...]
    key_light_position: tuple[float, float, float]
    shapes: str = "basic"
    notes: dict = field(default_factory=dict, compare=False, hash=False)

    def to_metadata(self) -> dict:
        return {"objects": [o.to_metadata() for o in self.objects],
                "lighting": {"key_light_position": list(self.key_light_position)},
                "shapes": self.shapes, "units": "clevr (1 unit written as 1 m)"}


def sample_clevr_scene(rng: np.random.Generator, n_objects: int | None = None, *,
                       min_objects: int = 2, max_objects: int = 5, shapes: str = "basic") -> ClevrScene:
    """Random CLEVR-like arrangement (rejection-sampled until every object fits without overlap)."""
    if shapes not in SHAPE_SETS:
        raise ValueError(f"shapes must be one of {sorted(SHAPE_SETS)}, got {shapes!r}")
    shape_set = SHAPE_SETS[shapes]
    while True:
        count = int(n_objects) if n_objects is not None else int(rng.integers(min_objects, max_objects + 1))
        kinds = [str(rng.choice(shape_set)) for _ in range(count)]
        sizes = [str(rng.choice(list(CLEVR_SIZES))) for _ in range(count)]
        radii = [CLEVR_SIZES[s] * _FOOTPRINT.get(k, 1.0) for k, s in zip(kinds, sizes)]
        xy = place_without_overlap(rng, radii, PLACEMENT_HALF_WIDTH, MIN_GAP)
        if xy is None:
            continue
        objects = []
        for kind, size, (x, y) in zip(kinds, sizes, xy):
            color = str(rng.choice(list(CLEVR_COLORS)))
            r = CLEVR_SIZES[size]
            objects.append(SceneObject(
                shape=kind, color=color, color_rgb=tuple(c / 255.0 for c in CLEVR_COLORS[color]),
                material=str(rng.choice(CLEVR_MATERIALS)), size=size, half_extent=r,
                position_world=(x, y, half_height(kind, r)), rotation=float(rng.uniform(0, 360))))
        # CLEVR jitters its lights; one key light here, jittered around a fixed direction.
        key = np.array([6.0, -4.0, 9.0]) + rng.normal(0.0, 0.5, size=3)
        return ClevrScene(tuple(objects), tuple(float(v) for v in key), shapes)


def camera_ring(num_views: int, start_azimuth_deg: float = 0.0, width: int = 64, height: int = 64,
                radius: float = CAMERA_RING_RADIUS, camera_height: float = CAMERA_HEIGHT,
                fov_x_deg: float = CAMERA_FOV_X_DEG) -> tuple[np.ndarray, np.ndarray]:
    """CLE-MV cameras: evenly spaced on a circle, all looking at the origin.
    Returns (poses (V,4,4), intrinsics (V,3,3))."""
    az = np.radians(start_azimuth_deg) + 2 * np.pi * np.arange(num_views) / num_views
    poses = np.stack([look_at([radius * np.cos(a), radius * np.sin(a), camera_height], [0, 0, 0])
                      for a in az])
    K = intrinsics_from_fov(width, height, fov_x_deg)
    return poses, np.repeat(K[None], num_views, 0)


def _background(scene: ClevrScene) -> dict:
    mi = render.mitsuba()
    key = np.asarray(scene.key_light_position)
    return {
        # A large grey ground; the dim constant environment (the sky band at the top of the
        # image) is close to the far ground's shade, like CLEVR's grey backdrop.
        "ground": {"type": "disk", "to_world": mi.ScalarTransform4f().scale([200.0, 200.0, 1.0]),
                   "bsdf": {"type": "diffuse", "reflectance": render.rgb_spectrum([0.6] * 3)}},
        "environment": {"type": "constant", "radiance": render.rgb_spectrum([0.2] * 3)},
        "key_light": {"type": "rectangle",
                      "to_world": mi.ScalarTransform4f().look_at(origin=key.tolist(), target=[0, 0, 0],
                                                                 up=[0, 0, 1]).scale([1.2, 1.2, 1.0]),
                      "emitter": {"type": "area", "radiance": render.rgb_spectrum([40.0] * 3)}},
    }


def load_clevr_scene(scene: ClevrScene) -> render.LoadedScene:
    shapes = [render.object_shape(o.shape, o.half_extent, o.position_world, o.rotation,
                                  render.bsdf_dict(o.material, o.color_rgb)) for o in scene.objects]
    return render.load_scene(_background(scene), shapes)


_cache: dict = {}


def _loaded(scene: ClevrScene) -> render.LoadedScene:
    """Keep the last scene loaded: callers render many views of one scene in a row."""
    key = scene
    if _cache.get("key") != key:
        _cache.clear()
        _cache.update(key=key, loaded=load_clevr_scene(scene))
    return _cache["loaded"]


def render_clevr_view(scene: ClevrScene, camera_pose_world, intrinsics, width: int, height: int,
                      spp: int = 144, rng: np.random.Generator | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb uint8 HxWx3, label_map uint8 HxW, amodal_masks bool OxHxW) for one camera.
    ``rng`` seeds the path tracer (None: seed 0); the same rng state gives the same image."""
    loaded = _loaded(scene)
    seed = 0 if rng is None else int(rng.integers(2**31))
    linear = render.render_linear_rgb(loaded, camera_pose_world, intrinsics, width, height, spp=spp, seed=seed)
    label_map, amodal = render.render_masks(loaded, camera_pose_world, intrinsics, width, height)
    return render.to_uint8(render.linear_to_srgb(linear)), label_map, amodal


def visible_pixel_counts(scene: ClevrScene, poses, intrinsics, width: int, height: int) -> np.ndarray:
    """(V, O) visible pixels of each object in each view (cheap: one ray per pixel)."""
    loaded = _loaded(scene)
    counts = np.zeros((len(poses), len(scene.objects)), dtype=np.int64)
    for v, (pose, K) in enumerate(zip(poses, intrinsics)):
        labels = render.render_label_map(loaded, pose, K, width, height)
        counts[v] = np.bincount(labels.ravel(), minlength=len(scene.objects) + 1)[1:]
    return counts
