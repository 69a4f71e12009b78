"""Camera geometry of the synthetic generators: projection and the conversion between the
store's OpenCV camera convention and Mitsuba's (look-at poses and pinhole K: common.geometry).

Conventions (checked by tests/test_synth.py against Mitsuba's own position AOV):

* ``camera_pose_world`` is camera-to-world, OpenCV camera axes: +x right, +y down, +z forward.
* K is OpenCV's pixel matrix with pixel centres at integer coordinates (pixel (0, 0) covers
  [-0.5, 0.5]^2), so a centred principal point is ((W - 1) / 2, (H - 1) / 2).
* Mitsuba's camera looks along its local +z with local +x to the image *left* and +y up, so its
  ``to_world`` is the OpenCV pose with the x and y axes negated.  Mitsuba's film pixel i covers
  [i, i + 1) and ``principal_point_offset_{x,y}`` shift the principal point by a fraction of the
  film size towards the image left / top.
"""

from __future__ import annotations

import numpy as np

# OpenCV camera axes -> Mitsuba camera axes (and back: the matrix is its own inverse).
OPENCV_TO_MITSUBA_AXES = np.diag([-1.0, -1.0, 1.0, 1.0])

# Mitsuba's perspective camera has square pixels; a K whose focal lengths differ by more than
# this relative amount cannot be rendered exactly and is refused.
MAX_FOCAL_ASPECT_ERROR = 1e-3


def project_points(points_world, camera_pose_world, intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (n, 2) and camera-frame depths (n,) of world points (n, 3)."""
    points_world = np.atleast_2d(np.asarray(points_world, dtype=np.float64))
    world_to_camera = np.linalg.inv(camera_pose_world)
    cam = points_world @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    depth = cam[:, 2]
    uvw = cam @ np.asarray(intrinsics, dtype=np.float64).T
    return uvw[:, :2] / uvw[:, 2:3], depth


def mitsuba_sensor_dict(camera_pose_world, intrinsics, width: int, height: int, *,
                        spp: int, pixel_centres: bool = False, sampler: str = "multijitter") -> dict:
    """A Mitsuba ``perspective`` sensor dict reproducing (pose, K) exactly at width x height.

    ``pixel_centres=True`` gives one un-jittered sample per pixel, through the pixel centre: the
    ray that K and the pose assign to that pixel (used for the label maps and amodal masks).

    ``sampler``: Mitsuba's sample generator for the RGB render.  "multijitter" (correlated
    multi-jittered, stratified in the pixel and in every light/BSDF dimension) gives 3.5x less
    Monte Carlo error than "independent" at 16 spp on the cube scenes, at the same cost
    (benchmarks/bench_render_noise.py; docs/synthetic.md).  It rounds ``spp`` up to a product of
    two near-equal integers (64 -> 8x8, 100 -> 10x10); pass such a count to avoid the warning."""
    import mitsuba as mi

    K = np.asarray(intrinsics, dtype=np.float64)
    pose = np.asarray(camera_pose_world, dtype=np.float64)
    if K.shape != (3, 3) or pose.shape != (4, 4):
        raise ValueError(f"need a (3,3) K and a (4,4) pose, got {K.shape} and {pose.shape}")
    fx, fy = K[0, 0], K[1, 1]
    if abs(K[0, 1]) > 1e-9 or fx <= 0 or fy <= 0:
        raise ValueError(f"K must have positive focal lengths and no skew, got\n{K}")
    if abs(fx - fy) / fy > MAX_FOCAL_ASPECT_ERROR:
        raise ValueError(f"Mitsuba renders square pixels only; fx={fx:.3f} and fy={fy:.3f} differ by "
                         f"more than {MAX_FOCAL_ASPECT_ERROR:.0e} (relative)")
    fov_y = np.degrees(2.0 * np.arctan(height / (2.0 * fy)))
    to_world = mi.ScalarTransform4f((pose @ OPENCV_TO_MITSUBA_AXES).tolist())
    sampler = ({"type": "stratified", "sample_count": 1, "jitter": False} if pixel_centres
               else {"type": sampler, "sample_count": int(spp)})
    return {
        "type": "perspective",
        "fov": float(fov_y),
        "fov_axis": "y",
        "principal_point_offset_x": float(((width - 1) / 2.0 - K[0, 2]) / width),
        "principal_point_offset_y": float(((height - 1) / 2.0 - K[1, 2]) / height),
        "near_clip": 1e-3,
        "far_clip": 1e4,
        "to_world": to_world,
        "film": {"type": "hdrfilm", "width": int(width), "height": int(height),
                 "rfilter": {"type": "box"}, "pixel_format": "rgb"},
        "sampler": sampler,
    }
