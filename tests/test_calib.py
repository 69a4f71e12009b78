"""Calibration on synthetic board views with a known answer: the board image is warped into
pinhole views from known poses, then K and the flange-to-camera hand-eye are recovered."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from capture.calibration import (
    BoardConfig,
    CalibrationError,
    board_pose,
    calibrate_intrinsics,
    calibrated_hand_eye,
    calibrated_intrinsics,
    load_calibration,
    render_board_view,
    save_calibration_section,
    solve_hand_eye,
    write_board,
)

W, H = 640, 480
K_TRUE = np.array([[610.0, 0, 318.0], [0, 605.0, 243.0], [0, 0, 1]])
BOARD = BoardConfig()  # 7x5 squares of 4 cm: 28 cm x 20 cm


def _pose(rotvec, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def _board_centre() -> np.ndarray:
    return np.array([BOARD.squares_x * BOARD.square_length / 2, BOARD.squares_y * BOARD.square_length / 2, 0])


def _random_views(rng, n):
    """Camera-from-board poses that see the whole board at 0.45-0.7 m, tilted up to ~35 degrees."""
    poses = []
    for _ in range(n):
        R = Rotation.from_rotvec(rng.uniform(-0.6, 0.6, 3) * [1, 1, 0.5]).as_matrix()
        T = np.eye(4)
        T[:3, :3] = R
        # place the board centre on the optical axis near the image centre, at distance d
        d = rng.uniform(0.45, 0.7)
        T[:3, 3] = np.array([rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.03), d]) - R @ _board_centre()
        poses.append(T)
    return poses


def test_intrinsics_recovered_from_synthetic_views_and_outlier_rejected():
    rng = np.random.default_rng(0)
    poses = _random_views(rng, 10)
    images = [render_board_view(BOARD, K_TRUE, T, W, H) for T in poses]
    # An outlier: a view rendered with a very different focal length looks like a bad detection.
    K_bad = K_TRUE.copy()
    K_bad[0, 0] *= 1.25
    images.append(render_board_view(BOARD, K_bad, poses[0] @ _pose([0.1, 0.2, 0], [0, 0, 0.05]), W, H))
    images.append(np.full((H, W), 128, np.uint8))  # no board at all
    result = calibrate_intrinsics(images, BOARD, flags=0)
    assert 11 in result.rejected and "not found" in result.rejected[11]
    assert 10 in result.rejected and "reprojection" in result.rejected[10]
    assert result.rms_px < 0.5
    np.testing.assert_allclose(result.K[[0, 1], [0, 1]], K_TRUE[[0, 1], [0, 1]], rtol=0.01)
    np.testing.assert_allclose(result.K[:2, 2], K_TRUE[:2, 2], atol=4.0)
    # The views were rendered without distortion: the fitted model must barely move any pixel the
    # board covered (k2 alone is weakly determined, so check displacements, not coefficients).
    import cv2

    pts = np.array([[[x, y]] for x in (120.0, 320.0, 520.0) for y in (90.0, 240.0, 390.0)])
    undist = cv2.undistortPoints(pts, result.K, result.distortion, P=result.K)
    assert np.abs(undist - pts).max() < 1.0
    assert len(result.per_image_rms_px) == 10 and max(result.per_image_rms_px.values()) < 1.0


def test_hand_eye_recovered_from_views_with_known_answer():
    rng = np.random.default_rng(1)
    T_flange_cam = _pose([0.05, -0.1, 0.2], [0.04, -0.01, 0.03])
    T_base_board = _pose([np.pi, 0, 0.3], [0.5, 0.0, 0.0])  # lying on the table, face up
    flanges, boards_seen = [], []
    for T_cam_board in _random_views(rng, 9):
        T_base_flange = T_base_board @ np.linalg.inv(T_cam_board) @ np.linalg.inv(T_flange_cam)
        image = render_board_view(BOARD, K_TRUE, T_cam_board, W, H)
        measured = board_pose(image, BOARD, K_TRUE, np.zeros(5))
        assert measured is not None
        assert np.linalg.norm(measured[:3, 3] - T_cam_board[:3, 3]) < 0.005
        flanges.append(T_base_flange)
        boards_seen.append(measured)
    result = solve_hand_eye(flanges, boards_seen)
    assert set(result.methods) >= {"tsai", "park", "horaud", "daniilidis"}
    err_mm = np.linalg.norm(result.T_flange_cam[:3, 3] - T_flange_cam[:3, 3]) * 1000
    R_err = result.T_flange_cam[:3, :3].T @ T_flange_cam[:3, :3]
    err_deg = np.degrees(np.arccos(np.clip((np.trace(R_err) - 1) / 2, -1, 1)))
    assert err_mm < 5.0 and err_deg < 0.5, (err_mm, err_deg)
    assert result.disagreement_mm[result.method] == 0.0
    assert all(np.isfinite(v) for v in result.disagreement_deg.values())
    assert result.board_spread_mm[result.method] < 5.0
    with pytest.raises(CalibrationError, match="at least 3"):
        solve_hand_eye(flanges[:2], boards_seen[:2])


def test_board_files_and_calibration_file_round_trip(tmp_path):
    info = write_board(BOARD, tmp_path / "board.png", tmp_path / "board.pdf", dpi=200, margin_m=0.01)
    assert info["width_mm"] == pytest.approx(300, abs=0.5) and info["height_mm"] == pytest.approx(220, abs=0.5)
    assert (tmp_path / "board.pdf").read_bytes()[:4] == b"%PDF"
    from PIL import Image

    with Image.open(tmp_path / "board.png") as img:
        assert img.info["dpi"][0] == pytest.approx(200, abs=0.01)

    path = tmp_path / "calibration.yaml"
    save_calibration_section(path, "camera", {"width": W, "height": H, "fx": 600.0, "fy": 601.0,
                                              "cx": 320.0, "cy": 240.0, "distortion": [0.1, 0, 0, 0, 0]})
    save_calibration_section(path, "hand_eye", {"flange_to_camera": np.eye(4).tolist()})
    data = load_calibration(path)
    K, dist = calibrated_intrinsics(data, W, H)
    assert K[0, 0] == 600.0 and dist[0] == 0.1
    np.testing.assert_array_equal(calibrated_hand_eye(data), np.eye(4))
    with pytest.raises(CalibrationError, match="recalibrate"):
        calibrated_intrinsics(data, 320, 240)


def test_calib_cli_board_intrinsics_and_simulated_hand_eye(tmp_path):
    import cv2
    import yaml
    from typer.testing import CliRunner

    from capture.cli import calib_app

    runner = CliRunner()
    res = runner.invoke(calib_app, ["board", "--out", str(tmp_path / "b.png"), "--dpi", "100"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.pdf").is_file() and "300 x 220 mm" in res.output

    rng = np.random.default_rng(3)
    shots = tmp_path / "shots"
    shots.mkdir()
    for i, T in enumerate(_random_views(rng, 8)):
        cv2.imwrite(str(shots / f"v{i}.png"), render_board_view(BOARD, K_TRUE, T, W, H))
    cal = tmp_path / "calibration.yaml"
    res = runner.invoke(calib_app, ["intrinsics", "--images", str(shots), "--save", str(cal)])
    assert res.exit_code == 0, res.output
    assert "v7.png:" in res.output and "0 rejected" in res.output
    camera = yaml.safe_load(cal.read_text())["camera"]
    assert camera["fx"] == pytest.approx(610, rel=0.01) and camera["images_used"] == 8

    # The simulated rig's true hand-eye is the configured one moved by a known offset; the solved
    # one must land on the truth, not on the configured value.
    res = runner.invoke(calib_app, ["hand-eye", "--sim", "--views", "8", "--save", str(cal),
                                    "--set", "camera.width=640", "--set", "camera.height=480"])
    assert res.exit_code == 0, res.output
    data = yaml.safe_load(cal.read_text())
    hand_eye = data["hand_eye"]
    assert hand_eye["simulated_truth"]["error_mm"] < 2.0 and hand_eye["simulated_truth"]["error_deg"] < 0.3
    assert "camera" in data  # the intrinsics section was kept
    assert len(hand_eye["methods"]) >= 3
