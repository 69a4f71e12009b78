"""The camera interface every back end implements, and the camera config.

A camera is opened as a context manager, applies its settings and reads them back (a device that
silently gives something else is a :class:`CameraError` naming what it gave), reads RGB frames
stamped with the host time at which they were captured, and knows its intrinsics and distortion.

    with open_camera(CameraConfig(backend="opencv", source="0", width=640, height=480)) as cam:
        frame = cam.read_after(time.time())   # a frame whose exposure began after now
        frame.image  # (H, W, 3) uint8 RGB
"""

from __future__ import annotations

import abc
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from common.errors import UserError


class CameraError(UserError):
    """A camera that cannot be opened, refuses a setting, or stops delivering frames."""


@dataclass
class Frame:
    """One RGB image and when it was captured."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, owned by the caller (never a view into a driver pool)
    timestamp: float  # host unix seconds at which the exposure is known to have begun (or later)
    index: int  # frame counter of this camera since it was opened
    device_timestamp: float | None = None  # the device's own clock, seconds, where it has one
    ground_truth: dict | None = None  # simulated camera only: label_map, amodal_masks


@dataclass
class CameraConfig:
    """Which camera and how to set it up.  One config type for all back ends."""

    backend: str = "sim"  # "opencv", "realsense" or "sim"
    # opencv: device index ("0"), device path, video file, or image sequence pattern ("img_%03d.png")
    # realsense: serial number (a string: serials may start with 0) or a .bag file; "" = first device
    source: str = ""
    width: int = 640
    height: int = 480
    fps: float = 30.0
    fourcc: str = "MJPG"  # opencv live devices only; "" leaves the driver's default
    warmup_frames: int = 30  # frames dropped after opening while auto exposure settles
    read_timeout_s: float = 5.0  # a camera silent for this long has stopped delivering frames
    lock_exposure: bool = True  # lock exposure and white balance at the start of each scene
    # Calibrated intrinsics (pixels) and OpenCV distortion (k1,k2,p1,p2,k3); empty = take them from
    # the device (RealSense) or the rig calibration file.
    fx: float = 0.0
    fy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0
    distortion: list[float] = field(default_factory=lambda: [0.0] * 5)
    sim_spp: int = 144  # simulated camera: Mitsuba samples per pixel (docs/synthetic.md)
    sim_noise: bool = True  # simulated camera: webcam-like sensor noise

    def intrinsics_matrix(self) -> np.ndarray | None:
        if self.fx <= 0 or self.fy <= 0:
            return None
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def with_intrinsics(self, K: np.ndarray, distortion) -> "CameraConfig":
        return dataclasses.replace(
            self, fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]),
            distortion=[float(d) for d in np.asarray(distortion, float).ravel()[:5]],
        )


class Camera(abc.ABC):
    """An open-able source of RGB frames.  Subclasses implement the ``_``-prefixed hooks."""

    def __init__(self, config: CameraConfig):
        self.config = config
        self._open = False
        self._frame_count = 0

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> "Camera":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if self._open:
            return
        self._open_device()
        self._open = True
        try:
            for _ in range(self.config.warmup_frames if self.is_live else 0):
                self._read_frame()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._open:
            self._open = False
            self._close_device()

    def __del__(self):  # a safety net; always close explicitly (or use ``with``)
        try:
            self.close()
        except Exception:
            pass

    @property
    def is_open(self) -> bool:
        return self._open

    # -- reading ----------------------------------------------------------------------------
    def read(self) -> Frame:
        """The next frame the device delivers (may have been buffered before this call)."""
        self._require_open()
        image, timestamp, device_timestamp = self._read_frame()
        return self._make_frame(image, timestamp, device_timestamp)

    def read_after(self, t: float) -> Frame:
        """A frame whose exposure began at or after host time ``t``, despite driver buffering."""
        self._require_open()
        image, timestamp, device_timestamp = self._read_frame_after(t)
        return self._make_frame(image, timestamp, device_timestamp)

    def _make_frame(self, image, timestamp, device_timestamp) -> Frame:
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise CameraError(f"{self.describe()} gave a {image.dtype} image of shape {image.shape}, "
                              "expected (H, W, 3) uint8")
        if image.shape[:2] != (self.config.height, self.config.width):
            raise CameraError(f"{self.describe()} gave {image.shape[1]}x{image.shape[0]} frames, "
                              f"configured {self.config.width}x{self.config.height}")
        frame = Frame(image=image, timestamp=timestamp, index=self._frame_count,
                      device_timestamp=device_timestamp)
        self._frame_count += 1
        return frame

    def _require_open(self) -> None:
        if not self._open:
            raise CameraError(f"{self.describe()} is not open")

    # -- properties of the device -----------------------------------------------------------
    def intrinsics(self) -> np.ndarray:
        """3x3 pixel K of the delivered frames."""
        K = self.config.intrinsics_matrix()
        if K is None:
            raise CameraError(f"{self.describe()} has no intrinsics: run `ldsrig calib intrinsics` "
                              "and pass the rig calibration")
        return K

    def distortion(self) -> np.ndarray:
        """OpenCV distortion (k1, k2, p1, p2, k3)."""
        d = np.zeros(5)
        src = np.asarray(self.config.distortion, float).ravel()[:5]
        d[: len(src)] = src
        return d

    def lock_exposure(self) -> dict:
        """Fix exposure and white balance at their current (auto-settled) values so every view of a
        scene looks alike.  Returns the settings that are now in force (empty if not supported)."""
        return {}

    def unlock_exposure(self) -> None:
        """Hand exposure and white balance back to the device's automatic control."""

    def settings(self) -> dict:
        """Settings as the device reports them, for the scene metadata."""
        return {"backend": self.config.backend, "source": self.config.source,
                "width": self.config.width, "height": self.config.height, "fps": self.config.fps}

    def describe(self) -> str:
        return f"{self.config.backend} camera {self.config.source!r}"

    @property
    def is_live(self) -> bool:
        """True for a device that produces frames in real time (not a file)."""
        return True

    # -- back end hooks -----------------------------------------------------------------------
    @abc.abstractmethod
    def _open_device(self) -> None: ...

    @abc.abstractmethod
    def _close_device(self) -> None: ...

    @abc.abstractmethod
    def _read_frame(self) -> tuple[np.ndarray, float, float | None]:
        """(RGB uint8 image, host timestamp, device timestamp or None); raise CameraError on failure."""

    def _read_frame_after(self, t: float) -> tuple[np.ndarray, float, float | None]:
        deadline = time.monotonic() + self.config.read_timeout_s
        while True:
            image, timestamp, device_timestamp = self._read_frame()
            if timestamp >= t:
                return image, timestamp, device_timestamp
            if time.monotonic() > deadline:
                raise CameraError(f"{self.describe()} delivered no frame captured after the requested "
                                  f"time within {self.config.read_timeout_s:.1f} s")

    @staticmethod
    def find() -> list[dict]:
        """Attached devices of this back end, as dicts with at least "backend" and "source"."""
        return []
