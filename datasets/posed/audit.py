"""``ldsrig data audit-poses``: do the stored poses agree with the images?

Per scene, pycolmap finds SIFT features in every view and matches every pair (geometrically
verified), and matches are chained into tracks: one scene point seen in several views.  Each
view is then judged by the *other* views alone: for every track through view v, the point is
triangulated (pycolmap's robust multi-view triangulation, LO-RANSAC) from the stored poses and
cameras of the other views, and projected into v with v's stored pose and camera.  The distance
to v's own feature is v's reprojection error for that point.  Leaving v out matters: a
triangulation that included v's pose would bend towards it and hide its error.  One bad view can
still spoil its neighbours' scores (with close views, a pose error reads as a depth change that
the others then carry), so each view is scored a second way for every other view u, with u left
out of the triangulations too, and keeps its best score: a good view next to a bad one is judged
without it, a bad view stays bad whichever view is left out.  On the simulated capture of
tests/test_audit_poses.py true poses give 0.2-0.4 px and an injected 1 cm or 1 degree error
3-4 px in that view, with every other view staying under 0.5 px.

A view is flagged when its median error is above ``flag_px`` and above ``flag_ratio`` times the
scene's typical view (the median of the views' medians): a hand-eye error, a frame taken before
the arm settled or a wrong image/pose pairing moves every point of that view the same way, while
feature noise is a fraction of a pixel.  A view with fewer than ``min_points`` judged points is
reported as not audited, never as good or bad.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.geometry import invert_rigid
from datasets.posed.conventions import require_pycolmap
from datasets.posed.scenes import PosedScene, frame_name, read_posed_scene, save_png, select_scenes


@dataclass(frozen=True)
class AuditConfig:
    flag_px: float = 2.0            # a flagged view's median error is above this ...
    flag_ratio: float = 3.0         # ... and this many times the scene's median view error
    min_points: int = 8             # judged points a view needs to be audited at all
    min_other_views: int = 2        # views (besides the judged one) a point is triangulated from
    min_triangulation_angle_deg: float = 1.0
    triangulation_max_error_px: float = 2.0   # RANSAC inlier threshold among the other views
    max_features: int = 4096        # SIFT features per image
    seed: int = 0                   # RANSAC seed, so a re-run reports the same numbers


@dataclass
class ViewAudit:
    view_index: int
    points: int                      # judged points (tracks through this view)
    median_px: float                 # NaN when not audited
    mean_px: float
    flagged: bool = False

    @property
    def audited(self) -> bool:
        return not math.isnan(self.median_px)


@dataclass
class SceneAudit:
    scene_id: str
    views: list[ViewAudit] = field(default_factory=list)
    median_px: float = float("nan")  # over every judged point of the scene
    typical_view_px: float = float("nan")   # median of the audited views' medians

    @property
    def flagged(self) -> list[int]:
        return [v.view_index for v in self.views if v.flagged]


@dataclass
class PoseAuditReport:
    store: Path
    scenes: list[SceneAudit] = field(default_factory=list)

    @property
    def flagged(self) -> list[tuple[str, int]]:
        return [(s.scene_id, v) for s in self.scenes for v in s.flagged]

    def to_dict(self) -> dict:
        def clean(x: float):
            return None if math.isnan(x) else round(float(x), 4)
        return {"store": str(self.store), "flagged": [list(f) for f in self.flagged], "scenes": [
            {"scene_id": s.scene_id, "median_px": clean(s.median_px),
             "typical_view_px": clean(s.typical_view_px),
             "views": [{"view_index": v.view_index, "points": v.points, "median_px": clean(v.median_px),
                        "mean_px": clean(v.mean_px), "flagged": v.flagged} for v in s.views]}
            for s in self.scenes]}


# ------------------------------------------------------------------------------ features
def _pycolmap_camera(pycolmap, camera, camera_id: int = 1):
    model, params = camera.colmap_model()
    return pycolmap.Camera(model=model, width=camera.width, height=camera.height, params=params,
                           camera_id=camera_id)


def _features_and_matches(pycolmap, scene: PosedScene, workdir: Path, config: AuditConfig):
    """Keypoints per view and verified matches per view pair.  Keypoints are in COLMAP pixel
    coordinates, as are the projections of the pycolmap cameras they are compared with, so no
    pixel-centre shift is needed inside the audit."""
    images = workdir / "images"
    images.mkdir()
    names = [frame_name(v) for v in scene.view_index]
    for name, rgb in zip(names, scene.rgb):
        save_png(images / name, rgb)
    database = workdir / "database.db"
    reader = pycolmap.ImageReaderOptions()
    shared = all(c == scene.cameras[0] for c in scene.cameras)
    if shared:  # the stored camera, so verification's essential matrices use the right K
        model, params = scene.cameras[0].colmap_model()
        reader.camera_model = model
        reader.camera_params = ",".join(repr(p) for p in params)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 1      # the audit must not crowd out training runs
    extraction.sift.max_num_features = config.max_features
    pycolmap.extract_features(database, images, image_names=names,
                              camera_mode=pycolmap.CameraMode.SINGLE if shared else pycolmap.CameraMode.PER_IMAGE,
                              reader_options=reader, extraction_options=extraction,
                              device=pycolmap.Device.cpu)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = 1
    pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
    db = pycolmap.Database.open(database)
    try:
        view_of_id = {image.image_id: names.index(image.name) for image in db.read_all_images()}
        keypoints = [np.zeros((0, 2))] * len(names)
        for image_id, k in view_of_id.items():
            keypoints[k] = np.asarray(db.read_keypoints(image_id), dtype=np.float64)[:, :2]
        pair_ids, geometries = db.read_two_view_geometries()
        matches = {}
        for pair_id, geometry in zip(pair_ids, geometries):
            inliers = np.asarray(geometry.inlier_matches).reshape(-1, 2)
            if len(inliers) == 0:
                continue
            id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
            matches[(view_of_id[id1], view_of_id[id2])] = inliers
    finally:
        db.close()
    return keypoints, matches


def _tracks(keypoints: list[np.ndarray], matches: dict) -> list[dict[int, int]]:
    """Matches chained into tracks {view: keypoint index} (union-find over (view, keypoint)).
    A track holding two keypoints of one view is ambiguous and dropped."""
    offsets = np.cumsum([0] + [len(k) for k in keypoints])
    parent = np.arange(offsets[-1])

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (v1, v2), pairs in matches.items():
        for a, b in pairs:
            ra, rb = find(offsets[v1] + a), find(offsets[v2] + b)
            if ra != rb:
                parent[ra] = rb
    groups: dict[int, list[int]] = {}
    for node in range(offsets[-1]):
        groups.setdefault(find(node), []).append(node)
    tracks = []
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        views = np.searchsorted(offsets, nodes, side="right") - 1
        if len(set(views.tolist())) != len(views):
            continue
        tracks.append({int(v): int(n - offsets[v]) for v, n in zip(views, nodes)})
    return tracks


# ------------------------------------------------------------------------------ the audit
def _reprojection_error(pycolmap, keypoints, track, others, judged, keypoint, cams_from_world,
                        cameras, options, config) -> float | None:
    """Pixel distance in view ``judged`` between its feature and the point triangulated from
    ``others`` (None where those views do not agree on a point)."""
    result = pycolmap.estimate_triangulation(
        np.array([keypoints[v][track[v]] for v in others]),
        [cams_from_world[v] for v in others], [cameras[v] for v in others], options)
    if result is None or int(np.sum(result["inliers"])) < config.min_other_views:
        return None
    in_camera = cams_from_world[judged] * result["xyz"]
    if in_camera[2] <= 0:
        return float("inf")  # behind the judged camera: as wrong as it gets
    projected = cameras[judged].img_from_cam(in_camera)
    return float(np.linalg.norm(projected - keypoints[judged][keypoint]))


def audit_scene(scene: PosedScene, config: AuditConfig = AuditConfig()) -> SceneAudit:
    pycolmap = require_pycolmap()
    pycolmap.set_random_seed(config.seed)
    # COLMAP logs every image it reads and every block it matches; the report says what matters
    pycolmap.logging.minloglevel = max(int(pycolmap.logging.minloglevel), 2)
    with tempfile.TemporaryDirectory(prefix="ldsrig-audit-") as tmp:
        keypoints, matches = _features_and_matches(pycolmap, scene, Path(tmp), config)
    tracks = _tracks(keypoints, matches)
    cameras = [_pycolmap_camera(pycolmap, c) for c in scene.cameras]
    cams_from_world = [pycolmap.Rigid3d(invert_rigid(p)[:3, :]) for p in scene.camera_pose_world]
    options = pycolmap.EstimateTriangulationOptions()
    options.min_tri_angle = math.radians(config.min_triangulation_angle_deg)
    options.residual_type = pycolmap.TriangulationResidualType.REPROJECTION_ERROR
    options.ransac.max_error = config.triangulation_max_error_px
    # errors[v][u]: v's errors with points triangulated from the other views except u (u = -1:
    # except none).  v's score is its best u: a good view next to one bad view is judged
    # without it, while a bad view stays bad whichever other view is left out.
    errors: list[dict[int, list[float]]] = [{u: [] for u in range(-1, scene.num_views) if u != v}
                                            for v in range(scene.num_views)]
    for track in tracks:
        if len(track) < config.min_other_views + 1:
            continue
        for judged, keypoint in track.items():
            by_left_out = {}
            for left_out in [-1, *(v for v in track if v != judged)]:
                others = [v for v in track if v not in (judged, left_out)]
                if len(others) >= config.min_other_views:
                    by_left_out[left_out] = _reprojection_error(
                        pycolmap, keypoints, track, others, judged, keypoint, cams_from_world,
                        cameras, options, config)
            for left_out, view_errors in errors[judged].items():
                # a track without the left-out view is judged as it is
                error = by_left_out.get(left_out, by_left_out.get(-1))
                if error is not None:
                    view_errors.append(error)
    audit = SceneAudit(scene_id=scene.scene_id)
    every = []
    for view, by_left_out in zip(scene.view_index, errors):
        candidates = [np.asarray(e) for e in by_left_out.values() if len(e) >= config.min_points]
        if not candidates:
            audit.views.append(ViewAudit(int(view), len(by_left_out[-1]), float("nan"), float("nan")))
            continue
        best = min(candidates, key=np.median)
        every.append(best)
        finite = best[np.isfinite(best)]
        audit.views.append(ViewAudit(int(view), len(best), float(np.median(best)),
                                     float(np.mean(finite)) if len(finite) else float("inf")))
    audit.median_px = float(np.median(np.concatenate(every))) if every else float("nan")
    medians = [v.median_px for v in audit.views if v.audited]
    if medians:
        audit.typical_view_px = float(np.median(medians))
        for v in audit.views:
            v.flagged = bool(v.audited and v.median_px > config.flag_px
                             and v.median_px > config.flag_ratio * audit.typical_view_px)
    return audit


def audit_poses(store_path: str | Path, config: AuditConfig = AuditConfig(),
                scene_ids: tuple[str, ...] = (), progress: bool = False) -> PoseAuditReport:
    from datasets.store import SceneStore

    require_pycolmap()
    report = PoseAuditReport(store=Path(store_path))
    with SceneStore.open(store_path) as store:
        chosen = select_scenes(store, list(scene_ids))
        for scene_id in chosen:  # every scene's poses first: a store without poses says so at once
            read_posed_scene(store, scene_id, with_rgb=False)
        for scene_id in chosen:
            report.scenes.append(audit_scene(read_posed_scene(store, scene_id), config))
    return report

