"""Mitsuba 3 (variant ``scalar_rgb``, CPU) rendering of a list of objects: linear RGB, exact
visible label maps and exact amodal masks for one camera.

Shapes are named ``obj_<label>`` (label = object index + 1) so a shape maps to its object by name,
whatever order Mitsuba keeps them in; everything else (ground, table, lights) is background.  The
scene is loaded with ``optimize=False`` because Mitsuba otherwise merges meshes that share an
equivalent BSDF into one shape, which would fuse objects in the ``shape_index`` AOV.

Masks are point samples through each pixel centre (one un-jittered sample per pixel, see
:func:`camera.mitsuba_sensor_dict`): ``label_map`` is the object the pixel-centre ray hits first,
and the amodal mask of object i is whether that same ray hits object i when it is alone in the
scene.  Both are therefore exact for that ray, and visible-in-label-map implies inside-amodal.
The RGB render uses a box pixel filter over the same pixel squares.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from datasets.synth import meshes
from datasets.synth.camera import mitsuba_sensor_dict

VARIANT = "scalar_rgb"
_variant_lock = threading.Lock()


def mitsuba():
    """The mitsuba module with the CPU variant selected (imported lazily: it is slow to import)."""
    import mitsuba as mi

    with _variant_lock:
        if mi.variant() != VARIANT:
            mi.set_variant(VARIANT)
    return mi


def set_render_threads(count: int) -> None:
    """Cap the threads one process renders with (worker processes share the machine's cores)."""
    import drjit as dr

    dr.set_thread_count(max(1, int(count)))


def shape_name(label: int) -> str:
    return f"obj_{label:03d}"


def label_of_shape_name(name: str) -> int:
    if name.startswith("obj_"):
        return int(name[4:7])
    return 0


def rgb_spectrum(value) -> dict:
    return {"type": "rgb", "value": [float(v) for v in value]}


def bsdf_dict(material: str, color_linear) -> dict:
    """CLEVR-like materials: rubber = rough plastic (mostly diffuse), metal = coloured rough
    conductor (a perfect-mirror base tinted by the colour), plastic = a shinier plastic."""
    if material == "rubber":
        return {"type": "roughplastic", "distribution": "ggx", "alpha": 0.35, "int_ior": 1.3,
                "diffuse_reflectance": rgb_spectrum(color_linear)}
    if material == "plastic":
        return {"type": "roughplastic", "distribution": "ggx", "alpha": 0.15, "int_ior": 1.49,
                "diffuse_reflectance": rgb_spectrum(color_linear)}
    if material == "metal":
        return {"type": "roughconductor", "distribution": "ggx", "alpha": 0.18, "material": "none",
                "specular_reflectance": rgb_spectrum(color_linear)}
    raise ValueError(f"unknown material {material!r}")


def rotation_z_deg(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def object_shape(shape: str, half_extent: float, position_world, rotation_deg: float, bsdf: dict):
    """A Mitsuba shape (dict or Mesh object) for one object.  ``cube`` and ``sphere`` use
    Mitsuba's primitives; everything else is a procedural mesh from :mod:`meshes`."""
    mi = mitsuba()
    pose = np.eye(4)
    pose[:3, :3] = rotation_z_deg(rotation_deg)
    pose[:3, 3] = position_world
    if shape == "sphere":
        return {"type": "sphere", "center": [float(v) for v in position_world],
                "radius": float(half_extent), "bsdf": bsdf}
    if shape == "cube":
        scale = np.diag([half_extent, half_extent, half_extent, 1.0])
        return {"type": "cube", "to_world": mi.ScalarTransform4f((pose @ scale).tolist()), "bsdf": bsdf}
    vertices, normals, faces = meshes.build(shape, half_extent)
    vertices = vertices.astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]
    normals = normals.astype(np.float64) @ pose[:3, :3].T
    props = mi.Properties()
    props["bsdf"] = mi.load_dict(bsdf)
    mesh = mi.Mesh(shape, len(vertices), len(faces), props=props, has_vertex_normals=True)
    params = mi.traverse(mesh)
    params["vertex_positions"] = vertices.astype(np.float32).ravel().tolist()
    params["vertex_normals"] = normals.astype(np.float32).ravel().tolist()
    params["faces"] = faces.astype(np.uint32).ravel().tolist()
    params.update()
    return mesh


@dataclass
class LoadedScene:
    """A scene loaded into Mitsuba: the full scene plus one single-object scene per object
    (those are loaded on first use: visibility checks of rejected arrangements never need them)."""

    full: object
    object_shapes: list
    shape_labels: np.ndarray  # shape_index AOV value -> object label (0 = background / miss)
    num_objects: int
    _alone: list | None = None

    @property
    def alone(self) -> list:
        if self._alone is None:
            mi = mitsuba()
            self._alone = [mi.load_dict({"type": "scene", shape_name(i + 1): shape}, parallel=False,
                                        optimize=False) for i, shape in enumerate(self.object_shapes)]
        return self._alone


def load_scene(background: dict, object_shapes: list) -> LoadedScene:
    """``background``: Mitsuba dict entries (ground, table, lights, environment);
    ``object_shapes``: one Mitsuba shape (dict or Mesh) per object, label = index + 1."""
    mi = mitsuba()
    scene_dict = {"type": "scene", **background}
    for i, shape in enumerate(object_shapes):
        scene_dict[shape_name(i + 1)] = shape
    full = mi.load_dict(scene_dict, parallel=False, optimize=False)
    # The shape_index AOV is 1 + the shape's position in scene.shapes(), 0 where nothing is hit.
    ids = [s.id() for s in full.shapes()]
    lut = np.zeros(len(ids) + 1, dtype=np.uint8)
    for k, name in enumerate(ids):
        lut[k + 1] = label_of_shape_name(name)
    found = sorted(int(v) for v in lut if v)
    if found != list(range(1, len(object_shapes) + 1)):
        raise RuntimeError(f"Mitsuba kept shapes {ids}; expected one per object")
    return LoadedScene(full, list(object_shapes), lut, len(object_shapes))


def _aov_integrator():
    return mitsuba().load_dict({"type": "aov", "aovs": "index:shape_index"})


def render_linear_rgb(loaded: LoadedScene, camera_pose_world, intrinsics, width, height, *,
                      spp: int, seed: int, max_depth: int = 8,
                      sampler: str = "multijitter") -> np.ndarray:
    """Path-traced linear RGB (H, W, 3) float32 (box filter, ``spp`` samples per pixel)."""
    mi = mitsuba()
    sensor = mi.load_dict(mitsuba_sensor_dict(camera_pose_world, intrinsics, width, height, spp=spp,
                                              sampler=sampler))
    integrator = mi.load_dict({"type": "path", "max_depth": int(max_depth)})
    image = mi.render(loaded.full, sensor=sensor, integrator=integrator, seed=int(seed) % (2**31))
    return np.array(image, dtype=np.float32)[..., :3]


def _hits(scene, sensor, integrator) -> np.ndarray:
    return np.rint(np.array(mitsuba().render(scene, sensor=sensor, integrator=integrator))[..., 0]).astype(np.int64)


def render_masks(loaded: LoadedScene, camera_pose_world, intrinsics, width, height) -> tuple[np.ndarray, np.ndarray]:
    """(label_map (H, W) uint8, amodal_masks (O, H, W) bool) from pixel-centre rays."""
    mi = mitsuba()
    sensor = mi.load_dict(mitsuba_sensor_dict(camera_pose_world, intrinsics, width, height, spp=1,
                                              pixel_centres=True))
    integrator = _aov_integrator()
    label_map = loaded.shape_labels[_hits(loaded.full, sensor, integrator)]
    amodal = np.zeros((loaded.num_objects, height, width), dtype=bool)
    for i, scene in enumerate(loaded.alone):
        amodal[i] = _hits(scene, sensor, integrator) > 0
    return label_map, amodal


def render_label_map(loaded: LoadedScene, camera_pose_world, intrinsics, width, height) -> np.ndarray:
    """Only the visible label map (cheap: one ray per pixel), for visibility checks."""
    mi = mitsuba()
    sensor = mi.load_dict(mitsuba_sensor_dict(camera_pose_world, intrinsics, width, height, spp=1,
                                              pixel_centres=True))
    return loaded.shape_labels[_hits(loaded.full, sensor, _aov_integrator())]


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """sRGB transfer function on [0, 1]-clipped linear values."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def to_uint8(srgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(srgb * 255.0), 0, 255).astype(np.uint8)
