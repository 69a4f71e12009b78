"""Camera conventions of the store, COLMAP and nerfstudio, and the exact conversions between them.

The store (OpenCV): camera-to-world poses, camera axes +x right, +y down, +z forward; pixel
(0, 0)'s centre is at image coordinate (0, 0), so a centred principal point is ((W-1)/2, (H-1)/2);
distortion k1 k2 p1 p2 k3 acts on normalised coordinates (x/z, y/z) in those axes.

COLMAP: world-to-camera poses (``cam_from_world``, a quaternion and a translation), the same
OpenCV camera axes, and pixel (0, 0)'s centre at (0.5, 0.5): the image spans [0, W] x [0, H].
Principal points therefore move by +0.5 px on the way out and -0.5 px on the way in.

nerfstudio: camera-to-world ``transform_matrix`` in OpenGL camera axes (+x right, +y up, +z back,
looking along -z), and rays cast through pixel centres at (j + 0.5, i + 0.5) for pixel row i,
column j (``Cameras.get_image_coords(pixel_offset=0.5)``), so ``cx``/``cy`` use COLMAP's origin.
Its OPENCV distortion is OpenCV's (radial k1 k2 k3 (k4), tangential p1 p2) applied to normalised
coordinates before the flip to OpenGL axes, so the coefficients carry over unchanged.

Focal lengths and distortion coefficients are the same numbers in all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import UserError

# Right-multiplying a camera-to-world pose by this swaps OpenCV camera axes for OpenGL ones
# (and back: the matrix is its own inverse).
OPENCV_TO_OPENGL_AXES = np.diag([1.0, -1.0, -1.0, 1.0])

# Image coordinate of pixel (0, 0)'s centre in COLMAP and nerfstudio, minus the store's (0).
PIXEL_CENTRE_SHIFT_PX = 0.5

# COLMAP camera models a store camera (pinhole K, OpenCV k1 k2 p1 p2 k3) represents exactly; a
# FULL_OPENCV camera also needs its rational coefficients k4 k5 k6 to be zero.
IMPORTABLE_COLMAP_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV",
                            "FULL_OPENCV")
# nerfstudio camera_model values with a perspective (pinhole plus OpenCV distortion) camera.
IMPORTABLE_NERFSTUDIO_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")

# A K entry below this (relative to the focal length) counts as zero skew.
SKEW_TOLERANCE = 1e-9
# Rotation orthonormality tolerance for calling a stored pose rigid (as `data check` does).
ROTATION_TOLERANCE = 1e-4


class PosedFormatError(UserError):
    """A camera, pose or file that a COLMAP / nerfstudio export or import cannot represent."""


def require_pycolmap():
    """pycolmap, or one line on how to install it (it is the optional ``colmap`` extra)."""
    try:
        import pycolmap
    except ImportError:
        raise PosedFormatError(
            "this command needs pycolmap, which is not installed: "
            "pip install 'ldsrig[colmap]' (or: .venv/bin/python -m pip install pycolmap)") from None
    return pycolmap


# ---------------------------------------------------------------------------------- poses
def opencv_pose_to_opengl(camera_pose_world: np.ndarray) -> np.ndarray:
    """Camera-to-world in OpenCV camera axes -> camera-to-world in OpenGL camera axes."""
    return np.asarray(camera_pose_world, dtype=np.float64) @ OPENCV_TO_OPENGL_AXES


def opengl_pose_to_opencv(transform_matrix: np.ndarray) -> np.ndarray:
    return np.asarray(transform_matrix, dtype=np.float64) @ OPENCV_TO_OPENGL_AXES


def is_rigid(pose: np.ndarray) -> bool:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        return False
    rotation = pose[:3, :3]
    return (np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0])
            and np.allclose(rotation.T @ rotation, np.eye(3), atol=ROTATION_TOLERANCE)
            and abs(np.linalg.det(rotation) - 1.0) < ROTATION_TOLERANCE)


# ---------------------------------------------------------------------------------- cameras
@dataclass(frozen=True)
class StoreCamera:
    """One camera in the store's terms: image size, pinhole K (OpenCV pixel centres) and OpenCV
    distortion k1 k2 p1 p2 k3."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_store(cls, intrinsics: np.ndarray, distortion: np.ndarray, width: int, height: int,
                   where: str) -> "StoreCamera":
        K = np.asarray(intrinsics, dtype=np.float64)
        if abs(K[0, 1]) > SKEW_TOLERANCE * abs(K[0, 0]) or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
            raise PosedFormatError(f"{where}: K has skew or is not a pinhole matrix ({K.tolist()}); "
                                   "COLMAP and nerfstudio have no skew term")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise PosedFormatError(f"{where}: K has non-positive focal lengths ({K[0, 0]}, {K[1, 1]})")
        return cls(int(width), int(height), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
                   float(K[1, 2]), tuple(float(v) for v in np.asarray(distortion, dtype=np.float64)))

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def distortion_array(self) -> np.ndarray:
        return np.array(self.distortion, dtype=np.float64)

    # --- COLMAP
    def colmap_model(self) -> tuple[str, list[float]]:
        """(model name, params). OPENCV (fx fy cx cy k1 k2 p1 p2) unless k3 is non-zero, where
        FULL_OPENCV (k3 and rational k4 k5 k6 = 0) is the exact equivalent."""
        k1, k2, p1, p2, k3 = self.distortion
        cx, cy = self.cx + PIXEL_CENTRE_SHIFT_PX, self.cy + PIXEL_CENTRE_SHIFT_PX
        if k3 == 0.0:
            return "OPENCV", [self.fx, self.fy, cx, cy, k1, k2, p1, p2]
        return "FULL_OPENCV", [self.fx, self.fy, cx, cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]

    @classmethod
    def from_colmap(cls, model_name: str, width: int, height: int, params, where: str) -> "StoreCamera":
        """A COLMAP camera in store terms, or a PosedFormatError for a model the store's pinhole
        + OpenCV distortion cannot represent exactly."""
        params = [float(v) for v in params]
        if model_name not in IMPORTABLE_COLMAP_MODELS:
            raise PosedFormatError(
                f"{where}: unsupported COLMAP camera model {model_name}; ldsrig imports "
                f"{', '.join(IMPORTABLE_COLMAP_MODELS)} (pinhole with OpenCV distortion; undistort "
                "other models first, e.g. with colmap image_undistorter)")
        k1 = k2 = p1 = p2 = k3 = 0.0
        if model_name == "SIMPLE_PINHOLE":
            f, cx, cy = params
            fx = fy = f
        elif model_name == "PINHOLE":
            fx, fy, cx, cy = params
        elif model_name == "SIMPLE_RADIAL":
            f, cx, cy, k1 = params
            fx = fy = f
        elif model_name == "RADIAL":
            f, cx, cy, k1, k2 = params
            fx = fy = f
        elif model_name == "OPENCV":
            fx, fy, cx, cy, k1, k2, p1, p2 = params
        else:  # FULL_OPENCV
            fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6 = params
            if (k4, k5, k6) != (0.0, 0.0, 0.0):
                raise PosedFormatError(
                    f"{where}: unsupported COLMAP camera: FULL_OPENCV with rational coefficients "
                    f"k4 k5 k6 = {k4}, {k5}, {k6}; the store keeps k1 k2 p1 p2 k3 only")
        return cls(int(width), int(height), fx, fy, cx - PIXEL_CENTRE_SHIFT_PX,
                   cy - PIXEL_CENTRE_SHIFT_PX, (k1, k2, p1, p2, k3))

    # --- nerfstudio
    def nerfstudio_fields(self) -> dict:
        k1, k2, p1, p2, k3 = self.distortion
        return {"w": self.width, "h": self.height, "fl_x": self.fx, "fl_y": self.fy,
                "cx": self.cx + PIXEL_CENTRE_SHIFT_PX, "cy": self.cy + PIXEL_CENTRE_SHIFT_PX,
                "k1": k1, "k2": k2, "k3": k3, "k4": 0.0, "p1": p1, "p2": p2}

    @classmethod
    def from_nerfstudio(cls, fields: dict, where: str) -> "StoreCamera":
        """Camera fields of transforms.json (top level merged with one frame's)."""
        model = fields.get("camera_model", "OPENCV")
        if model not in IMPORTABLE_NERFSTUDIO_MODELS:
            raise PosedFormatError(
                f"{where}: unsupported nerfstudio camera_model {model!r}; ldsrig imports "
                f"{', '.join(IMPORTABLE_NERFSTUDIO_MODELS)} (perspective, OpenCV distortion)")
        missing = [k for k in ("fl_x", "cx", "cy", "w", "h") if k not in fields]
        if missing:
            hint = " (a Blender-style camera_angle_x is not read)" if "camera_angle_x" in fields else ""
            raise PosedFormatError(f"{where}: transforms.json lacks {', '.join(missing)}{hint}")
        try:
            values = {k: float(fields.get(k, 0.0)) for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
            fx = float(fields["fl_x"])
            fy = float(fields.get("fl_y", fx))
            cx, cy = float(fields["cx"]), float(fields["cy"])
            width, height = int(fields["w"]), int(fields["h"])
        except (TypeError, ValueError) as exc:
            raise PosedFormatError(f"{where}: a camera field is not a number ({exc})") from None
        if values["k4"] != 0.0:
            raise PosedFormatError(f"{where}: k4 = {values['k4']} is not representable; the store "
                                   "keeps OpenCV k1 k2 p1 p2 k3 only")
        if not all(np.isfinite([fx, fy, cx, cy, *values.values()])) or fx <= 0 or fy <= 0:
            raise PosedFormatError(f"{where}: implausible camera (fl_x {fx}, fl_y {fy}, cx {cx}, cy {cy})")
        return cls(width, height, fx, fy, cx - PIXEL_CENTRE_SHIFT_PX, cy - PIXEL_CENTRE_SHIFT_PX,
                   (values["k1"], values["k2"], values["p1"], values["p2"], values["k3"]))
