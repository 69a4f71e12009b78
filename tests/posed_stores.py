"""Tiny posed stores for the export, import and pose-audit tests: rendered cube scenes (exact
poses, K and object centres) and variants of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.store import SceneStore

TINY_SIZE = (48, 36)  # (W, H)


def render_cubes(path: Path, *, scenes: int = 1, views: int = 5, width: int = TINY_SIZE[0],
                 height: int = TINY_SIZE[1], spp: int = 4, **settings) -> Path:
    """A rendered cube store (no webcam noise, few samples: geometry is what these tests use)."""
    from datasets.synth.generate import CubesSettings, generate

    generate(path, "cubes", CubesSettings(views=views, width=width, height=height, spp=spp,
                                          noise=False, **settings), scenes, progress=False)
    return path


def distorted_copy(src: Path, dst: Path) -> Path:
    """The same scenes and poses with per-view intrinsics and non-zero OpenCV distortion,
    k3 included (the pixels stay the undistorted render: export geometry does not read them)."""
    with SceneStore.open(src) as source, SceneStore.create(
            dst, source.height, source.width, ground_truth=True, max_objects=source.max_objects,
            attrs={"source": "test/distorted"}) as out:
        for scene_id in source.scene_ids:
            rows = source.images(source.scene_image_indices(scene_id))
            views = len(rows["rgb"])
            K = rows["intrinsics"].copy()
            K[:, 0, 0] *= 1.0 + 0.01 * np.arange(views)
            K[:, 1, 1] *= 1.0 + 0.012 * np.arange(views)
            K[:, 0, 2] += 0.3 * np.arange(views)
            K[:, 1, 2] -= 0.2 * np.arange(views)
            k = np.arange(views)
            distortion = np.stack([-0.08 + 0.01 * k, 0.02 - 0.003 * k, 0.001 * k,
                                   -0.0015 * k, np.where(k % 2 == 1, 0.004, 0.0)], axis=1)
            out.add_scene(scene_id, source.scene_metadata(scene_id))
            out.append_images(scene_id, rows["rgb"], rows["camera_pose_world"], K,
                              distortion=distortion, label_map=rows["label_map"],
                              amodal_masks=rows["amodal_masks"])
            out.set_scene_state(scene_id, "complete")
    return dst


def store_projections(pose: np.ndarray, K: np.ndarray, distortion: np.ndarray,
                      points: np.ndarray) -> np.ndarray:
    """Pixel positions (store convention: pixel (0,0)'s centre at (0,0)) of world points, by
    OpenCV's own projection with the store's pose, K and distortion."""
    import cv2

    world_to_camera = np.linalg.inv(pose)
    rvec, _ = cv2.Rodrigues(world_to_camera[:3, :3])
    pixels, _ = cv2.projectPoints(np.asarray(points, np.float64).reshape(-1, 1, 3), rvec,
                                  world_to_camera[:3, 3], K, distortion)
    return pixels.reshape(-1, 2)


def render_textured_capture(path: Path, *, views: int = 6, width: int = 192, height: int = 144,
                            spp: int = 16, seed: int = 3) -> Path:
    """A simulated capture whose images SIFT can match: the cube scene of the rig simulation,
    rendered by Mitsuba through the stored poses and K, but with a speckled table top (the
    plain white table and flat-coloured cubes give SIFT almost nothing to match across views)
    and views close together (25 degrees of azimuth), as consecutive rig views are."""
    from datasets.synth import cubes, render

    rng = np.random.default_rng(seed)
    scene = cubes.sample_cube_scene(rng, n_cubes=3)
    poses = cubes.sample_cube_viewpoints(rng, views, elevation_deg=(40.0, 50.0),
                                         azimuth_deg=(0.0, 25.0), radius_m=(0.30, 0.34))
    K = cubes.default_intrinsics(width, height)
    mi = render.mitsuba()
    # blotches of a few millimetres to a few centimetres: corners at every scale SIFT looks at
    texture = np.zeros((256, 384))
    for scale in (4, 16, 48):
        coarse = rng.uniform(0, 1, (256 // scale + 2, 384 // scale + 2))
        texture += np.kron(coarse, np.ones((scale, scale)))[:256, :384]
    texture = 0.15 + 0.7 * (texture - texture.min()) / np.ptp(texture)
    background = cubes._background(scene)
    background["table"]["bsdf"] = {"type": "diffuse", "reflectance": {
        "type": "bitmap", "bitmap": mi.Bitmap(np.repeat(texture[..., None], 3, axis=2).astype(np.float32)),
        "raw": True}}
    shapes = [render.object_shape(o.shape, o.half_extent, o.position_world, o.rotation,
                                  render.bsdf_dict(o.material, o.color_rgb)) for o in scene.objects]
    loaded = render.load_scene(background, shapes)
    rgb = np.stack([render.to_uint8(render.linear_to_srgb(render.render_linear_rgb(
        loaded, pose, K, width, height, spp=spp, seed=k, max_depth=3))) for k, pose in enumerate(poses)])
    with SceneStore.create(path, height, width, attrs={"source": "test/textured-cubes"}) as store:
        store.add_scene("capture", scene.to_metadata())
        store.append_images("capture", rgb, poses, np.repeat(K[None], views, 0))
        store.set_scene_state("capture", "complete")
    return path
