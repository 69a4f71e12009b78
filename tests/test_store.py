import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from datasets.store import SCHEMA_VERSION, SceneStore, StoreError

ROOT = Path(__file__).resolve().parents[1]


def image_rows(start: int, n: int, h: int = 16, w: int = 20):
    """Deterministic content for global image indices start..start+n (checked bit for bit)."""
    rgb = np.stack([np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
                    for i in range(start, start + n)])
    pose = np.tile(np.eye(4), (n, 1, 1))
    pose[:, :3, 3] = np.arange(start, start + n)[:, None] * 0.01
    K = np.tile(np.array([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]]), (n, 1, 1))
    return rgb, pose, K


def make_gt_store(path, n_scenes=2, views=3, h=16, w=20):
    with SceneStore.create(path, h, w, ground_truth=True, max_objects=4, attrs={"source": "test"}) as store:
        count = 0
        for s in range(n_scenes):
            sid = f"scene_{s:03d}"
            store.add_scene(sid, {"objects": [{"shape": "cube"}, {"shape": "sphere"}], "source": "test"})
            rgb, pose, K = image_rows(count, views, h, w)
            labels = np.zeros((views, h, w), np.uint8)
            labels[:, 2:6, 2:6] = 1
            labels[:, 8:12, 10:14] = 2
            amodal = np.zeros((views, 2, h, w), bool)
            amodal[:, 0, 2:7, 2:7] = True
            amodal[:, 1, 8:12, 9:14] = True
            store.append_images(sid, rgb, pose, K, label_map=labels, amodal_masks=amodal,
                                joint_positions=np.zeros((views, 7)))
            store.set_scene_state(sid, "complete")
            count += views
    return path


def test_round_trip_and_conventions(tmp_path):
    path = make_gt_store(tmp_path / "s.zarr")
    store = SceneStore.open(path)
    assert store.num_images == 6 and store.scene_ids == ["scene_000", "scene_001"]
    assert store.attrs["schema"] == {"name": "ldsrig-scene-store", "version": SCHEMA_VERSION}
    assert "OpenCV" in store.attrs["conventions"]["camera_pose_world"]
    rows = store.images(store.scene_image_indices("scene_001"))
    rgb, pose, K = image_rows(3, 3)
    assert np.array_equal(rows["rgb"], rgb) and np.array_equal(rows["camera_pose_world"], pose)
    assert rows["view_index"].tolist() == [0, 1, 2]
    assert rows["joint_positions"].shape == (3, 8) and np.isnan(rows["joint_positions"][:, 7]).all()
    assert rows["amodal_masks"].shape == (3, 4, 16, 20) and not rows["amodal_masks"][:, 2:].any()
    assert store.scene_state("scene_000") == "complete"
    assert store.scene_metadata("scene_000")["objects"][1]["shape"] == "sphere"


def test_views_of_a_scene_may_be_interleaved_and_resumed(tmp_path):
    with SceneStore.create(tmp_path / "s", 16, 20) as store:
        store.add_scene("a")
        store.add_scene("b")
        store.append_images("a", *image_rows(0, 2))
        store.append_images("b", *image_rows(2, 1))
    with SceneStore.open(tmp_path / "s", mode="a") as store:
        store.append_images("a", *image_rows(3, 1))
    store = SceneStore.open(tmp_path / "s")
    assert store.scene_image_indices("a").tolist() == [0, 1, 3]
    assert store.images([3])["view_index"].tolist() == [2]


def test_discarded_scene_can_be_redone_under_same_id(tmp_path):
    with SceneStore.create(tmp_path / "s", 16, 20) as store:
        store.add_scene("a", {"take": 1})
        store.append_images("a", *image_rows(0, 2))
        store.set_scene_state("a", "discarded")
        assert store.scene_ids == []
        store.add_scene("a", {"take": 2})
        store.append_images("a", *image_rows(2, 1))
    store = SceneStore.open(tmp_path / "s")
    assert store.scene_ids == ["a"] and store.scene_metadata("a") == {"take": 2}
    assert store.scene_image_indices("a").tolist() == [2]


def test_second_writer_refused_and_reader_allowed(tmp_path):
    path = tmp_path / "s"
    with SceneStore.create(path, 16, 20) as writer:
        with pytest.raises(StoreError, match="being written by another process"):
            SceneStore.open(path, mode="a")
        assert SceneStore.open(path).num_images == 0  # readers never block
        child = subprocess.run(
            [sys.executable, "-c", f"from datasets.store import SceneStore; SceneStore.open({str(path)!r}, 'a')"],
            cwd=ROOT, capture_output=True, text=True)
        assert child.returncode != 0 and "being written by another process" in child.stderr
    SceneStore.open(path, mode="a").close()  # released on close


def test_stale_lock_from_dead_process_is_detected(tmp_path):
    from datasets.inspect import check_store
    from datasets.store import stale_lock_owner

    path = tmp_path / "s"
    SceneStore.create(path, 16, 20).close()
    code = f"import os; from datasets.store import SceneStore; s = SceneStore.open({str(path)!r}, 'a'); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)  # dies holding the lock
    assert "pid" in (stale_lock_owner(path) or "")
    assert any("stale writer lock" in p.message for p in check_store(path, progress=False))
    SceneStore.open(path, mode="a").close()  # a new writer takes over


WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from datasets.store import SceneStore
    from test_store import image_rows
    store = SceneStore.open({path!r}, "a") if {resume} else SceneStore.create({path!r}, 480, 640)
    if not {resume}:
        store.add_scene("scene")
    i = store.num_images
    while True:
        store.append_images("scene", *image_rows(i, 2, 480, 640))
        i += 2
        print(i, flush=True)
""")


def _expect_committed(path):
    store = SceneStore.open(path)
    n = store.num_images
    rows = store.images(slice(0, n))
    rgb, pose, _ = image_rows(0, n, 480, 640)
    assert np.array_equal(rows["rgb"], rgb), "a committed image changed"
    assert np.array_equal(rows["camera_pose_world"], pose)
    return n, store


def test_sigkill_mid_append_keeps_every_committed_image(tmp_path):
    """Kill a writer at random moments inside append loops; committed data survives bit for bit."""
    path = tmp_path / "kill.zarr"
    script = tmp_path / "writer.py"
    committed_before = 0
    for attempt, delay in enumerate([0.6, 0.37, 0.53]):
        script.write_text(WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path),
                                        resume=attempt > 0))
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one batch committed in this round
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n, store = _expect_committed(path)
        assert n >= committed_before + 2 and n % 2 == 0
        committed_before = n
    # and writing resumes cleanly after the last kill
    with SceneStore.open(path, mode="a") as store:
        assert store.uncommitted_rows() == 0
        store.append_images("scene", *image_rows(committed_before, 2, 480, 640))
    n, _ = _expect_committed(path)
    assert n == committed_before + 2


def test_kill_between_rows_and_commit_marker(tmp_path):
    """The exact worst case: rows resized and written, commit marker not yet written."""
    path = tmp_path / "s.zarr"
    with SceneStore.create(path, 16, 20) as store:
        store.add_scene("a")
        store.append_images("a", *image_rows(0, 3))
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from datasets.store import SceneStore
        from test_store import image_rows
        store = SceneStore.open({str(path)!r}, "a")
        store._commit = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        store.append_images("a", *image_rows(3, 5))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    store = SceneStore.open(path)
    assert store.num_images == 3 and store.uncommitted_rows() == 5
    rgb, _, _ = image_rows(0, 3)
    assert np.array_equal(store.images(slice(0, 3))["rgb"], rgb)
    from datasets.inspect import check_store

    assert any("uncommitted" in p.message for p in check_store(path, progress=False))
    with SceneStore.open(path, mode="a") as store:
        assert store.uncommitted_rows() == 0
        store.append_images("a", *image_rows(3, 2))
    assert SceneStore.open(path).images([4])["view_index"].tolist() == [4]


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        SceneStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a zarr store"):
        SceneStore.open(tmp_path / "plain")
    import zarr

    zarr.open_group(str(tmp_path / "foreign"), mode="w")
    with pytest.raises(StoreError, match="not an ldsrig scene store"):
        SceneStore.open(tmp_path / "foreign")
    path = make_gt_store(tmp_path / "s")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["schema"]["version"] = SCHEMA_VERSION + 1
    newer = tmp_path / "newer"
    import shutil

    shutil.copytree(path, newer)
    (newer / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="newer than this ldsrig"):
        SceneStore.open(newer)
    with SceneStore.open(path, mode="a") as store:
        with pytest.raises(StoreError, match="rgb must be uint8"):
            store.append_images("scene_000", np.zeros((1, 8, 8, 3), np.uint8), np.eye(4), np.eye(3),
                                label_map=np.zeros((8, 8), np.uint8), amodal_masks=np.zeros((1, 8, 8), bool))
        rgb, pose, K = image_rows(0, 1)
        with pytest.raises(StoreError, match="label_map and amodal_masks are required"):
            store.append_images("scene_000", rgb, pose, K)
        with pytest.raises(StoreError, match="not in"):
            store.append_images("nope", rgb, pose, K)
        with pytest.raises(StoreError, match="already exists"):
            store.add_scene("scene_000")
    assert SceneStore.open(path).num_images == 6  # nothing committed by the failures


def test_check_finds_bad_pose_and_masks(tmp_path):
    from datasets.inspect import check_store

    path = make_gt_store(tmp_path / "s")
    assert [p for p in check_store(path, progress=False) if p.severity == "error"] == []
    with SceneStore.open(path, mode="a") as store:
        rgb, pose, K = image_rows(6, 1)
        pose[0, :3, :3] *= 2.0  # a scaled "rotation"
        labels = np.zeros((1, 16, 20), np.uint8)
        labels[0, 0:4, 0:4] = 1  # outside object 1's amodal mask
        amodal = np.zeros((1, 2, 16, 20), bool)
        amodal[0, 0, 10:, 10:] = True
        store.append_images("scene_000", rgb, pose, K, label_map=labels, amodal_masks=amodal)
    messages = " ".join(p.message for p in check_store(path, progress=False))
    assert "not finite rigid transforms" in messages and "masks that disagree" in messages


def test_corrupt_chunk_reported_not_crashing(tmp_path):
    from datasets.inspect import check_store

    path = make_gt_store(tmp_path / "s")
    chunk = next(p for p in (path / "images" / "rgb").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"garbage")
    problems = check_store(path, progress=False)
    assert any(p.severity == "error" and "images/rgb cannot be read" in p.message for p in problems)


def test_batch_commits_all_or_nothing(tmp_path):
    path = tmp_path / "s"
    with SceneStore.create(path, 16, 20) as store:
        with store.batch():
            for k in range(5):
                store.add_scene(f"single_{k}", {"k": k})
                store.append_images(f"single_{k}", *image_rows(k, 1))
                store.set_scene_state(f"single_{k}", "complete")
            assert SceneStore.open(path).num_images == 0  # nothing visible before the batch ends
        with pytest.raises(RuntimeError):
            with store.batch():
                store.add_scene("doomed")
                store.append_images("doomed", *image_rows(5, 2))
                raise RuntimeError("renderer crashed")
        assert store.num_images == 5 and not store.has_scene("doomed")
        store.add_scene("doomed")  # the id is free again
    reader = SceneStore.open(path)
    assert reader.num_images == 5 and reader.scene_ids[:5] == [f"single_{k}" for k in range(5)]
    assert reader.scene_metadata("single_3") == {"k": 3} and reader.scene_state("single_3") == "complete"
    assert np.array_equal(reader.images([4])["rgb"], image_rows(4, 1)[0])


def _errors(path) -> list[str]:
    from datasets.inspect import check_store

    return [p.message for p in check_store(path, progress=False) if p.severity == "error"]


def _chunk(path: Path, array: str, row: int) -> Path:
    import zarr

    arr = zarr.open_array(str(path / "images" / array), mode="r")
    unit = (arr.shards or arr.chunks)[0]
    return path / "images" / array / arr.metadata.encode_chunk_key((row // unit,) + (0,) * (arr.ndim - 1))


@pytest.mark.parametrize("array", ["rgb", "label_map", "amodal_masks", "camera_pose_world"])
def test_check_finds_a_deleted_chunk(tmp_path, array):
    path = make_gt_store(tmp_path / "s")
    assert _errors(path) == []
    _chunk(path, array, 4).unlink()
    messages = " ".join(_errors(path))
    assert f"images/{array}" in messages and "missing" in messages


def test_check_finds_an_all_background_chunk_is_kept(tmp_path):
    """A view with no object writes an all-zero label chunk: present, so never mistaken for damage."""
    path = tmp_path / "s"
    with SceneStore.create(path, 16, 20, ground_truth=True, max_objects=2) as store:
        store.add_scene("a", {"objects": []})
        rgb, pose, K = image_rows(0, 2)
        store.append_images("a", rgb, pose, K, label_map=np.zeros((2, 16, 20), np.uint8),
                            amodal_masks=np.zeros((2, 0, 16, 20), bool))
        store.set_scene_state("a", "complete")
    assert _chunk(path, "label_map", 1).is_file() and _errors(path) == []


def test_check_finds_flipped_bytes_inside_a_valid_frame(tmp_path):
    path = make_gt_store(tmp_path / "s")
    chunk = _chunk(path, "rgb", 2)
    raw = bytearray(chunk.read_bytes())
    for k in (len(raw) // 3, len(raw) // 2, 2 * len(raw) // 3):   # inside the zstd payload
        raw[k] ^= 0x55
    chunk.write_bytes(bytes(raw))
    messages = _errors(path)
    assert any(m.startswith("image 2: images/rgb cannot be read") for m in messages), messages
    # the other checks still run on the other arrays and rows: no false "no images" warnings
    from datasets.inspect import check_store

    assert not any("has no images" in p.message for p in check_store(path, progress=False))


def test_non_finite_values_refused_on_write_and_found_by_check(tmp_path):
    import zarr

    path = make_gt_store(tmp_path / "s")
    with SceneStore.open(path, mode="a") as store:
        rgb, pose, K = image_rows(6, 1)
        bad = pose.copy()
        bad[0, 0, 3] = np.nan                                     # a NaN translation
        labels, amodal = np.zeros((1, 16, 20), np.uint8), np.zeros((1, 2, 16, 20), bool)
        with pytest.raises(StoreError, match="camera_pose_world contains NaN"):
            store.append_images("scene_000", rgb, bad, K, label_map=labels, amodal_masks=amodal)
        with pytest.raises(StoreError, match="joint_positions contains inf"):
            store.append_images("scene_000", rgb, pose, K, label_map=labels, amodal_masks=amodal,
                                joint_positions=np.full((1, 7), np.inf))
    # damage written behind the store's back (another tool, a bit flip before checksums)
    poses = zarr.open_array(str(path / "images" / "camera_pose_world"), mode="r+")
    value = poses[1]
    value[1, 3] = np.inf
    poses[1] = value
    joints = zarr.open_array(str(path / "images" / "joint_positions"), mode="r+")
    value = joints[3]
    value[0] = -np.inf
    joints[3] = value
    messages = " ".join(_errors(path))
    assert "not finite rigid transforms (first: image 1)" in messages
    assert "infinite joint angles (first: image 3)" in messages


def test_damaged_attributes_are_one_clear_problem(tmp_path):
    from datasets.inspect import check_store

    for name, edit in [("version", lambda a: a["schema"].update(version="one")),
                       ("height", lambda a: a.pop("height"))]:
        path = make_gt_store(tmp_path / name)
        meta = json.loads((path / "zarr.json").read_text())
        edit(meta["attributes"])
        (path / "zarr.json").write_text(json.dumps(meta))
        problems = check_store(path, progress=False)
        assert len(problems) == 1 and problems[0].severity == "error", problems
        assert name in problems[0].message or "version" in problems[0].message


LIVE_WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from datasets.store import SceneStore
    from test_store import image_rows
    store = SceneStore.create({path!r}, 8, 8)
    store.add_scene("scene")
    print("ready", flush=True)
    for i in range(100000):
        store.append_images("scene", *image_rows(i, 1, 8, 8))
""")


def test_a_reader_never_calls_a_live_store_damaged(tmp_path):
    """Open the store over and over while a writer appends: the commit record is read before
    the arrays, so a reader sees a consistent prefix, never 'committed data is missing'."""
    path = tmp_path / "live.zarr"
    script = tmp_path / "writer.py"
    script.write_text(LIVE_WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        # A fixed number of opens while the writer is seen to advance, not a time window: on a
        # loaded machine 2 s held only 13 opens. The deadline only stops a writer that hangs.
        deadline, opens, seen, first_seen = time.monotonic() + 120.0, 0, 0, None
        while opens < 40 or seen < (first_seen or 0) + 5:
            assert time.monotonic() < deadline, f"the writer stalled: {seen} rows after {opens} opens"
            store = SceneStore.open(path)               # raises StoreError if it looks damaged
            assert store.num_images >= seen
            seen = store.num_images
            first_seen = seen if first_seen is None else first_seen
            if seen:
                store.images([seen - 1])                 # the last committed row reads
            opens += 1
        assert seen >= first_seen + 5                    # the opens overlapped real appends
    finally:
        proc.kill()
        proc.wait()


def test_commit_record_is_read_before_the_arrays(tmp_path):
    """The interleaving that made a reader call a live store damaged, made deterministic: the
    writer commits a row after the reader opened the image arrays and before it read anything
    else. Reading the commit record first makes that harmless."""
    import zarr

    path = tmp_path / "s.zarr"
    writer = SceneStore.create(path, 8, 8)
    writer.add_scene("scene")
    writer.append_images("scene", *image_rows(0, 2, 8, 8))

    class InterleavingGroup:
        def __init__(self, group):
            self.group, self.attrs = group, group.attrs

        def __getitem__(self, key):
            if key == "scenes":                       # after the image arrays were opened
                writer.append_images("scene", *image_rows(2, 1, 8, 8))
            return self.group[key]

    reader = SceneStore(path, InterleavingGroup(zarr.open_group(str(path), mode="r")), "r", None)
    assert reader.num_images in (2, 3)
    writer.close()
