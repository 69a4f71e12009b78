"""DeepMind multi_object_datasets TFRecords without TensorFlow, and GQN-Jaco h5.

The TFRecord files are written here by a small encoder of the test's own (protobuf wire format
and TFRecord framing written out by hand, not the importer's code), the way DeepMind's files
are laid out: GZIP, one Example per record, images and masks as BytesLists of single bytes."""

from __future__ import annotations

import gzip
import struct

import google_crc32c
import h5py
import numpy as np
import pytest

from datasets.importers import ImportSourceError, ImportTargetError, import_dataset
from datasets.importers.gqn_jaco import gqn_viewpoint_to_camera_pose_world
from datasets.importers.tfrecord import crc32c, encode_example, iter_records, masked_crc32c, parse_example
from datasets.store import SceneStore

# --- the test's own encoder ------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: list[bytes]) -> bytes:
    return _field(1, b"".join(_field(1, v) for v in values))


def _pixel_feature(array: np.ndarray) -> bytes:
    """DeepMind's layout: one single-byte string per uint8 value."""
    return _bytes_feature([bytes([int(v)]) for v in array.reshape(-1)])


def _float_feature(values, packed: bool = True) -> bytes:
    values = np.asarray(values, dtype="<f4").reshape(-1)
    if packed:
        return _field(2, _field(1, values.tobytes()))
    body = b"".join(_varint(1 << 3 | 5) + v.tobytes() for v in values)  # unpacked fixed32
    return _field(2, body)


def _int_feature(values) -> bytes:
    return _field(3, _field(1, b"".join(_varint(int(v)) for v in values)))


def _example(features: dict[str, bytes]) -> bytes:
    entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, v)) for k, v in features.items())
    return _field(1, entries)


def _crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    # google_crc32c (checked against the bitwise reference above in test_crc32c_matches_reference);
    # the pure-Python reference is too slow for megabyte records.
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(payloads: list[bytes]) -> bytes:
    out = b""
    for payload in payloads:
        length = struct.pack("<Q", len(payload))
        out += length + struct.pack("<I", _masked(length)) + payload + struct.pack("<I", _masked(payload))
    return out


def _write(path, payloads, compress=True):
    data = _tfrecord(payloads)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# --- scenes ----------------------------------------------------------------------------------


def _tetromino_scene(rng, size=35, entities=4, present=3):
    """Background + ``present`` square objects; the rest of the entity slots empty."""
    label = np.zeros((size, size), np.int64)
    for entity in range(1, present + 1):
        y, x = rng.integers(0, size - 8, size=2)
        label[y:y + 8, x:x + 8] = entity
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    masks = np.stack([(label == e) for e in range(entities)]).astype(np.uint8)[..., None] * 255
    visibility = np.array([1.0] + [1.0 if e <= present else 0.0 for e in range(1, entities)])
    return image, masks, label, visibility


def test_crc32c_matches_reference():
    assert crc32c(b"123456789") == 0xE3069283 == _crc32c_reference(b"123456789")
    data = bytes(range(256)) * 3
    assert google_crc32c.value(data) == _crc32c_reference(data)
    crc = _crc32c_reference(data)
    assert masked_crc32c(data) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_example_decoder_reads_every_list_kind():
    payload = _example({
        "pixels": _pixel_feature(np.arange(12, dtype=np.uint8)),
        "names": _bytes_feature([b"cube", b"sphere"]),
        "packed": _float_feature([0.5, -2.0]),
        "unpacked": _float_feature([1.5, 3.0], packed=False),
        "ints": _int_feature([3, -1, 300]),
    })
    features = parse_example(payload)
    np.testing.assert_array_equal(features["pixels"], np.arange(12))
    assert features["names"] == [b"cube", b"sphere"]
    np.testing.assert_array_equal(features["packed"], [0.5, -2.0])
    np.testing.assert_array_equal(features["unpacked"], [1.5, 3.0])
    np.testing.assert_array_equal(features["ints"], [3, -1, 300])
    # The module's own encoder (used to write sample files) writes what the decoder reads.
    again = parse_example(encode_example({"pixels": np.arange(12, dtype=np.uint8), "ints": np.array([3, -1])}))
    np.testing.assert_array_equal(again["pixels"], np.arange(12))
    np.testing.assert_array_equal(again["ints"], [3, -1])


def test_tetrominoes_import(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [_tetromino_scene(rng, present=3 if n != 1 else 2) for n in range(3)]
    payloads = []
    for image, masks, _, visibility in scenes:
        payloads.append(_example({
            "image": _pixel_feature(image), "mask": _pixel_feature(masks),
            "x": _float_feature(rng.random(4)), "y": _float_feature(rng.random(4)),
            "shape": _float_feature([0, 1, 2, 3]), "color": _float_feature(rng.random((4, 3))),
            "visibility": _float_feature(visibility),
        }))
    src = _write(tmp_path / "tetrominoes.tfrecords", payloads)
    dst = tmp_path / "store"
    report = import_dataset("multi-object", src, dst, dataset="tetrominoes", progress=False)
    assert (report.scenes_written, report.images_written) == (3, 3)
    with SceneStore.open(dst) as store:
        assert store.scene_ids == [f"tetrominoes-{n:07d}" for n in range(3)]
        assert (store.height, store.width, store.max_objects) == (35, 35, 3)
        for n, (image, masks, label, visibility) in enumerate(scenes):
            scene_id = store.scene_ids[n]
            meta = store.scene_metadata(scene_id)
            rows = store.images(store.scene_image_indices(scene_id))
            np.testing.assert_array_equal(rows["rgb"][0], image)
            present = [e for e in range(1, 4) if visibility[e] > 0.5]
            assert [o["entity"] for o in meta["objects"]] == present
            assert meta["objects"][0]["shape"] == pytest.approx(1.0)
            expected = np.zeros_like(label)
            for k, entity in enumerate(present, start=1):
                expected[label == entity] = k
            np.testing.assert_array_equal(rows["label_map"][0], expected)
            for k, entity in enumerate(present):
                np.testing.assert_array_equal(rows["amodal_masks"][0, k], label == entity)
            np.testing.assert_array_equal(rows["camera_pose_world"][0], np.eye(4))
            assert meta["amodal_masks_are_visible"] is True
    again = import_dataset("multi-object", src, dst, dataset="tetrominoes", progress=False)
    assert (again.scenes_skipped, again.scenes_written) == (3, 0)


def test_multi_dsprites_mask_layout_and_grayscale(tmp_path):
    """multi_dsprites stores masks as (H,W,entities,1) and binarized images as one channel."""
    rng = np.random.default_rng(1)
    label = np.zeros((64, 64), np.int64)
    label[5:20, 5:20], label[30:50, 10:40] = 1, 3
    gray = rng.integers(0, 256, size=(64, 64, 1), dtype=np.uint8)
    masks_hwe = np.stack([(label == e) for e in range(4)], axis=-1).astype(np.uint8)[..., None] * 255
    payload = _example({"image": _pixel_feature(gray), "mask": _pixel_feature(masks_hwe),
                        "visibility": _float_feature([1, 1, 0, 1]), "color": _float_feature(rng.random(4))})
    src = _write(tmp_path / "md.tfrecords", [payload])
    import_dataset("multi-object", src, tmp_path / "store", dataset="multi_dsprites_binarized", progress=False)
    with SceneStore.open(tmp_path / "store") as store:
        rows = store.images([0])
        meta = store.scene_metadata(store.scene_ids[0])
    np.testing.assert_array_equal(rows["rgb"][0], np.repeat(gray, 3, axis=2))
    assert [o["entity"] for o in meta["objects"]] == [1, 3]
    expected = np.select([label == 1, label == 3], [1, 2], 0)
    np.testing.assert_array_equal(rows["label_map"][0], expected)


def test_clevr_with_masks_byte_factors(tmp_path):
    """240x320 with 11 entities; size/material/shape/color are one byte per entity."""
    label = np.zeros((240, 320), np.int64)
    label[100:140, 50:90] = 2
    image = np.full((240, 320, 3), 120, np.uint8)
    masks = np.stack([(label == e) for e in range(11)]).astype(np.uint8)[..., None] * 255
    codes = np.arange(11, dtype=np.uint8)
    payload = _example({
        "image": _pixel_feature(image), "mask": _pixel_feature(masks),
        "shape": _pixel_feature(codes), "visibility": _float_feature([1, 0, 1] + [0] * 8),
        "pixel_coords": _float_feature(np.arange(33, dtype=float)),
    })
    src = _write(tmp_path / "clevr.tfrecords", [payload])
    import_dataset("multi-object", src, tmp_path / "store", dataset="clevr_with_masks", progress=False)
    with SceneStore.open(tmp_path / "store") as store:
        meta = store.scene_metadata(store.scene_ids[0])
        rows = store.images([0])
    assert meta["objects"] == [{"entity": 2, "role": "object", "shape": 2, "visibility": 1.0,
                                "pixel_coords": [6.0, 7.0, 8.0]}]
    assert rows["intrinsics"][0][0, 0] == pytest.approx(350.0)
    assert int(rows["label_map"][0].sum()) == 40 * 40


def test_damaged_tfrecords(tmp_path):
    rng = np.random.default_rng(2)
    image, masks, _, visibility = _tetromino_scene(rng)
    good = _example({"image": _pixel_feature(image), "mask": _pixel_feature(masks)})
    raw = bytearray(_tfrecord([good, good]))
    raw[len(raw) // 2 + 40] ^= 0xFF  # flip a byte inside the second record's data
    src = tmp_path / "corrupt.tfrecords"
    src.write_bytes(bytes(raw))
    dst = tmp_path / "store"
    with pytest.raises(ImportSourceError, match="record 1 .*checksum mismatch"):
        import_dataset("multi-object", src, dst, dataset="tetrominoes", progress=False)
    with SceneStore.open(dst) as store:  # the first record was committed and stays
        assert store.scene_ids == ["tetrominoes-0000000"] and store.num_images == 1
    truncated = tmp_path / "truncated.tfrecords"
    truncated.write_bytes(gzip.compress(_tfrecord([good])[:-10]))
    with pytest.raises(ImportSourceError, match="truncated record 0"):
        list(iter_records(truncated))
    with pytest.raises(ImportSourceError, match="checksum mismatch"):
        (tmp_path / "text.tfrecords").write_bytes(b"this is not a tfrecord file at all")
        list(iter_records(tmp_path / "text.tfrecords"))
    with pytest.raises(ImportSourceError, match="wrong --dataset"):  # 35x35 records read as 64x64
        import_dataset("multi-object", _write(tmp_path / "ok.tfrecords", [good]), tmp_path / "s2",
                       dataset="objects_room", progress=False)
    with pytest.raises(ImportSourceError, match="needs --dataset"):
        import_dataset("multi-object", src, tmp_path / "s3", progress=False)


# --- GQN-Jaco --------------------------------------------------------------------------------


def _gqn_viewpoint(position, target):
    direction = np.asarray(target, float) - position
    yaw = np.arctan2(direction[1], direction[0])
    pitch = np.arctan2(direction[2], np.linalg.norm(direction[:2]))
    return np.r_[position, np.sin(yaw), np.cos(yaw), np.sin(pitch), np.cos(pitch)]


def test_gqn_viewpoint_pose_looks_where_the_angles_point():
    position = np.array([2.0, 1.0, 1.5])
    pose = gqn_viewpoint_to_camera_pose_world(_gqn_viewpoint(position, [0, 0, 0.2]))
    forward = pose[:3, 2]
    np.testing.assert_allclose(forward, -(position - [0, 0, 0.2]) / np.linalg.norm(position - [0, 0, 0.2]))
    np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-12)
    assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
    assert pose[2, 1] < 0  # image "down" points down in the world (z up)
    np.testing.assert_allclose(pose[:3, 3], position)


@pytest.mark.parametrize("as_float", [False, True])
def test_gqn_jaco_import(tmp_path, as_float):
    rng = np.random.default_rng(3)
    scenes, views = 3, 4
    images = rng.integers(0, 256, size=(scenes, views, 64, 64, 3), dtype=np.uint8)
    angles = np.linspace(0, 2 * np.pi, views, endpoint=False)
    viewpoints = np.stack([
        np.stack([_gqn_viewpoint([3 * np.cos(a), 3 * np.sin(a), 1.0], [0, 0, 0]) for a in angles])
        for _ in range(scenes)])
    src = tmp_path / "gqn_jaco_test.h5"
    with h5py.File(src, "w") as handle:
        handle["images"] = images.astype(np.float32) / 255.0 if as_float else images
        handle["viewpoints"] = viewpoints
    dst = tmp_path / "store"
    report = import_dataset("gqn-jaco", src, dst, progress=False)
    assert report.images_written == scenes * views
    with SceneStore.open(dst) as store:
        assert not store.has_ground_truth
        meta = store.scene_metadata("gqn-jaco-000001")
        rows = store.images(store.scene_image_indices("gqn-jaco-000001"))
    np.testing.assert_allclose(meta["gqn_viewpoints"], viewpoints[1])
    np.testing.assert_array_equal(rows["rgb"], images[1])
    forward = rows["camera_pose_world"][:, :3, 2]
    to_origin = -rows["camera_pose_world"][:, :3, 3]
    np.testing.assert_allclose(forward, to_origin / np.linalg.norm(to_origin, axis=1, keepdims=True), atol=1e-9)


def test_gqn_jaco_bad_input(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as handle:
        handle["images"] = np.zeros((2, 3, 64, 64, 3), np.uint8)
        handle["viewpoints"] = np.zeros((2, 4, 7))
    with pytest.raises(ImportSourceError, match="viewpoints are .* to match the images"):
        import_dataset("gqn-jaco", bad, tmp_path / "s", progress=False)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ImportSourceError, match="not a readable HDF5 file"):
        import_dataset("gqn-jaco", text, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_gqn_into_a_ground_truth_store_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    image, masks, _, _ = _tetromino_scene(rng)
    src = _write(tmp_path / "t.tfrecords", [_example({"image": _pixel_feature(image), "mask": _pixel_feature(masks)})])
    import_dataset("multi-object", src, tmp_path / "store", dataset="tetrominoes", progress=False)
    h5 = tmp_path / "g.h5"
    with h5py.File(h5, "w") as handle:
        handle["images"] = np.zeros((1, 2, 35, 35, 3), np.uint8)
        handle["viewpoints"] = np.tile(_gqn_viewpoint([1, 0, 0], [0, 0, 0]), (1, 2, 1))
    with pytest.raises(ImportTargetError, match="ground-truth setting"):
        import_dataset("gqn-jaco", h5, tmp_path / "store", progress=False)
