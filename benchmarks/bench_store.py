"""Scene store speed: write rate (commit per image, as the rig does, and in batches, as renderers
and importers do) and read rate through a DataLoader with 2 workers at 64x64.

    .venv/bin/python benchmarks/bench_store.py [--images 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.store import SceneStore  # noqa: E402
from datasets.torch_data import ImageDataset  # noqa: E402


def write_rate(root: Path, h: int, w: int, n: int, batch: int, ground_truth: bool) -> float:
    rng = np.random.default_rng(0)
    # Camera-like content (smooth + noise) compresses like real images, unlike pure noise.
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)[:h, :w]
    K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]])
    path = root / f"w_{h}x{w}_b{batch}_{int(ground_truth)}"
    kwargs = {}
    with SceneStore.create(path, h, w, ground_truth=ground_truth, max_objects=10) as store:
        store.add_scene("s")
        start = time.perf_counter()
        for lo in range(0, n, batch):
            m = min(batch, n - lo)
            rgb = np.clip(base[None].astype(np.int16) + rng.integers(-8, 8, (m, h, w, 3)), 0, 255).astype(np.uint8)
            if ground_truth:
                labels = np.zeros((m, h, w), np.uint8)
                labels[:, h // 4: h // 2, w // 4: w // 2] = 1
                kwargs = {"label_map": labels, "amodal_masks": (labels > 0)[:, None]}
            store.append_images("s", rgb, np.tile(np.eye(4), (m, 1, 1)), np.tile(K, (m, 1, 1)), **kwargs)
        elapsed = time.perf_counter() - start
    return n / elapsed


def read_rate(path: Path, workers: int, batch: int, epochs: int = 3, in_memory="auto") -> float:
    ds = ImageDataset(path, in_memory=in_memory)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    for _ in loader:  # warm-up epoch: worker start-up is not the steady state
        break
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for b in loader:
            count += b["image"].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    n = args.images
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"store write rate ({n} images, zstd level 3, one image per chunk)")
        for h, w, batch, gt in [(64, 64, 1, True), (64, 64, 100, True), (480, 640, 1, False), (480, 640, 25, False)]:
            rate = write_rate(root, h, w, n if h == 64 else n // 3, batch, gt)
            mode = "commit per image" if batch == 1 else f"batches of {batch}"
            print(f"  {w}x{h} {'with masks' if gt else 'rgb only  '}  {mode:18s} {rate:8.1f} images/s")
        path = root / "w_64x64_b100_1"
        print("read rate through a DataLoader at 64x64 (batch 40)")
        for workers, in_memory in [(2, True), (2, False), (0, True)]:
            rate = read_rate(path, workers, 40, in_memory=in_memory)
            print(f"  workers={workers} {'in memory' if in_memory else 'per item from zarr'}: {rate:9.1f} images/s")


if __name__ == "__main__":
    main()
