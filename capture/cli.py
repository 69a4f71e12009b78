"""`ldsrig capture ...` (cameras, scenes, sessions, contact sheets) and `ldsrig calib ...` (board,
intrinsics, hand-eye).  Everything here is argument handling; the work is in capture/*.py."""

from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from capture.calibration import BoardConfig, CalibrationError
from common.config import load_config, to_dict
from viz.cli import RRD_HELP, VIEW_HELP, live_view

capture_app = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="Capture scenes at the rig (or the simulated rig).")
calib_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Camera intrinsics and hand-eye calibration.")

CONFIG_HELP = "capture config YAML (see docs/capture.md)"
SET_HELP = "override a capture config value, e.g. camera.width=320 or n_views=20 (repeatable)"
RIG_SET_HELP = "override a rig config value, e.g. views.radius=0.45 (repeatable)"


def _capture_config(config: Optional[Path], overrides: list[str], sim: bool):
    from capture.session import CaptureConfig

    cfg = load_config(CaptureConfig, config, overrides)
    if sim:
        import dataclasses

        cfg = dataclasses.replace(cfg, arm="sim", camera=dataclasses.replace(cfg.camera, backend="sim"))
    return cfg


class _Bar:
    """A rich progress bar with ETA for one scene's views."""

    def __init__(self, label: str):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                  transient=False)
        self._progress.start()
        self._task = self._progress.add_task(label, total=None)

    def update(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def close(self) -> None:
        self._progress.stop()


def _print_summary(summary) -> None:
    typer.echo(summary.line())
    t = summary.timing()
    if t:
        typer.echo("  per view: " + ", ".join(f"{k.replace('_per_view', '')} {v * 1000:.0f} ms" for k, v in t.items()))


@capture_app.command("cameras")
def cameras_command() -> None:
    """List attached cameras (OpenCV /dev/video*, RealSense by serial, and the simulated one)."""
    from capture.cameras import find_cameras

    found = find_cameras()
    for cam in found:
        extra = ", ".join(f"{k}={v}" for k, v in cam.items() if k not in ("backend", "source") and v != "")
        typer.echo(f"{cam['backend']:10s} source={cam['source']!r:24s} {extra}")


@capture_app.command("scene")
def scene_command(
    store: Path = typer.Option(..., "--store", help="scene store to write (created if missing)"),
    scene: Optional[str] = typer.Option(None, "--scene", help="scene id (default: the next scene_NNNN)"),
    notes: str = typer.Option("", "--notes", help="operator notes kept with the scene"),
    resume: bool = typer.Option(False, "--resume", help="finish an interrupted (open) scene"),
    sim: bool = typer.Option(False, "--sim", help="the simulated rig: simulated arm, camera and cubes"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    rig_set: list[str] = typer.Option([], "--rig-set", help=RIG_SET_HELP),
    sheet: Optional[Path] = typer.Option(None, "--contact-sheet", help="write a PNG of the scene's views"),
    view: bool = typer.Option(False, "--view", help=VIEW_HELP),
    rrd: Optional[Path] = typer.Option(None, "--rrd", help=RRD_HELP),
) -> None:
    """Capture one scene: for each planned view move, settle, shoot, check, and commit to the store."""
    from capture.session import CaptureRig, capture_scene, contact_sheet, open_scenes, open_store_for_capture, next_scene_id

    cfg = _capture_config(config, set_, sim)
    rig = CaptureRig(cfg, rig_set)
    observer = live_view(view, rrd, store, f"capture {store.name}")
    with open_store_for_capture(store, rig.cfg.camera, rig.sim) as st:
        if scene is None:
            pending = open_scenes(st) if resume else []
            scene = pending[0] if pending else next_scene_id(st)
        with rig:
            bar = _Bar(scene)
            try:
                summary = capture_scene(st, scene, rig, notes=notes, resume=resume, progress=bar.update,
                                        log=typer.echo, observer=observer)
            finally:
                bar.close()
                if observer is not None:
                    observer.close()
        _print_summary(summary)
        if sheet is not None:
            typer.echo(f"contact sheet: {contact_sheet(st, scene, sheet)}")


@capture_app.command("session")
def session_command(
    store: Path = typer.Option(..., "--store", help="scene store to write (created if missing)"),
    scenes: int = typer.Option(5, "--scenes", min=1, help="number of scenes"),
    resume: bool = typer.Option(False, "--resume", help="finish open scenes first"),
    sim: bool = typer.Option(False, "--sim", help="the simulated rig: simulated arm, camera and cubes"),
    no_prompt: bool = typer.Option(False, "--no-prompt", help="never ask the operator (sim, scripts)"),
    prefix: str = typer.Option("scene", "--prefix", help="scene ids are PREFIX_NNNN"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    rig_set: list[str] = typer.Option([], "--rig-set", help=RIG_SET_HELP),
    sheets: Optional[Path] = typer.Option(None, "--contact-sheets", help="folder for one PNG per scene"),
    view: bool = typer.Option(False, "--view", help=VIEW_HELP),
    rrd: Optional[Path] = typer.Option(None, "--rrd", help=RRD_HELP),
) -> None:
    """Capture several scenes in a row, prompting the operator between scenes (reads stdin)."""
    from capture.session import CaptureRig, contact_sheet, open_store_for_capture, run_session

    cfg = _capture_config(config, set_, sim)
    rig = CaptureRig(cfg, rig_set)

    def prompt(text: str) -> str:
        typer.echo(text)
        line = sys.stdin.readline()
        if line == "":
            raise EOFError
        return line.rstrip("\n")

    observer = live_view(view, rrd, store, f"capture session {store.name}")
    with open_store_for_capture(store, rig.cfg.camera, rig.sim) as st, rig:
        try:
            result = run_session(st, rig, scenes, prompt=None if no_prompt else prompt, echo=typer.echo,
                                 resume=resume, prefix=prefix, progress_factory=_Bar, observer=observer)
        finally:
            if observer is not None:
                observer.close()
        views = sum(len(s.views) for s in result.scenes)
        typer.echo(f"session: {len(result.scenes)} scenes captured ({views} views), {result.skipped} skipped, "
                   f"{len(result.redone)} redone{', quit early' if result.quit_early else ''}")
        if sheets is not None:
            for s in result.scenes:
                contact_sheet(st, s.scene_id, Path(sheets) / f"{s.scene_id}.png")
            typer.echo(f"contact sheets in {sheets}")


@capture_app.command("sheet")
def sheet_command(
    store: Path = typer.Option(..., "--store"),
    scene: str = typer.Option(..., "--scene"),
    out: Path = typer.Option(..., "--out", help="PNG to write"),
    columns: int = typer.Option(6, "--columns"),
    scale: float = typer.Option(1.0, "--scale"),
) -> None:
    """A contact sheet (PNG grid) of one scene's views."""
    from capture.session import contact_sheet
    from datasets.store import SceneStore

    with SceneStore.open(store) as st:
        typer.echo(str(contact_sheet(st, scene, out, columns=columns, scale=scale)))


# -- calibration -----------------------------------------------------------------------------------

def _board(overrides: list[str], board_yaml: Optional[Path]) -> BoardConfig:
    return load_config(BoardConfig, board_yaml, overrides)


BOARD_SET_HELP = "override a board value, e.g. squares_x=9 or square_length=0.03 (repeatable)"


@calib_app.command("board")
def board_command(
    out: Path = typer.Option(Path("charuco_board.png"), "--out", help="PNG to write"),
    pdf: Optional[Path] = typer.Option(None, "--pdf", help="PDF to write (default: next to the PNG)"),
    dpi: int = typer.Option(300, "--dpi"),
    board_yaml: Optional[Path] = typer.Option(None, "--board", help="board config YAML"),
    board_set: list[str] = typer.Option([], "--board-set", help=BOARD_SET_HELP),
) -> None:
    """Write a printable ChArUco board (PNG and PDF at true scale: print at 100%, then measure)."""
    from capture.calibration import write_board

    cfg = _board(board_set, board_yaml)
    info = write_board(cfg, out, pdf or out.with_suffix(".pdf"), dpi=dpi)
    typer.echo(f"board {cfg.squares_x}x{cfg.squares_y} squares of {cfg.square_length * 1000:g} mm "
               f"({cfg.dictionary}): {info['png']}, {info['pdf']} ({info['width_mm']:.0f} x "
               f"{info['height_mm']:.0f} mm at {dpi} dpi)")


def _load_images(pattern: str) -> tuple[list[str], list[np.ndarray]]:
    import cv2

    path = Path(pattern)
    files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")) \
        if path.is_dir() else sorted(glob.glob(pattern))
    if not files:
        raise CalibrationError(f"no images match {pattern}")
    images = []
    for f in files:
        img = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise CalibrationError(f"cannot read image {f}")
        images.append(img)
    return files, images


@calib_app.command("intrinsics")
def intrinsics_command(
    images: Optional[str] = typer.Option(None, "--images", help="folder or glob of board images"),
    from_camera: int = typer.Option(0, "--from-camera", help="grab this many frames from the camera instead"),
    interval: float = typer.Option(1.5, "--interval", help="seconds between grabbed frames (move the board)"),
    save: Path = typer.Option(Path("calibration.yaml"), "--save", help="rig calibration file to update"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    board_yaml: Optional[Path] = typer.Option(None, "--board", help="board config YAML"),
    board_set: list[str] = typer.Option([], "--board-set", help=BOARD_SET_HELP),
    max_error: float = typer.Option(1.0, "--max-error", help="per-image RMS (px) above which outliers go"),
) -> None:
    """Calibrate the camera from views of the ChArUco board; per-image errors, outliers rejected."""
    import time

    from capture.calibration import calibrate_intrinsics, save_calibration_section

    board = _board(board_set, board_yaml)
    if images:
        names, frames = _load_images(images)
    elif from_camera > 0:
        from capture.cameras import open_camera

        cfg = _capture_config(config, set_, sim=False)
        if cfg.camera.backend == "sim":
            raise CalibrationError("the simulated camera renders cubes, not a board: use --images, or "
                                   "`ldsrig calib hand-eye --sim` for the simulated rig")
        frames, names = [], []
        with open_camera(cfg.camera) as cam:
            for i in range(from_camera):
                typer.echo(f"frame {i + 1}/{from_camera}: hold the board still")
                frames.append(cam.read_after(time.time()).image)
                names.append(f"camera frame {i}")
                time.sleep(interval)
    else:
        raise CalibrationError("give --images DIR_OR_GLOB or --from-camera N")
    result = calibrate_intrinsics(frames, board, max_image_rms_px=max_error)
    for i, name in enumerate(names):
        if i in result.per_image_rms_px:
            typer.echo(f"  {name}: {result.per_image_rms_px[i]:.3f} px")
        else:
            typer.echo(f"  {name}: rejected ({result.rejected[i]})")
    K = result.K
    typer.echo(f"fx {K[0, 0]:.2f} fy {K[1, 1]:.2f} cx {K[0, 2]:.2f} cy {K[1, 2]:.2f} "
               f"dist {np.round(result.distortion, 5).tolist()}; RMS {result.rms_px:.3f} px over "
               f"{len(result.per_image_rms_px)} images, {len(result.rejected)} rejected")
    save_calibration_section(save, "camera", {**result.to_dict(), "board": to_dict(board)})
    typer.echo(f"saved to {save}")


@calib_app.command("hand-eye")
def hand_eye_command(
    save: Path = typer.Option(Path("calibration.yaml"), "--save", help="rig calibration file to update"),
    sim: bool = typer.Option(False, "--sim", help="simulated rig: a board on the table, a known answer"),
    poses: Optional[Path] = typer.Option(None, "--poses", help="recorded poses: JSON list of "
                                         "{joint_positions: [...], image: path}; the arm is not moved"),
    views: int = typer.Option(12, "--views", help="arm poses to visit (planned look-at views)"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    rig_set: list[str] = typer.Option([], "--rig-set", help=RIG_SET_HELP),
    board_yaml: Optional[Path] = typer.Option(None, "--board", help="board config YAML"),
    board_set: list[str] = typer.Option([], "--board-set", help=BOARD_SET_HELP),
    sim_error: str = typer.Option("0.01,-0.005,0.008,0.03,-0.02,0.05", "--sim-true-offset",
                                  help="simulated rig: the true hand-eye is the configured one moved by "
                                       "x,y,z (m), roll,pitch,yaw (rad)"),
) -> None:
    """Solve flange-to-camera with cv2.calibrateHandEye (every method; their disagreement shown)."""
    import json

    from capture.calibration import (board_on_table_pose, board_pose, collect_hand_eye,
                                     save_calibration_section, simulated_board_grabber, solve_hand_eye)
    from capture.session import CaptureRig
    from robot.config import pose_matrix
    from robot.model import arm_model_for

    board = _board(board_set, board_yaml)
    cfg = _capture_config(config, set_, sim)
    rig = CaptureRig(cfg, rig_set)
    truth = None
    if poses is not None:
        import cv2 as _cv2

        K = rig.cfg.camera.intrinsics_matrix()
        if K is None:
            raise CalibrationError("hand-eye needs the intrinsics: run `ldsrig calib intrinsics` and pass "
                                   "--set calibration=calibration.yaml")
        dist = np.asarray(rig.cfg.camera.distortion, float)
        model = arm_model_for(rig.rig)
        try:
            records = json.loads(Path(poses).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"cannot read recorded poses {poses}: {exc}") from None
        flanges, boards = [], []
        for rec in records:
            image = _cv2.imread(str(Path(poses).parent / rec["image"]), _cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise CalibrationError(f"cannot read image {rec['image']}")
            T = board_pose(image, board, K, dist)
            if T is not None:
                flanges.append(model.fkine_flange(np.asarray(rec["joint_positions"], float)))
                boards.append(T)
    else:
        with rig:
            from robot.planning import plan_viewpoints

            plan = plan_viewpoints(rig.rig, views, seed=cfg.plan_seed) if views else rig.plan()
            if sim:
                K = rig.camera.intrinsics()
                dist = np.zeros(5)
                truth = rig.rig.T_flange_camera @ pose_matrix([float(v) for v in sim_error.split(",")], "offset")
                grab = simulated_board_grabber(rig.arm, board, board_on_table_pose(board, rig.rig.table.centre,
                                               table_z=rig.rig.table.height), K, cfg.camera.width,
                                               cfg.camera.height, T_flange_cam_true=truth)
            else:
                K, dist = rig.camera.intrinsics(), rig.camera.distortion()
                grab = lambda t: rig.camera.read_after(t).image  # noqa: E731
            bar = _Bar("hand-eye")
            try:
                flanges, boards, used = collect_hand_eye(rig.arm, grab, plan.ordered_joint_positions, board, K,
                                                         dist, progress=bar.update)
            finally:
                bar.close()
            if cfg.return_home:
                rig.arm.move_to(plan.home, wait=True)
    typer.echo(f"board seen in {len(boards)} views")
    result = solve_hand_eye(flanges, boards)
    for m in result.methods:
        mark = "*" if m == result.method else " "
        typer.echo(f" {mark}{m:11s} differs from the chosen by {result.disagreement_deg[m]:.3f} deg "
                   f"{result.disagreement_mm[m]:.2f} mm; board spread {result.board_spread_deg[m]:.3f} deg "
                   f"{result.board_spread_mm[m]:.2f} mm")
    if result.failed:
        typer.echo(f"  failed with these views: {', '.join(result.failed)}")
    T = result.T_flange_cam
    typer.echo(f"flange_to_camera ({result.method}): t = {np.round(T[:3, 3], 4).tolist()} m")
    out = result.to_dict()
    if truth is not None:
        err_mm = float(np.linalg.norm(T[:3, 3] - truth[:3, 3]) * 1000)
        err_deg = float(np.degrees(np.arccos(np.clip((np.trace(T[:3, :3].T @ truth[:3, :3]) - 1) / 2, -1, 1))))
        typer.echo(f"simulated rig: error against the true hand-eye {err_deg:.3f} deg, {err_mm:.2f} mm")
        out["simulated_truth"] = {"flange_to_camera": truth.tolist(), "error_deg": err_deg, "error_mm": err_mm}
    save_calibration_section(save, "hand_eye", out)
    typer.echo(f"saved to {save}")
