"""The helpers every area shares: atomic files, look-at poses, pinhole intrinsics."""

from __future__ import annotations

import numpy as np
import pytest

from common.geometry import intrinsics_from_fov, look_at, pinhole_intrinsics
from common.io import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_files_and_keeps_the_old_one_on_error(tmp_path):
    target = tmp_path / "sub" / "gap.json"
    atomic_write_text(target, "one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name == "gap.json.tmp"          # the whole name: gap.json, not gap.tmp
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "one" and not (target.parent / "gap.json.tmp").exists()
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["gap.json"]


def test_look_at_points_z_at_the_target_and_is_defined_straight_down():
    for eye, target in [((1.0, 2.0, 3.0), (0.0, 0.0, 0.0)), ((0.0, 0.0, 2.0), (0.0, 0.0, 0.0))]:
        T = look_at(eye, target)
        R = T[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
        z = np.subtract(target, eye) / np.linalg.norm(np.subtract(target, eye))
        assert np.allclose(T[:3, 2], z) and np.allclose(T[:3, 3], eye)
    side = look_at((2.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    assert side[2, 1] < 0                                  # image +y (down) points to world -z
    with pytest.raises(ValueError, match="coincide"):
        look_at((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))


def test_intrinsics_from_fov_and_the_centred_principal_point():
    K = intrinsics_from_fov(64, 48, 90.0)
    assert np.isclose(K[0, 0], 32.0) and np.isclose(K[1, 1], 32.0)
    assert np.allclose(K[:2, 2], [31.5, 23.5])
    assert np.array_equal(pinhole_intrinsics(10.0, 12.0, 4, 2), [[10, 0, 1.5], [0, 12, 0.5], [0, 0, 1]])
