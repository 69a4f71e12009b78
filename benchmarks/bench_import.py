"""Importer speed: images/s into a fresh store for each format, on data generated here (the
CLE-MV sample replicated into a packed tree, a GQN-Jaco-shaped h5, DeepMind-shaped TFRecords),
plus the TFRecord read+decode rate alone and the resume (skip) rate.

    .venv/bin/python benchmarks/bench_import.py [--scenes 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.importers import import_dataset  # noqa: E402
from datasets.importers.tfrecord import encode_example, iter_records, parse_example, write_records  # noqa: E402

FIXTURE = ROOT.parent / "shared" / "fixtures" / "clevr_mv_raw_sample"
NAME = "CLEVR_new_000000"


def packed_clevr(root: Path, scenes: int) -> Path:
    from PIL import Image

    scene = json.loads((FIXTURE / "scenes" / f"{NAME}.json").read_text())
    images = np.stack([np.asarray(Image.open(FIXTURE / "images" / f"{NAME}_{v:02d}.png")) for v in range(10)])
    masks = np.stack([np.load(FIXTURE / "masks" / f"{NAME}_{v:02d}.npy") for v in range(10)])
    (root / "data").mkdir(parents=True)
    entries = []
    for n in range(scenes):
        with open(root / "data" / f"CLEVR_new_{n:06d}.npy", "wb") as handle:
            np.savez_compressed(handle, images=images, masks=masks)
        entries.append({**scene, "data_path": f"data/CLEVR_new_{n:06d}.npy"})
    index = root / "clevr_mv_train.json"
    index.write_text(json.dumps({"info": {}, "scenes": entries, "shape_gallery": [], "num_views": 10}))
    return index


def gqn_h5(path: Path, scenes: int) -> Path:
    import h5py

    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    yaw = angles + np.pi
    viewpoints = np.stack([3 * np.cos(angles), 3 * np.sin(angles), np.ones(10), np.sin(yaw), np.cos(yaw),
                           np.full(10, -0.3), np.full(10, 0.95)], axis=1)
    with h5py.File(path, "w") as handle:
        handle["images"] = rng.integers(0, 256, (scenes, 10, 64, 64, 3), dtype=np.uint8)
        handle["viewpoints"] = np.tile(viewpoints, (scenes, 1, 1))
    return path


def tfrecords(path: Path, records: int, height: int, width: int, entities: int) -> Path:
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(records):
        label = rng.integers(0, entities, (height // 8 + 1, width // 8 + 1)).repeat(8, 0).repeat(8, 1)[:height, :width]
        masks = (np.arange(entities)[:, None, None] == label).astype(np.uint8)[..., None] * 255
        payloads.append(encode_example({
            "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            "mask": masks, "visibility": np.ones(entities, np.float32),
        }))
    write_records(path, payloads)
    return path


def timed_import(*args, **kwargs):
    start = time.perf_counter()
    report = import_dataset(*args, progress=False, **kwargs)
    return report, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=40, help="multi-view scenes per format (10 views each)")
    parser.add_argument("--records", type=int, default=400, help="single-view TFRecord records (64x64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        index = packed_clevr(tmp / "packed", args.scenes)
        report, seconds = timed_import("clevr-mv", index, tmp / "s_packed")
        rows.append(("clevr-mv (packed npz), 64x64, 10 views", report.images_written, seconds))
        _, resume_seconds = timed_import("clevr-mv", index, tmp / "s_packed")
        rows.append(("clevr-mv resume (all scenes complete: skip)", report.images_written, resume_seconds))
        report, seconds = timed_import("clevr-mv-raw", FIXTURE, tmp / "s_raw")
        rows.append(("clevr-mv-raw (real sample, PNG + npy)", report.images_written, seconds))
        h5 = gqn_h5(tmp / "gqn.h5", args.scenes)
        report, seconds = timed_import("gqn-jaco", h5, tmp / "s_gqn")
        rows.append(("gqn-jaco h5, 64x64, 10 views", report.images_written, seconds))
        tf64 = tfrecords(tmp / "objects_room.tfrecords", args.records, 64, 64, 7)
        start = time.perf_counter()
        decoded = sum(1 for record in iter_records(tf64) if parse_example(record))
        rows.append(("TFRecord read + CRC + decode only, 64x64, 7 entities", decoded, time.perf_counter() - start))
        report, seconds = timed_import("multi-object", tf64, tmp / "s_or", dataset="objects_room")
        rows.append(("multi-object objects_room, 64x64 (1 view/scene)", report.images_written, seconds))
        tfc = tfrecords(tmp / "clevr.tfrecords", max(args.records // 20, 5), 240, 320, 11)
        report, seconds = timed_import("multi-object", tfc, tmp / "s_clevr", dataset="clevr_with_masks")
        rows.append(("multi-object clevr_with_masks, 240x320", report.images_written, seconds))
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'images':>7}  {'seconds':>8}  {'images/s':>9}")
    for what, images, seconds in rows:
        print(f"{what:<{width}}  {images:>7}  {seconds:>8.2f}  {images / seconds:>9.1f}")


if __name__ == "__main__":
    main()
