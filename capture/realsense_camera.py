"""Intel RealSense back end through pyrealsense2: the colour stream of a device chosen by serial
(kept as a string: serials can start with 0), or a recording played back through the same code.

librealsense 2.59 records ROS 2 bags (``.db3``); older releases wrote ROS 1 ``.bag`` files.  Both
play back here.  ``write_recording`` makes a recording from numpy frames with librealsense's own
recorder on a ``software_device``, which is how the tests exercise this back end without hardware.

Facts this code is built on: the first frames are dark while auto exposure settles (skipped as
warm-up); the frame pool is small (about 16), so every frame is copied out at once; intrinsics
and distortion come from the stream profile (the factory calibration).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from capture.camera import Camera, CameraConfig, CameraError

RECORDING_SUFFIXES = (".bag", ".db3")


def _rs():
    try:
        import pyrealsense2 as rs
    except ImportError as exc:  # the wheel links libusb-1.0 (Debian: libusb-1.0-0)
        raise CameraError(f"pyrealsense2 does not import ({exc}); install it and the system "
                          "library libusb-1.0-0 (scripts/bootstrap.sh does both)") from None
    return rs


class RealSenseCamera(Camera):
    def __init__(self, config: CameraConfig):
        super().__init__(config)
        self._pipeline = None
        self._profile = None
        self._recording = Path(config.source).suffix.lower() in RECORDING_SUFFIXES
        if self._recording and not Path(config.source).is_file():
            raise CameraError(f"RealSense recording {config.source} does not exist")

    @property
    def is_live(self) -> bool:
        return not self._recording

    def describe(self) -> str:
        if self._recording:
            return f"RealSense recording {self.config.source}"
        return f"RealSense {self.config.source or '(first device)'}"

    def _open_device(self) -> None:
        rs, cfg = _rs(), self.config
        rs_config = rs.config()
        if self._recording:
            rs_config.enable_device_from_file(str(cfg.source), repeat_playback=False)
        elif cfg.source:
            rs_config.enable_device(str(cfg.source))
        rs_config.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, int(round(cfg.fps)))
        pipeline = rs.pipeline()
        try:
            if self._recording:
                # Non-real-time playback must be set before streaming starts: set after start,
                # a busy machine lets the recording run on at its real pace and drop frames.
                resolved = rs_config.resolve(rs.pipeline_wrapper(pipeline))
                resolved.get_device().as_playback().set_real_time(False)
            profile = pipeline.start(rs_config)
        except RuntimeError as exc:
            raise CameraError(f"cannot start {self.describe()} at {cfg.width}x{cfg.height} "
                              f"{cfg.fps:g} fps rgb8: {exc}{self._available_hint()}") from None
        self._pipeline, self._profile = pipeline, profile
        try:
            device = profile.get_device()
            if self._recording:
                # Deliver every recorded frame in order, as fast as we read, instead of dropping
                # frames to keep the recording's real-time pace.
                device.as_playback().set_real_time(False)
            else:
                sensor = device.first_color_sensor()
                if sensor.supports(rs.option.global_time_enabled):
                    sensor.set_option(rs.option.global_time_enabled, 1)  # host-synced timestamps
            stream = profile.get_stream(rs.stream.color).as_video_stream_profile()
            got = (stream.width(), stream.height(), stream.fps(), stream.format())
            want = (cfg.width, cfg.height, int(round(cfg.fps)), rs.format.rgb8)
            if got != want:
                raise CameraError(f"{self.describe()} gave {got[0]}x{got[1]} {got[2]} fps {got[3]}, "
                                  f"configured {want[0]}x{want[1]} {want[2]} fps rgb8")
        except BaseException:
            self._close_device()
            raise

    def _available_hint(self) -> str:
        if self._recording:
            return ""
        try:
            rs = _rs()
            serials = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        except Exception:
            return ""
        return f" (attached serials: {', '.join(serials) or 'none'})"

    def _close_device(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass
            self._pipeline = None

    def _read_frame(self):
        rs = _rs()
        timeout_ms = int(self.config.read_timeout_s * 1000)
        ok, frames = self._pipeline.try_wait_for_frames(timeout_ms)
        if not ok:
            if self._recording:
                raise CameraError(f"{self.describe()} has no more frames")
            raise CameraError(f"{self.describe()} stopped delivering frames "
                              f"(nothing for {self.config.read_timeout_s:.1f} s)")
        color = frames.get_color_frame()
        if not color:
            raise CameraError(f"{self.describe()} delivered a frame set without colour")
        image = np.asanyarray(color.get_data()).copy()  # release the pool's buffer at once
        host_now = time.time()
        device_ts = color.get_timestamp() / 1000.0
        domain = color.get_frame_timestamp_domain()
        live_synced = not self._recording and domain in (rs.timestamp_domain.global_time,
                                                         rs.timestamp_domain.system_time)
        return image, (device_ts if live_synced else host_now), device_ts

    def _stream_intrinsics(self):
        rs = _rs()
        self._require_open()
        return self._profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()

    def intrinsics(self) -> np.ndarray:
        K = self.config.intrinsics_matrix()  # a rig calibration, where given, wins
        if K is not None:
            return K
        intr = self._stream_intrinsics()
        return np.array([[intr.fx, 0.0, intr.ppx], [0.0, intr.fy, intr.ppy], [0.0, 0.0, 1.0]])

    def distortion(self) -> np.ndarray:
        if self.config.intrinsics_matrix() is not None:
            return super().distortion()
        intr = self._stream_intrinsics()
        d = np.zeros(5)
        coeffs = np.asarray(intr.coeffs, float)[:5]
        d[: len(coeffs)] = coeffs
        return d

    def _color_sensor(self):
        try:
            return self._profile.get_device().first_color_sensor()
        except RuntimeError:
            return None

    def lock_exposure(self) -> dict:
        rs = _rs()
        sensor = self._color_sensor() if self._pipeline is not None and not self._recording else None
        if sensor is None:
            return {}
        locked = {}
        for auto, value, key in ((rs.option.enable_auto_exposure, rs.option.exposure, "exposure"),
                                 (rs.option.enable_auto_white_balance, rs.option.white_balance,
                                  "white_balance")):
            if sensor.supports(auto) and sensor.supports(value):
                current = sensor.get_option(value)
                sensor.set_option(auto, 0)
                sensor.set_option(value, current)
                locked[key] = float(sensor.get_option(value))
        return locked

    def unlock_exposure(self) -> None:
        rs = _rs()
        sensor = self._color_sensor() if self._pipeline is not None and not self._recording else None
        if sensor is None:
            return
        for auto in (rs.option.enable_auto_exposure, rs.option.enable_auto_white_balance):
            if sensor.supports(auto):
                sensor.set_option(auto, 1)

    def settings(self) -> dict:
        out = super().settings()
        if self._profile is not None:
            rs = _rs()
            device = self._profile.get_device()
            for key, info in (("serial", rs.camera_info.serial_number), ("name", rs.camera_info.name),
                              ("firmware", rs.camera_info.firmware_version)):
                if device.supports(info):
                    out[key] = device.get_info(info)
        return out

    @staticmethod
    def find() -> list[dict]:
        try:
            rs = _rs()
        except CameraError:
            return []
        found = []
        for device in rs.context().query_devices():
            def info(key):
                return device.get_info(key) if device.supports(key) else ""
            found.append({"backend": "realsense", "source": info(rs.camera_info.serial_number),
                          "name": info(rs.camera_info.name),
                          "firmware": info(rs.camera_info.firmware_version),
                          "usb": info(rs.camera_info.usb_type_descriptor)})
        return found


def write_recording(path: str | Path, frames: np.ndarray, K: np.ndarray, distortion=None,
                    fps: int = 30, serial: str = "000000000000", name: str = "ldsrig software camera"
                    ) -> Path:
    """Record RGB frames (N,H,W,3 uint8) as a RealSense colour stream with librealsense's recorder
    on a ``software_device``.  librealsense >= 2.57 insists on a ``.db3`` (ROS 2 bag) name."""
    rs = _rs()
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    n, height, width, _ = frames.shape
    path = Path(path)
    device = rs.software_device()
    sensor = device.add_sensor("RGB Camera")
    intr = rs.intrinsics()
    intr.width, intr.height = width, height
    intr.fx, intr.fy, intr.ppx, intr.ppy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    intr.model = rs.distortion.brown_conrady
    intr.coeffs = [float(c) for c in (np.zeros(5) if distortion is None else np.asarray(distortion, float)[:5])]
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
    stream.width, stream.height, stream.fps, stream.bpp = width, height, fps, 3
    stream.fmt, stream.intrinsics = rs.format.rgb8, intr
    profile = sensor.add_video_stream(stream)
    device.register_info(rs.camera_info.serial_number, serial)
    device.register_info(rs.camera_info.name, name)
    try:
        recorder = rs.recorder(str(path), device)
    except RuntimeError as exc:
        raise CameraError(f"cannot record to {path}: {exc}") from None
    queue = rs.frame_queue(n + 1)
    sensor.open(profile)
    sensor.start(queue)
    video_profile = profile.as_video_stream_profile()
    for i, image in enumerate(frames):
        frame = rs.software_video_frame()
        frame.pixels, frame.bpp, frame.stride = image, 3, width * 3
        frame.timestamp, frame.frame_number = i * 1000.0 / fps, i
        frame.domain, frame.profile = rs.timestamp_domain.system_time, video_profile
        sensor.on_video_frame(frame)
    for _ in range(n):  # the recorder writes as frames pass through the queue
        queue.wait_for_frame(1000)
    sensor.stop()
    sensor.close()
    del recorder  # closing the recorder finishes the file
    return path
