"""GQN-Jaco importer: an h5 file with ``images`` [N,V,64,64,3] (uint8, or float in [0,1]) and
``viewpoints`` [N,V,7].  No masks: the store is written without ground truth.

The 7-D viewpoints are kept verbatim in each scene's metadata (``gqn_viewpoints``).  A camera
pose is derived under an ASSUMPTION that is not verified against the dataset's generator: the
GQN convention ``[x, y, z, sin(yaw), cos(yaw), sin(pitch), cos(pitch)]`` with world up +z, yaw
measured about +z from +x and pitch up from the horizontal, the camera looking along
``(cos pitch cos yaw, cos pitch sin yaw, sin pitch)``.  The intrinsics are nominal too: a
square-pixel camera with a 45 degree horizontal field of view (GQN publishes none).  Training on
these images does not use either; MulMON conditions on the 7-D vector itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.geometry import intrinsics_from_fov
from datasets.importers.base import (
    ImportPlan,
    ImportSourceError,
    PendingScene,
    SceneData,
    import_metadata,
)

SOURCE = "import/gqn-jaco"
NOMINAL_HORIZONTAL_FOV_DEGREES = 45.0

STORE_ATTRS = {
    "import_conventions": {
        "viewpoints": "scene metadata gqn_viewpoints [V][7], verbatim",
        "camera_pose_world": (
            "ASSUMED (unverified): viewpoint = [x,y,z, sin yaw, cos yaw, sin pitch, cos pitch], "
            "world up +z, forward = (cos p cos y, cos p sin y, sin p)"
        ),
        "intrinsics": f"nominal, {NOMINAL_HORIZONTAL_FOV_DEGREES} degree horizontal field of view",
        "timestamp": "0 = unknown capture time",
    }
}


def gqn_viewpoint_to_camera_pose_world(viewpoint: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world pose (OpenCV axes) from one 7-D GQN viewpoint, under the assumption
    documented in this module.  Near-vertical views (|pitch| ~ 90 deg) keep yaw for the image's
    right direction so the frame stays defined."""
    viewpoint = np.asarray(viewpoint, dtype=np.float64)
    position = viewpoint[:3]
    yaw = np.arctan2(viewpoint[3], viewpoint[4])
    pitch = np.arctan2(viewpoint[5], viewpoint[6])
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    # Right is horizontal and perpendicular to the yaw direction, whatever the pitch.
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return pose


def read_gqn_jaco(src: str | Path, source: str = SOURCE) -> ImportPlan:
    import h5py

    path = Path(src)
    if not path.is_file():
        raise ImportSourceError(f"{path}: file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ImportSourceError(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        missing = {"images", "viewpoints"} - set(handle.keys())
        if missing:
            raise ImportSourceError(f"{path}: lacks the datasets {sorted(missing)} (found {sorted(handle.keys())})")
        images, viewpoints = handle["images"], handle["viewpoints"]
        if images.ndim != 5 or images.shape[-1] != 3:
            raise ImportSourceError(f"{path}: images are {images.shape}, expected (N,V,H,W,3)")
        if viewpoints.shape != images.shape[:2] + (7,):
            raise ImportSourceError(
                f"{path}: viewpoints are {viewpoints.shape}, expected {images.shape[:2] + (7,)} "
                "to match the images"
            )
        if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
            raise ImportSourceError(f"{path}: images are {images.dtype}, expected uint8 or float")
    except BaseException:
        handle.close()
        raise
    num_scenes, num_views, height, width = images.shape[:4]
    intrinsics = intrinsics_from_fov(width, height, NOMINAL_HORIZONTAL_FOV_DEGREES)
    digits = max(6, len(str(num_scenes - 1)))

    def pending_scenes():
        try:
            for number in range(num_scenes):
                scene_id = f"gqn-jaco-{number:0{digits}d}"

                def load(number=number, scene_id=scene_id):
                    try:
                        scene_images = np.asarray(images[number])
                        scene_viewpoints = np.asarray(viewpoints[number], dtype=np.float64)
                    except (OSError, ValueError) as exc:
                        raise ImportSourceError(f"{path}: scene {number} cannot be read ({exc})") from None
                    if scene_images.dtype != np.uint8:
                        finite = np.all(np.isfinite(scene_images))
                        if not finite or scene_images.min() < 0 or scene_images.max() > 1:
                            raise ImportSourceError(f"{path}: scene {number}: float images outside [0,1]")
                        scene_images = np.round(scene_images * 255.0).astype(np.uint8)
                    if not np.all(np.isfinite(scene_viewpoints)):
                        raise ImportSourceError(f"{path}: scene {number}: viewpoints hold NaN or infinity")
                    poses = np.stack([gqn_viewpoint_to_camera_pose_world(v) for v in scene_viewpoints])
                    metadata = import_metadata(
                        source,
                        source_scene=number,
                        source_file=path.name,
                        objects=[],
                        gqn_viewpoints=scene_viewpoints.tolist(),
                        camera_model="ASSUMED GQN [x,y,z,sin yaw,cos yaw,sin pitch,cos pitch], up +z; nominal K",
                    )
                    return SceneData(
                        metadata=metadata,
                        rgb=np.ascontiguousarray(scene_images),
                        camera_pose_world=poses,
                        intrinsics=np.repeat(intrinsics[None], num_views, axis=0),
                    )

                yield PendingScene(scene_id, num_views, load)
        finally:
            handle.close()

    return ImportPlan(
        source=source,
        height=int(height),
        width=int(width),
        ground_truth=False,
        max_objects=0,
        scenes=pending_scenes(),
        num_scenes=int(num_scenes),
        store_attrs={**STORE_ATTRS, "import_file": path.name},
    )
