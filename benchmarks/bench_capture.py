"""Capture timings on the simulated rig, for the issue's note:

1. store write latency per 640x480 frame (append_images with n=1, which commits);
2. one simulated 640x480 scene: the software's own time per view (everything except arm motion and
   the camera, which here is the Mitsuba render) against the total time per view;
3. a `ldsrig capture scene --sim` process killed with SIGKILL mid-scene, then resumed: image count
   and checksums before and after;
4. a contact sheet of the simulated scene's views.

    .venv/bin/python benchmarks/bench_capture.py [--out DIR] [--views N] [--spp N]

Keep it short on the shared 2-core machine: the defaults run in well under a minute or two.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capture.session import (CaptureConfig, CaptureRig, capture_scene, contact_sheet,  # noqa: E402
                             image_checksums, open_store_for_capture)
from common.config import load_config  # noqa: E402
from datasets.store import SceneStore  # noqa: E402


def bench_store_writes(tmp: Path, frame: np.ndarray, n: int = 30) -> None:
    K = np.array([[530.0, 0, 319.5], [0, 530.0, 239.5], [0, 0, 1]])
    pose = np.eye(4)
    times = []
    with SceneStore.create(tmp / "writes", height=480, width=640, ground_truth=False) as store:
        store.add_scene("w", {"source": "benchmark"})
        rng = np.random.default_rng(0)
        for _ in range(n):
            # the same view with fresh sensor noise, so compression sees realistic data
            noisy = np.clip(frame.astype(np.int16) + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8)
            t = time.perf_counter()
            store.append_images("w", noisy[None], pose[None], K[None], joint_positions=np.zeros((1, 7)))
            times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    print(f"store write (append + commit) per 640x480 frame over {n} frames: median {np.median(ms):.1f} ms, "
          f"p90 {np.percentile(ms, 90):.1f} ms, max {ms.max():.1f} ms")


def bench_scene(tmp: Path, out: Path, views: int, spp: int) -> np.ndarray:
    cfg = load_config(CaptureConfig, None, ["camera.width=640", "camera.height=480", f"camera.sim_spp={spp}",
                                            f"n_views={views}"])
    rig = CaptureRig(cfg)
    t0 = time.perf_counter()
    with rig, open_store_for_capture(tmp / "scene", rig.cfg.camera, rig.sim) as store:
        rig.plan()
        t_plan = time.perf_counter() - t0
        summary = capture_scene(store, "scene_0000", rig, log=lambda s: None)
        sheet = contact_sheet(store, "scene_0000", out / "capture_sim_scene.png", columns=min(views, 5), scale=0.4)
        first = store.images([0], fields=["rgb"])["rgb"][0]
    t = summary.timing()
    print(f"simulated scene, {views} views at 640x480, spp {spp} (planning {t_plan:.1f} s, once per session):")
    print(f"  total per view     {t['total_s_per_view'] * 1000:7.0f} ms")
    print(f"  arm move + settle  {t['move_s_per_view'] * 1000:7.0f} ms  (simulated arm on a virtual clock)")
    print(f"  camera (render)    {t['camera_s_per_view'] * 1000:7.0f} ms  (Mitsuba + webcam model + masks)")
    print(f"  software's own     {t['software_s_per_view'] * 1000:7.0f} ms  = checks {t['check_s_per_view'] * 1000:.0f} ms"
          f" + store write {t['write_s_per_view'] * 1000:.0f} ms + the rest")
    print(f"  retakes {summary.retakes}, flagged views {summary.flagged}; contact sheet {sheet}")
    return first


def bench_kill_resume(tmp: Path) -> None:
    store_path = tmp / "killed"
    sets = ["--set=camera.width=160", "--set=camera.height=120", "--set=camera.sim_spp=4", "--set=n_views=10"]
    cmd = [sys.executable, str(ROOT / "cli.py"), "capture", "scene", "--sim", "--store", str(store_path),
           "--scene", "k"]
    proc = subprocess.Popen(cmd + sets + ["--set=arm_realtime=true"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def committed():
        try:
            with SceneStore.open(store_path) as s:
                return s.num_images
        except Exception:
            return 0
    while committed() < 4 and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with SceneStore.open(store_path) as s:
        n_before = s.num_images
        before = image_checksums(s, s.scene_image_indices("k"))
        state_before = s.scene_state("k")
    t = time.perf_counter()
    subprocess.run(cmd + sets + ["--resume"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    t_resume = time.perf_counter() - t
    with SceneStore.open(store_path) as s:
        idx = s.scene_image_indices("k")
        after = image_checksums(s, idx)
        views = s.images(idx, fields=["view_index"])["view_index"].tolist()
        state_after = s.scene_state("k")
    print(f"kill -9 mid-scene: {n_before} images committed, scene {state_before}; after --resume "
          f"({t_resume:.1f} s): {len(after)} images, scene {state_after}, view indices {views}")
    print(f"  committed images unchanged bit-for-bit: {after[:n_before] == before}")
    for i, (b, a) in enumerate(zip(before, after)):
        print(f"  view {i}: before {b[:16]}  after {a[:16]}")
    print(f"  duplicates: {len(views) - len(set(views))}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--spp", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame = bench_scene(tmp, args.out, args.views, args.spp)
        bench_store_writes(tmp, frame)
        bench_kill_resume(tmp)


if __name__ == "__main__":
    main()
