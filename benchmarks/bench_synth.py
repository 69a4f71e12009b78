"""Synthetic rendering rate (images/s) for both generators on this machine, end to end into a
store (scene sampling, visibility checks, RGB, label maps, amodal masks, store writes).

    .venv/bin/python benchmarks/bench_synth.py [--workers 1 2] [--clevr-scenes 4] [--cube-scenes 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.synth.generate import ClevrMVSettings, CubesSettings, generate  # noqa: E402


def run(label: str, generator: str, settings, scenes: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        report = generate(Path(tmp) / "s.zarr", generator, settings, scenes, workers=workers, progress=False)
        seconds = time.perf_counter() - started
    rate = report.images_written / seconds
    print(f"{label:<48} workers={workers}  {report.images_written:4d} images in {seconds:6.1f} s  "
          f"{rate:7.2f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clevr-scenes", type=int, default=4)
    parser.add_argument("--cube-scenes", type=int, default=1)
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}")
    clevr = ClevrMVSettings()
    cubes = CubesSettings(views=4)
    for workers in args.workers:
        run(f"clevr-mv 64x64, 10 views, spp {clevr.spp}", "clevr-mv", clevr, args.clevr_scenes, workers)
        run("clevr-mv --shapes complex 64x64, spp 128", "clevr-mv", replace(clevr, shapes="complex"),
            args.clevr_scenes, workers)
    for workers in args.workers:
        run(f"cubes 640x480, spp {cubes.spp}, noise", "cubes", cubes, max(args.cube_scenes, workers), workers)
        run("cubes 64x64, spp 16, noise", "cubes", replace(cubes, width=64, height=64, views=10),
            args.clevr_scenes, workers)


if __name__ == "__main__":
    main()
