"""OpenCV ``VideoCapture`` back end: a webcam (index or /dev/video path), a video file, or an image
sequence (``frames/img_%03d.png``).

Live devices: FOURCC first, then width and height, then FPS (a driver picks its frame rates from
the size and format, so FPS set first is lost), each read back; a buffer of one frame; and
``read_after`` drops frames the driver had buffered before the requested time.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import cv2
import numpy as np

from capture.camera import Camera, CameraConfig, CameraError

cv2.setNumThreads(1)  # capture threads must not fight the rest of the process for the 2 cores


def _fourcc_text(code: float) -> str:
    code = int(code)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00")


class OpenCVCamera(Camera):
    def __init__(self, config: CameraConfig):
        super().__init__(config)
        self._cap: cv2.VideoCapture | None = None
        self._source, self._api, self._live = self._parse_source(config.source)
        self._buffer_depth = 4  # V4L2's default; lowered when the driver accepts BUFFERSIZE=1

    @staticmethod
    def _parse_source(source: str):
        source = str(source).strip()
        if source == "" or source.isdigit():
            return int(source or 0), cv2.CAP_ANY, True
        if source.startswith("/dev/"):
            return source, cv2.CAP_V4L2, True
        if "%" in source:
            first = source % 0 if os.path.exists(source % 0) else source % 1
            if not os.path.exists(first):
                raise CameraError(f"image sequence {source!r}: no file {source % 0!r} or {source % 1!r}")
            return source, cv2.CAP_IMAGES, False
        if not Path(source).is_file():
            raise CameraError(f"camera source {source!r} is neither a device index, a /dev path, "
                              "an existing video file nor an image sequence pattern like img_%03d.png")
        return source, cv2.CAP_ANY, False

    @property
    def is_live(self) -> bool:
        return self._live

    def _open_device(self) -> None:
        cap = cv2.VideoCapture(self._source, self._api)
        if not cap.isOpened():
            raise CameraError(f"cannot open {self.describe()}: is it attached and not in use?")
        self._cap = cap
        try:
            if self._live:
                self._apply_live_settings()
            else:
                self._check_file_settings()
        except BaseException:
            self._close_device()
            raise

    def _apply_live_settings(self) -> None:
        cfg, cap = self.config, self._cap
        if cfg.fourcc:
            if len(cfg.fourcc) != 4:
                raise CameraError(f"fourcc must be 4 characters, got {cfg.fourcc!r}")
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        if cap.set(cv2.CAP_PROP_BUFFERSIZE, 1) and int(cap.get(cv2.CAP_PROP_BUFFERSIZE)) == 1:
            self._buffer_depth = 1
        problems = []
        if cfg.fourcc:
            got = _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
            if got != cfg.fourcc:
                problems.append(f"fourcc={cfg.fourcc} (device gave {got or 'none'})")
        got_w, got_h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if (got_w, got_h) != (cfg.width, cfg.height):
            problems.append(f"size={cfg.width}x{cfg.height} (device gave {got_w}x{got_h})")
        got_fps = float(cap.get(cv2.CAP_PROP_FPS))
        if got_fps > 0 and abs(got_fps - cfg.fps) > 0.5:
            problems.append(f"fps={cfg.fps:g} (device gave {got_fps:g})")
        if problems:
            raise CameraError(f"{self.describe()} refused " + ", ".join(problems))

    def _check_file_settings(self) -> None:
        cfg, cap = self.config, self._cap
        got_w, got_h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if got_w and got_h and (got_w, got_h) != (cfg.width, cfg.height):
            raise CameraError(f"{self.describe()} holds {got_w}x{got_h} frames, "
                              f"configured {cfg.width}x{cfg.height}")

    def _close_device(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _retrieve(self) -> np.ndarray:
        ok, bgr = self._cap.retrieve()
        if not ok or bgr is None:
            raise CameraError(f"{self.describe()} failed to decode a frame")
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _grab(self) -> float:
        """Grab one frame; returns the host time the grab returned.  Retries a live device until the
        read timeout; a file that has ended is an error at once."""
        deadline = time.monotonic() + self.config.read_timeout_s
        while True:
            if self._cap.grab():
                return time.time()
            if not self._live:
                raise CameraError(f"{self.describe()} has no more frames")
            if time.monotonic() > deadline:
                raise CameraError(f"{self.describe()} stopped delivering frames "
                                  f"(nothing for {self.config.read_timeout_s:.1f} s)")
            time.sleep(0.01)

    def _read_frame(self):
        timestamp = self._grab()
        return self._retrieve(), timestamp, self._device_time()

    def _device_time(self) -> float | None:
        msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        return msec / 1000.0 if msec and msec > 0 else None

    def _read_frame_after(self, t: float):
        if not self._live:  # a file has no clock: its next frame is "after" anything
            timestamp = max(self._grab(), t)
            return self._retrieve(), timestamp, self._device_time()
        while time.time() < t:
            time.sleep(min(0.005, t - time.time()))
        # A grab that returns at once came out of the driver's buffer and may predate t; a grab that
        # blocked waited for the sensor.  The frame after the first blocking grab began its exposure
        # after that grab returned, so it is certainly newer than t.
        period = 1.0 / max(self.config.fps, 1.0)
        fresh_since = None
        for _ in range(self._buffer_depth + 8):
            start = time.time()
            done = self._grab()
            if fresh_since is not None:
                return self._retrieve(), fresh_since, self._device_time()
            if done - start >= 0.4 * period:
                fresh_since = done
        # The driver never blocked (it drops frames rather than buffering): the buffer is drained.
        return self._retrieve(), done, self._device_time()

    def lock_exposure(self) -> dict:
        if not self._live:
            return {}
        cap = self._cap
        exposure = cap.get(cv2.CAP_PROP_EXPOSURE)
        wb = cap.get(cv2.CAP_PROP_WB_TEMPERATURE)
        # V4L2 exposure modes: 1 manual, 3 aperture priority (auto); other back ends use 0.25/0.75.
        manual = 1 if self._api == cv2.CAP_V4L2 or os.name == "posix" else 0.25
        locked = {}
        if cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, manual):
            cap.set(cv2.CAP_PROP_EXPOSURE, exposure)
            locked["exposure"] = cap.get(cv2.CAP_PROP_EXPOSURE)
        if cap.set(cv2.CAP_PROP_AUTO_WB, 0):
            if wb > 0:
                cap.set(cv2.CAP_PROP_WB_TEMPERATURE, wb)
            locked["white_balance"] = cap.get(cv2.CAP_PROP_WB_TEMPERATURE)
        return locked

    def unlock_exposure(self) -> None:
        if self._live and self._cap is not None:
            self._cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 3 if os.name == "posix" else 0.75)
            self._cap.set(cv2.CAP_PROP_AUTO_WB, 1)

    def settings(self) -> dict:
        out = super().settings()
        if self._cap is not None:
            out.update(fourcc=_fourcc_text(self._cap.get(cv2.CAP_PROP_FOURCC)),
                       reported_fps=float(self._cap.get(cv2.CAP_PROP_FPS)),
                       buffer_depth=self._buffer_depth, backend_name=self._cap.getBackendName())
        return out

    @staticmethod
    def find() -> list[dict]:
        found = []
        for path in sorted(glob.glob("/dev/video*")):
            cap = cv2.VideoCapture(path, cv2.CAP_V4L2)
            try:
                if not cap.isOpened():
                    continue  # metadata nodes: every UVC camera has one that opens no stream
                name_file = Path("/sys/class/video4linux") / Path(path).name / "name"
                name = name_file.read_text().strip() if name_file.exists() else ""
                found.append({"backend": "opencv", "source": path, "name": name,
                              "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                              "fourcc": _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))})
            finally:
                cap.release()
        return found
