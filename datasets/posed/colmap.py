"""COLMAP models, written and read through pycolmap: one folder per scene.

    SCENE/images/frame_00000.png        RGB, lossless; the model's image names
    SCENE/sparse/0/cameras.bin ...      the model (pycolmap's binary writer: cameras, images,
                                        points3D, and COLMAP 4's rigs and frames)

Cameras use the OPENCV model (fx fy cx cy k1 k2 p1 p2), or FULL_OPENCV where the store has a
non-zero k3 (its rational k4 k5 k6 are zero, so it is the same camera); views with identical
intrinsics share one camera.  Image poses are COLMAP's world-to-camera ``cam_from_world``
(quaternion and translation), in the store's world frame and metres.  Where the scene metadata
records object positions (synthetic and CLE-MV scenes), each object's centre is a 3-D point whose
track holds its projection in every view that sees it in front of the camera and inside the
image; other stores get no points.  Pixel-centre shift: datasets/posed/conventions.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.geometry import invert_rigid
from datasets.posed.conventions import PosedFormatError, StoreCamera, require_pycolmap
from datasets.posed.export import ExportConfig, ExportReport, export_scenes
from datasets.posed.scenes import PosedFrame, PosedScene, frame_name, save_png

MODEL_DIR = Path("sparse") / "0"
# Display colour for an object's point: its linear reflectance through a plain 2.2 gamma.
_GAMMA = 1.0 / 2.2


def _object_colours(scene: PosedScene) -> list[np.ndarray]:
    colours = []
    for obj in scene.metadata.get("objects", []):
        if isinstance(obj, dict) and "position_world" in obj:
            rgb = np.asarray(obj.get("color_rgb", (0.5, 0.5, 0.5)), dtype=np.float64)
            colours.append(np.clip(255.0 * np.clip(rgb, 0, 1) ** _GAMMA + 0.5, 0, 255).astype(np.uint8))
    return colours


def build_reconstruction(scene: PosedScene):
    """The scene as a pycolmap Reconstruction (cameras, posed images, object-centre points)."""
    pycolmap = require_pycolmap()
    rec = pycolmap.Reconstruction()
    camera_ids: dict[StoreCamera, int] = {}
    for camera in scene.cameras:
        if camera not in camera_ids:
            model, params = camera.colmap_model()
            camera_ids[camera] = len(camera_ids) + 1
            rec.add_camera_with_trivial_rig(pycolmap.Camera(
                model=model, width=camera.width, height=camera.height, params=params,
                camera_id=camera_ids[camera]))
    centres = scene.object_centres()
    # tracks[o] = [(image_id, point2D_idx)] of object o's centre
    tracks: list[list[tuple[int, int]]] = [[] for _ in range(len(centres))]
    for k, view in enumerate(scene.view_index):
        image_id = k + 1
        camera_id = camera_ids[scene.cameras[k]]
        cam_from_world = pycolmap.Rigid3d(invert_rigid(scene.camera_pose_world[k])[:3, :])
        keypoints = []
        if len(centres):
            in_camera = centres @ cam_from_world.rotation.matrix().T + cam_from_world.translation
            pixels = rec.camera(camera_id).img_from_cam(in_camera, check_cheirality=False)
            camera = scene.cameras[k]
            for o, (xy, depth) in enumerate(zip(pixels, in_camera[:, 2])):
                if depth > 0 and 0 <= xy[0] <= camera.width and 0 <= xy[1] <= camera.height:
                    tracks[o].append((image_id, len(keypoints)))
                    keypoints.append(xy)
        image = pycolmap.Image(name=frame_name(view),
                               keypoints=np.asarray(keypoints, dtype=np.float64).reshape(-1, 2),
                               camera_id=camera_id, image_id=image_id)
        rec.add_image_with_trivial_frame(image, cam_from_world)
    colours = _object_colours(scene)
    points = 0
    for centre, track_elements, colour in zip(centres, tracks, colours):
        if not track_elements:
            continue
        track = pycolmap.Track()
        for image_id, point2d_idx in track_elements:
            track.add_element(image_id, point2d_idx)
        rec.add_point3D(centre, track, colour)
        points += 1
    return rec, points


def write_colmap_scene(scene: PosedScene, folder: Path, config: ExportConfig) -> int:
    rec, points = build_reconstruction(scene)
    (folder / "images").mkdir()
    for k, view in enumerate(scene.view_index):
        save_png(folder / "images" / frame_name(view), scene.rgb[k])
    (folder / MODEL_DIR).mkdir(parents=True)
    rec.write(str(folder / MODEL_DIR))
    return points


def export_colmap(store: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> ExportReport:
    require_pycolmap()  # before any scene is read: the missing extra is one line
    return export_scenes(store, out, config, "colmap", write_colmap_scene)


# ------------------------------------------------------------------------------- reading
def _is_model(path: Path) -> bool:
    return (path / "cameras.bin").is_file() or (path / "cameras.txt").is_file()


def _project_of(src: Path) -> tuple[Path, Path] | None:
    """(model folder, images folder) of a COLMAP project folder, or of a model folder inside
    one (PROJECT/sparse/0 or PROJECT/sparse)."""
    for model in (src / MODEL_DIR, src / "sparse", src):
        if model.is_dir() and _is_model(model):
            if model == src:
                project = src.parent.parent if src.parent.name == "sparse" else (
                    src.parent if src.name == "sparse" else src)
            else:
                project = src
            return model, project / "images"
    return None


def find_colmap_models(src: Path) -> list[tuple[str, Path, Path]]:
    """(scene id, model folder, images folder) for SRC: a COLMAP project (images/ and sparse/0/),
    a model folder itself, or a folder of such projects, one scene each."""
    src = Path(src)
    if not src.is_dir():
        raise PosedFormatError(f"{src}: no such folder (expected a COLMAP project or model folder)")
    found = _project_of(src)
    if found:
        model, images = found
        project = images.parent
        return [(project.resolve().name, model, images)]
    projects = []
    for sub in sorted(src.iterdir()):
        if sub.is_dir() and not sub.name.startswith("."):
            found = _project_of(sub)
            if found:
                projects.append((sub.name, *found))
    if not projects:
        raise PosedFormatError(f"{src}: no COLMAP model (cameras.bin or cameras.txt in SRC, "
                               "SRC/sparse/0, SRC/sparse or their subfolders)")
    return projects


def read_colmap_model(model: Path, images: Path):
    """The registered images of one model as importer PosedFrames, sorted by image name."""
    pycolmap = require_pycolmap()
    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError on bad files
        raise PosedFormatError(f"{model}: cannot read the COLMAP model (damaged, truncated or "
                               f"incomplete?): {str(exc).splitlines()[0]}") from None
    cameras = {}
    for camera_id, camera in rec.cameras.items():
        cameras[camera_id] = StoreCamera.from_colmap(
            camera.model.name, camera.width, camera.height, camera.params,
            f"{model}: camera {camera_id}")
    frames = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            continue  # not registered: COLMAP did not solve its pose
        cam_from_world = np.vstack([image.cam_from_world().matrix(), [0.0, 0.0, 0.0, 1.0]])
        frames.append(PosedFrame(name=image.name, path=images / image.name,
                                 camera_pose_world=invert_rigid(cam_from_world),
                                 camera=cameras[image.camera_id]))
    if not frames:
        raise PosedFormatError(f"{model}: the model has no registered (posed) images")
    return frames
