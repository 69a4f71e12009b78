"""The camera back ends by name: the one place that knows them all.

capture/camera.py is the interface (Camera, CameraConfig, Frame); each back end module imports
it and this module imports the back ends, so the imports run one way. pyrealsense2 and Mitsuba
load only when a RealSense or simulated camera is opened.
"""

from __future__ import annotations

from capture.camera import Camera, CameraConfig, CameraError
from capture.opencv_camera import OpenCVCamera
from capture.realsense_camera import RealSenseCamera
from capture.sim_camera import SimulatedCamera


def open_camera(config: CameraConfig, **kwargs) -> Camera:
    """A (not yet opened) camera of the configured back end."""
    backend = config.backend.lower()
    if backend == "opencv":
        return OpenCVCamera(config)
    if backend == "realsense":
        return RealSenseCamera(config)
    if backend == "sim":
        return SimulatedCamera(config, **kwargs)
    raise CameraError(f"unknown camera backend {config.backend!r}; use opencv, realsense or sim")


def find_cameras() -> list[dict]:
    """Every attached camera the back ends can see (the simulated one is always there)."""
    found = RealSenseCamera.find() + OpenCVCamera.find()
    found.append({"backend": "sim", "source": "", "name": "simulated rig camera"})
    return found
