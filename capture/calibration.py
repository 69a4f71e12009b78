"""Camera calibration with an OpenCV ChArUco board: intrinsics (``cv2.calibrateCamera`` on
``board.matchImagePoints`` correspondences, with per-image reprojection errors and outlier
rejection) and the flange-to-camera hand-eye (``cv2.calibrateHandEye``, every method, their
disagreement reported).

Frames: ``T_a_b`` maps points from frame b into frame a.  The board frame is OpenCV's: origin at
the board's top-left outer corner, +x along the squares' rows, +y down the board, +z into it.

The rig calibration file (YAML) holds both results:

    camera:   {width, height, fx, fy, cx, cy, distortion: [k1,k2,p1,p2,k3], rms_px, ...}
    hand_eye: {flange_to_camera: 4x4, method, spread_deg, spread_mm, methods: {...}}
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from common.config import read_yaml_mapping
from common.errors import UserError
from common.io import atomic_write_text


class CalibrationError(UserError):
    """Too few usable views, a board that is not found, or a calibration file that is broken."""


@dataclass
class BoardConfig:
    """The printed ChArUco board.  Lengths in metres, as printed (measure the print!)."""

    squares_x: int = 7
    squares_y: int = 5
    square_length: float = 0.04
    marker_length: float = 0.03
    dictionary: str = "DICT_5X5_100"
    legacy_pattern: bool = False  # boards made before OpenCV 4.6 with an even row count, calib.io boards


def make_board(cfg: BoardConfig) -> "cv2.aruco.CharucoBoard":
    if not hasattr(cv2.aruco, cfg.dictionary):
        raise CalibrationError(f"unknown ArUco dictionary {cfg.dictionary!r} (e.g. DICT_5X5_100)")
    if cfg.marker_length >= cfg.square_length:
        raise CalibrationError("board: marker_length must be smaller than square_length")
    dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, cfg.dictionary))
    board = cv2.aruco.CharucoBoard((cfg.squares_x, cfg.squares_y), cfg.square_length,
                                   cfg.marker_length, dictionary)
    board.setLegacyPattern(cfg.legacy_pattern)
    return board


def board_image(cfg: BoardConfig, px_per_m: float, margin_px: int = 0) -> np.ndarray:
    """The board drawn at exactly ``px_per_m`` (grey uint8), with a white margin."""
    board = make_board(cfg)
    w = int(round(cfg.squares_x * cfg.square_length * px_per_m))
    h = int(round(cfg.squares_y * cfg.square_length * px_per_m))
    return board.generateImage((w + 2 * margin_px, h + 2 * margin_px), marginSize=margin_px, borderBits=1)


def write_board(cfg: BoardConfig, png_path: str | Path, pdf_path: str | Path | None = None,
                dpi: int = 300, margin_m: float = 0.01) -> dict:
    """A printable board: PNG (with its DPI recorded) and PDF whose page prints at true scale."""
    from PIL import Image

    px_per_m = dpi / 0.0254
    margin_px = int(round(margin_m * px_per_m))
    img = Image.fromarray(board_image(cfg, px_per_m, margin_px))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    img.save(png_path, dpi=(dpi, dpi))
    if pdf_path is not None:
        img.convert("RGB").save(Path(pdf_path), "PDF", resolution=float(dpi))
    return {"png": str(png_path), "pdf": str(pdf_path) if pdf_path else None, "dpi": dpi,
            "width_mm": img.width / px_per_m * 1000, "height_mm": img.height / px_per_m * 1000}


def render_board_view(cfg: BoardConfig, K: np.ndarray, T_cam_board: np.ndarray, width: int, height: int,
                      px_per_m: float = 4000.0, background: int = 200) -> np.ndarray:
    """A synthetic pinhole view (grey uint8) of the board at pose ``T_cam_board``: the board image
    warped through the plane-induced homography.  Used by the tests and the simulated rig."""
    margin_px = int(round(0.01 * px_per_m))
    texture = board_image(cfg, px_per_m, margin_px)
    # Texture pixel (u, v) is board point ((u - m)/s, (v - m)/s, 0); its image is K [r1 r2 t] p.
    texture_to_board = np.array([[1 / px_per_m, 0, -margin_px / px_per_m],
                                 [0, 1 / px_per_m, -margin_px / px_per_m], [0, 0, 1]])
    R, t = T_cam_board[:3, :3], T_cam_board[:3, 3]
    H = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ texture_to_board
    # Paint an opaque white sheet (the texture) over a grey table; area averaging via INTER_AREA is
    # not available for warps, so render at 2x and downsample to avoid aliasing.
    S = np.diag([2.0, 2.0, 1.0])
    big = cv2.warpPerspective(texture, S @ H, (2 * width, 2 * height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=background)
    return cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA)


@dataclass
class BoardDetection:
    object_points: np.ndarray  # (N, 3) float32, board frame, metres
    image_points: np.ndarray  # (N, 2) float32, pixels
    ids: np.ndarray  # (N,) ChArUco corner ids


def detect_board(image: np.ndarray, board, min_corners: int = 6) -> BoardDetection | None:
    """ChArUco corners in an RGB or grey image, or None where fewer than ``min_corners`` are seen."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(grey)
    if ids is None or len(ids) < min_corners:
        return None
    obj, img = board.matchImagePoints(corners, ids)
    return BoardDetection(obj.reshape(-1, 3).astype(np.float32), img.reshape(-1, 2).astype(np.float32),
                          ids.ravel())


@dataclass
class IntrinsicsResult:
    K: np.ndarray
    distortion: np.ndarray  # (5,)
    width: int
    height: int
    rms_px: float  # over the images kept
    per_image_rms_px: dict[int, float]  # image index -> RMS reprojection error (kept images)
    rejected: dict[int, str]  # image index -> why it was left out
    T_cam_board: dict[int, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height,
                "fx": float(self.K[0, 0]), "fy": float(self.K[1, 1]),
                "cx": float(self.K[0, 2]), "cy": float(self.K[1, 2]),
                "distortion": [float(d) for d in self.distortion],
                "rms_px": float(self.rms_px), "images_used": len(self.per_image_rms_px),
                "images_rejected": {int(k): v for k, v in self.rejected.items()},
                "date": datetime.datetime.now().isoformat(timespec="seconds")}


def _per_image_rms(det: BoardDetection, rvec, tvec, K, dist) -> float:
    projected, _ = cv2.projectPoints(det.object_points, rvec, tvec, K, dist)
    return float(np.sqrt(np.mean(np.sum((projected.reshape(-1, 2) - det.image_points) ** 2, axis=1))))


def calibrate_intrinsics(images: list[np.ndarray], board_cfg: BoardConfig, min_views: int = 4,
                         max_image_rms_px: float = 1.0, outlier_factor: float = 3.0,
                         flags: int = 0) -> IntrinsicsResult:
    """Calibrate K and distortion from views of the board.  Images where the board is not found are
    skipped; images whose reprojection error is above ``max_image_rms_px`` and ``outlier_factor``
    times the median are rejected one at a time (worst first) and the calibration redone."""
    if not images:
        raise CalibrationError("no images to calibrate from")
    height, width = images[0].shape[:2]
    board = make_board(board_cfg)
    detections: dict[int, BoardDetection] = {}
    rejected: dict[int, str] = {}
    for i, image in enumerate(images):
        if image.shape[:2] != (height, width):
            rejected[i] = f"size {image.shape[1]}x{image.shape[0]} differs from {width}x{height}"
            continue
        det = detect_board(image, board)
        if det is None:
            rejected[i] = "board not found (fewer than 6 corners)"
        else:
            detections[i] = det
    while True:
        if len(detections) < min_views:
            raise CalibrationError(f"only {len(detections)} usable board views (need {min_views}); "
                                   f"rejected: {rejected}")
        keys = sorted(detections)
        rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(
            [detections[k].object_points for k in keys], [detections[k].image_points for k in keys],
            (width, height), None, None, flags=flags)
        errors = {k: _per_image_rms(detections[k], r, t, K, dist) for k, r, t in zip(keys, rvecs, tvecs)}
        median = float(np.median(list(errors.values())))
        worst = max(errors, key=errors.get)
        if errors[worst] > max(max_image_rms_px, outlier_factor * median) and len(detections) > min_views:
            rejected[worst] = f"reprojection error {errors[worst]:.2f} px (median {median:.2f} px)"
            del detections[worst]
            continue
        poses = {}
        for k, r, t in zip(keys, rvecs, tvecs):
            T = np.eye(4)
            T[:3, :3] = cv2.Rodrigues(r)[0]
            T[:3, 3] = np.ravel(t)
            poses[k] = T
        return IntrinsicsResult(K=K, distortion=np.ravel(dist)[:5].astype(float), width=width,
                                height=height, rms_px=float(rms), per_image_rms_px=errors,
                                rejected=rejected, T_cam_board=poses)


def board_pose(image: np.ndarray, board_cfg: BoardConfig, K: np.ndarray, distortion) -> np.ndarray | None:
    """T_cam_board from one view (solvePnP on the ChArUco corners), or None if the board is not seen."""
    det = detect_board(image, make_board(board_cfg))
    if det is None:
        return None
    ok, rvec, tvec = cv2.solvePnP(det.object_points, det.image_points, K, np.asarray(distortion, float))
    if not ok:
        return None
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.ravel()
    return T


HAND_EYE_METHODS = {
    "tsai": cv2.CALIB_HAND_EYE_TSAI,
    "park": cv2.CALIB_HAND_EYE_PARK,
    "horaud": cv2.CALIB_HAND_EYE_HORAUD,
    "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}


def _rotation_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


@dataclass
class HandEyeResult:
    T_flange_cam: np.ndarray  # the chosen method's answer
    method: str
    methods: dict[str, np.ndarray]  # every method's answer
    # How far each method is from the chosen one (degrees, millimetres): their disagreement.
    disagreement_deg: dict[str, float]
    disagreement_mm: dict[str, float]
    # Consistency of each answer with the data: the board must stay put in the robot base frame;
    # the spread of T_base_board over the views (RMS, degrees and millimetres).
    board_spread_deg: dict[str, float]
    board_spread_mm: dict[str, float]
    n_views: int
    failed: list[str] = field(default_factory=list)  # methods OpenCV could not solve with these views

    def to_dict(self) -> dict:
        return {"flange_to_camera": np.round(self.T_flange_cam, 9).tolist(), "method": self.method,
                "n_views": self.n_views, "failed_methods": list(self.failed),
                "methods": {m: {"flange_to_camera": np.round(T, 9).tolist(),
                                "disagreement_deg": self.disagreement_deg[m],
                                "disagreement_mm": self.disagreement_mm[m],
                                "board_spread_deg": self.board_spread_deg[m],
                                "board_spread_mm": self.board_spread_mm[m]}
                            for m, T in self.methods.items()},
                "date": datetime.datetime.now().isoformat(timespec="seconds")}


def solve_hand_eye(T_base_flange: list[np.ndarray], T_cam_board: list[np.ndarray],
                   methods: list[str] | None = None) -> HandEyeResult:
    """Flange-to-camera (eye in hand) from paired arm poses and board poses; every method is run,
    and the one under which the board stays most still in the base frame is chosen."""
    if len(T_base_flange) != len(T_cam_board):
        raise CalibrationError("hand-eye: need one board pose per arm pose")
    if len(T_base_flange) < 3:
        raise CalibrationError(f"hand-eye: need at least 3 views of the board, got {len(T_base_flange)}")
    R_g2b = [T[:3, :3] for T in T_base_flange]
    t_g2b = [T[:3, 3].reshape(3, 1) for T in T_base_flange]
    R_t2c = [T[:3, :3] for T in T_cam_board]
    t_t2c = [T[:3, 3].reshape(3, 1) for T in T_cam_board]
    answers: dict[str, np.ndarray] = {}
    spread_deg, spread_mm = {}, {}
    failed = []
    for name in methods or list(HAND_EYE_METHODS):
        try:
            R, t = cv2.calibrateHandEye(R_g2b, t_g2b, R_t2c, t_t2c, method=HAND_EYE_METHODS[name])
        except cv2.error:  # e.g. a degenerate rotation normalisation in one method: use the others
            failed.append(name)
            continue
        X = np.eye(4)
        X[:3, :3], X[:3, 3] = R, np.ravel(t)
        if not np.all(np.isfinite(X)):
            failed.append(name)
            continue
        answers[name] = X
        boards = [A @ X @ B for A, B in zip(T_base_flange, T_cam_board)]
        mean_t = np.mean([b[:3, 3] for b in boards], axis=0)
        spread_mm[name] = float(np.sqrt(np.mean([np.sum((b[:3, 3] - mean_t) ** 2) for b in boards])) * 1000)
        spread_deg[name] = float(np.sqrt(np.mean([_rotation_deg(boards[0][:3, :3].T @ b[:3, :3]) ** 2
                                                  for b in boards[1:]])))
    if not answers:
        raise CalibrationError("hand-eye: every method failed (are the arm poses varied enough?)")
    best = min(answers, key=lambda m: spread_mm[m] + 10.0 * spread_deg[m])
    X = answers[best]
    dis_deg = {m: _rotation_deg(X[:3, :3].T @ T[:3, :3]) for m, T in answers.items()}
    dis_mm = {m: float(np.linalg.norm(T[:3, 3] - X[:3, 3]) * 1000) for m, T in answers.items()}
    return HandEyeResult(T_flange_cam=X, method=best, methods=answers, disagreement_deg=dis_deg,
                         disagreement_mm=dis_mm, board_spread_deg=spread_deg, board_spread_mm=spread_mm,
                         n_views=len(T_base_flange), failed=failed)


# -- the rig calibration file --------------------------------------------------------------------

def load_calibration(path: str | Path) -> dict:
    return read_yaml_mapping(path, "calibration file", CalibrationError)


def save_calibration_section(path: str | Path, section: str, values: dict) -> None:
    """Write one section ("camera" or "hand_eye") of the calibration file, keeping the other."""
    path = Path(path)
    data = load_calibration(path) if path.exists() else {}
    data[section] = values
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def calibrated_intrinsics(data: dict, width: int, height: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(K, distortion) from a calibration file's camera section, checked against the frame size."""
    cam = data.get("camera")
    if not cam:
        return None
    if (cam.get("width"), cam.get("height")) != (width, height):
        raise CalibrationError(f"the calibration is for {cam.get('width')}x{cam.get('height')} frames, "
                               f"the camera gives {width}x{height}: recalibrate at this size")
    K = np.array([[cam["fx"], 0, cam["cx"]], [0, cam["fy"], cam["cy"]], [0, 0, 1.0]])
    return K, np.asarray(cam.get("distortion", [0] * 5), float)


def calibrated_hand_eye(data: dict) -> np.ndarray | None:
    he = data.get("hand_eye")
    if not he:
        return None
    T = np.asarray(he["flange_to_camera"], float)
    if T.shape != (4, 4):
        raise CalibrationError("calibration hand_eye.flange_to_camera must be a 4x4 matrix")
    return T


# -- hand-eye at the rig ---------------------------------------------------------------------------

def collect_hand_eye(arm, grab_image, joint_positions, board_cfg: BoardConfig, K: np.ndarray, distortion,
                     progress=None) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Move the arm through ``joint_positions``; at each, once settled, grab an image and measure the
    board.  Returns (T_base_flange, T_cam_board, indices of the poses where the board was seen).
    ``grab_image(settled_at)`` returns an RGB or grey image captured after ``settled_at``."""
    import time

    flanges, boards, used = [], [], []
    for i, q in enumerate(joint_positions):
        arm.move_to(q, wait=True)
        settled_at = time.time()
        q_now = arm.joint_positions()
        image = grab_image(settled_at)
        T_cam_board = board_pose(image, board_cfg, K, distortion)
        if T_cam_board is not None:
            flanges.append(arm.model.fkine_flange(q_now))
            boards.append(T_cam_board)
            used.append(i)
        if progress is not None:
            progress(i + 1, len(joint_positions))
    return flanges, boards, used


def simulated_board_grabber(arm, board_cfg: BoardConfig, T_world_board: np.ndarray, K: np.ndarray,
                            width: int, height: int, T_flange_cam_true: np.ndarray | None = None):
    """For the simulated rig: a camera that sees the board lying at ``T_world_board``, mounted with
    the true hand-eye ``T_flange_cam_true`` (default: the rig config's), rendered by warping."""
    def grab(_settled_at: float) -> np.ndarray:
        q = arm.joint_positions()
        T_flange = T_flange_cam_true if T_flange_cam_true is not None else arm.rig.T_flange_camera
        T_world_cam = arm.rig.T_world_base @ arm.model.fkine_flange(q) @ T_flange
        return render_board_view(board_cfg, K, np.linalg.inv(T_world_cam) @ T_world_board, width, height)
    return grab


def board_on_table_pose(board_cfg: BoardConfig, centre_xy=(0.0, 0.0), yaw_rad: float = 0.0,
                        table_z: float = 0.0) -> np.ndarray:
    """T_world_board for a board lying face up on the table, centred at ``centre_xy``.  The board's
    +z points into the board, so face up means board z = world -z."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, -1.0, -1.0])  # flip: z down
    half = np.array([board_cfg.squares_x * board_cfg.square_length / 2,
                     board_cfg.squares_y * board_cfg.square_length / 2, 0.0])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.array([centre_xy[0], centre_xy[1], table_z]) - R @ half
    return T
