"""Bad input to export, import and the pose audit: one clear line and a non-zero exit, through the
real command line (stores without poses, unsupported cameras, missing images, no pycolmap)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets.store import SceneStore
from tests.posed_stores import render_cubes
from tests.test_errors import _one_line_error

ROOT = Path(__file__).resolve().parents[1]


def _subprocess(*args: str, cwd: Path, without_pycolmap: bool = False) -> subprocess.CompletedProcess:
    if without_pycolmap:  # as if the colmap extra were not installed: `import pycolmap` fails
        code = ("import sys; sys.modules['pycolmap'] = None; sys.path.insert(0, sys.argv[1]); "
                "sys.argv = ['ldsrig', *sys.argv[2:]]; import cli; cli.main()")
        command = [sys.executable, "-c", code, str(ROOT), *args]
    else:
        command = [sys.executable, str(ROOT / "cli.py"), *args]
    return subprocess.run(command, cwd=cwd, text=True, capture_output=True, timeout=120)


@pytest.fixture
def ldsrig(capsys, monkeypatch):
    """The real command line (cli.run: parsing, commands, the one-line error handler) in this
    process: a subprocess per call costs seconds of start-up on a busy machine."""
    import cli

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["ldsrig", *args])
        capsys.readouterr()
        code = cli.run()
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("posed_errors")
    render_cubes(root / "cubes.zarr", scenes=1, views=4)
    # what the multi-object importer writes: single views, identity pose, said to be unknown
    with SceneStore.create(root / "unposed.zarr", 8, 8,
                           attrs={"import_conventions": {"camera_pose_world": "identity (single view, pose unknown)"}}) as st:
        st.add_scene("a")
        st.append_images("a", np.zeros((1, 8, 8, 3), np.uint8), np.eye(4)[None],
                         np.array([[[8.0, 0, 3.5], [0, 8, 3.5], [0, 0, 1]]]))
        st.set_scene_state("a", "complete")
    # a store that says nothing, but whose views all share one pose
    with SceneStore.create(root / "samepose.zarr", 8, 8) as st:
        st.add_scene("b")
        st.append_images("b", np.zeros((3, 8, 8, 3), np.uint8), np.repeat(np.eye(4)[None], 3, 0),
                         np.repeat(np.array([[[8.0, 0, 3.5], [0, 8, 3.5], [0, 0, 1]]]), 3, 0))
        st.set_scene_state("b", "complete")
    return root


@pytest.mark.parametrize("command", [["data", "export", "nerfstudio"], ["data", "export", "colmap"],
                                     ["data", "audit-poses"]])
def test_a_store_without_poses_is_one_line(root, command, ldsrig):
    out = [] if command[-1] == "audit-poses" else ["out"]
    _one_line_error(ldsrig(*command, "unposed.zarr", *out, cwd=root), "no camera poses", "unknown")
    _one_line_error(ldsrig(*command, "samepose.zarr", *out, cwd=root), "same camera pose")
    _one_line_error(ldsrig(*command, "missing.zarr", *out, cwd=root), "no store at missing.zarr")
    _one_line_error(ldsrig(*command, "cubes.zarr", *out, "--scene", "nope", cwd=root), "no scene 'nope'")
    assert not (root / "out").exists()


def test_colmap_model_with_an_unsupported_camera_model_is_one_line(root, tmp_path, ldsrig):
    import pycolmap

    project = tmp_path / "fisheye"
    (project / "images").mkdir(parents=True)
    (project / "sparse" / "0").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((36, 48, 3), np.uint8)).save(project / "images" / "a.png")
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="OPENCV_FISHEYE", width=48, height=36,
                                                    params=[40, 40, 24, 18, 0.1, 0, 0, 0], camera_id=1))
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.png", camera_id=1, image_id=1),
                                     pycolmap.Rigid3d())
    rec.write(str(project / "sparse" / "0"))
    _one_line_error(ldsrig("data", "import", "colmap", str(project), "x.zarr", cwd=tmp_path),
                    "unsupported COLMAP camera model OPENCV_FISHEYE", "OPENCV")
    assert not (tmp_path / "x.zarr").exists()


def test_nerfstudio_with_an_unsupported_camera_or_bad_file_is_one_line(root, tmp_path, ldsrig):
    folder = tmp_path / "ns"
    folder.mkdir()
    frame = {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}
    (folder / "transforms.json").write_text(json.dumps(
        {"camera_model": "EQUIRECTANGULAR", "fl_x": 10, "cx": 4, "cy": 4, "w": 8, "h": 8, "frames": [frame]}))
    _one_line_error(ldsrig("data", "import", "nerfstudio", "ns", "x.zarr", cwd=tmp_path),
                    "unsupported nerfstudio camera_model 'EQUIRECTANGULAR'")
    (folder / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": [frame]}))
    _one_line_error(ldsrig("data", "import", "nerfstudio", "ns", "x.zarr", cwd=tmp_path),
                    "lacks fl_x", "camera_angle_x")
    (folder / "transforms.json").write_text("{not json")
    _one_line_error(ldsrig("data", "import", "nerfstudio", "ns", "x.zarr", cwd=tmp_path), "not valid JSON")
    _one_line_error(ldsrig("data", "import", "nerfstudio", "nowhere", "x.zarr", cwd=tmp_path),
                    "no transforms.json")
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("format", ["colmap", "nerfstudio"])
def test_missing_images_are_one_line_and_write_nothing(root, format, tmp_path, ldsrig):
    exported = ldsrig("data", "export", format, str(root / "cubes.zarr"), "out", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "out" / "cubes-000000" / "images" / "frame_00002.png").unlink()
    _one_line_error(ldsrig("data", "import", format, "out", "back.zarr", cwd=tmp_path),
                    "1 of 4 image files are missing", "frame_00002.png")
    assert not (tmp_path / "back.zarr").exists()


@pytest.mark.parametrize("command", [["data", "export", "colmap", "cubes.zarr", "out"],
                                     ["data", "import", "colmap", "out", "x.zarr"],
                                     ["data", "audit-poses", "cubes.zarr"]])
def test_colmap_commands_without_pycolmap_say_how_to_install_it(root, command):
    _one_line_error(_subprocess(*command, cwd=root, without_pycolmap=True),
                    "needs pycolmap", "pip install 'ldsrig[colmap]'")


def test_nerfstudio_export_needs_no_pycolmap(root, tmp_path):
    result = _subprocess("data", "export", "nerfstudio", str(root / "cubes.zarr"), str(tmp_path / "ns"),
                     cwd=tmp_path, without_pycolmap=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ns" / "cubes-000000" / "transforms.json").is_file()
