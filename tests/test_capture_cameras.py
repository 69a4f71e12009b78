"""Camera back ends on real data: OpenCV on a generated video file and an image sequence, RealSense
on a recording made here with librealsense's own recorder."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from capture.camera import CameraConfig, CameraError
from capture.cameras import find_cameras, open_camera

W, H = 64, 48


def _frames(n: int) -> np.ndarray:
    """Frames that are easy to tell apart after lossy coding: frame i is flat grey 20*i, with a
    red square in the top-left corner so the channel order is checked too."""
    frames = np.zeros((n, H, W, 3), np.uint8)
    for i in range(n):
        frames[i] = 20 * i
        frames[i, :16, :16] = (255, 0, 0)
    return frames


def _config(source, **kw) -> CameraConfig:
    return CameraConfig(backend=kw.pop("backend", "opencv"), source=str(source), width=W, height=H,
                        fps=30, **kw)


def test_opencv_image_sequence_reads_every_frame_in_rgb(tmp_path):
    frames = _frames(5)
    for i, img in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"img_{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    with open_camera(_config(tmp_path / "img_%03d.png")) as cam:
        got = [cam.read() for _ in range(5)]
        with pytest.raises(CameraError, match="no more frames"):
            cam.read()
    np.testing.assert_array_equal(np.stack([f.image for f in got]), frames)  # PNG is lossless
    assert [f.index for f in got] == list(range(5))
    assert all(b.timestamp >= a.timestamp for a, b in zip(got, got[1:]))


def test_opencv_video_file_read_after_and_size_check(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    assert writer.isOpened()
    frames = _frames(6)
    for img in frames:
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()

    cfg = _config(path)
    with open_camera(cfg.with_intrinsics(np.array([[50, 0, 32], [0, 50, 24], [0, 0, 1.0]]), [0.1, 0, 0, 0, 0])) as cam:
        first = cam.read()
        t = time.time() + 0.05
        after = cam.read_after(t)
        assert after.timestamp >= t
        np.testing.assert_allclose(cam.intrinsics()[0, 0], 50)
        assert cam.distortion()[0] == pytest.approx(0.1)
    # MJPG is lossy: compare with a tolerance; frame order and the red corner (RGB order) survive.
    assert np.abs(first.image.astype(int) - frames[0]).mean() < 4
    assert np.abs(after.image.astype(int) - frames[1]).mean() < 4
    assert after.image[4, 4, 0] > 200 and after.image[4, 4, 2] < 60

    wrong = CameraConfig(backend="opencv", source=str(path), width=W * 2, height=H)
    with pytest.raises(CameraError, match=f"holds {W}x{H} frames, configured {2 * W}x{H}"):
        open_camera(wrong).open()


def test_opencv_bad_sources_are_user_errors(tmp_path):
    with pytest.raises(CameraError, match="neither a device index"):
        open_camera(_config(tmp_path / "missing.avi"))
    with pytest.raises(CameraError, match="image sequence"):
        open_camera(_config(tmp_path / "nothing_%03d.png"))
    with pytest.raises(CameraError, match="no intrinsics"):
        frames = _frames(1)
        cv2.imwrite(str(tmp_path / "one_000.png"), frames[0])
        with open_camera(_config(tmp_path / "one_%03d.png")) as cam:
            cam.intrinsics()


def test_find_cameras_lists_the_simulated_camera():
    found = find_cameras()
    assert {"backend": "sim", "source": "", "name": "simulated rig camera"} in found
    assert all({"backend", "source"} <= set(d) for d in found)


def test_realsense_recording_plays_back_through_the_camera_code(tmp_path):
    rs = pytest.importorskip("pyrealsense2", exc_type=ImportError)
    from capture.realsense_camera import write_recording

    frames = _frames(8)
    K = np.array([[52.0, 0, 31.5], [0, 53.0, 23.5], [0, 0, 1]])
    path = write_recording(tmp_path / "take.db3", frames, K, distortion=[0.05, -0.01, 0, 0, 0],
                           fps=30, serial="012345678901")
    cfg = _config(path, backend="realsense")
    with open_camera(cfg) as cam:
        assert cam.is_live is False
        got = [cam.read() for _ in range(8)]
        np.testing.assert_allclose(cam.intrinsics(), K, atol=1e-4)
        np.testing.assert_allclose(cam.distortion(), [0.05, -0.01, 0, 0, 0], atol=1e-6)
        assert cam.settings()["serial"] == "012345678901"  # a string, leading zero kept
        with pytest.raises(CameraError, match="no more frames"):
            cam.read()
    np.testing.assert_array_equal(np.stack([f.image for f in got]), frames)
    assert [f.device_timestamp for f in got] == pytest.approx([i / 30 for i in range(8)], abs=1e-6)
    # Frames are copied out of librealsense's pool: they stay valid after the pipeline stopped.
    assert got[0].image.flags.owndata
    assert int(got[3].image[30, 30, 0]) == 60

    wrong = CameraConfig(backend="realsense", source=str(path), width=W, height=H, fps=15)
    with pytest.raises(CameraError, match="cannot start"):
        open_camera(wrong).open()
