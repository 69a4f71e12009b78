"""Monte Carlo error of the simulated views against a high-spp reference, next to the webcam model's
sensor noise at the same resolution, and the rendering speed.

For each rendered view: a reference at --ref-spp (multi-jittered sampling), then renders at each
--spp with each --sampler; the error is the RMSE of the sRGB image in [0, 1] (before the webcam
model and before 8-bit quantisation), at the capture resolution and after the training-store
derivation (centre crop + area resize, as ``ldsrig data prepare`` does) to each --sizes.  The
webcam's sensor noise (datasets/synth/webcam.py: shot + read noise + quantisation, with the
photometric part held fixed) is measured the same way on the reference, so the two figures
compare like for like.  Seconds are per view on --threads render threads.

    .venv/bin/python benchmarks/bench_render_noise.py                       # cube scenes, 160x120
    .venv/bin/python benchmarks/bench_render_noise.py --generator clevr --width 64 --height 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.prepare import centre_crop_box  # noqa: E402
from datasets.synth import clevr, cubes, render, webcam  # noqa: E402


def resized(srgb: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return srgb
    y0, x0, side = centre_crop_box(*srgb.shape[:2])
    return cv2.resize(srgb[y0:y0 + side, x0:x0 + side].astype(np.float32), (size, size),
                      interpolation=cv2.INTER_AREA)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def views(generator: str, scenes: int, per_scene: int, width: int, height: int, seed: int):
    """(loaded scene, pose, K) for per_scene views of each of ``scenes`` random scenes."""
    for i in range(scenes):
        rng = np.random.default_rng([seed, i])
        if generator == "cubes":
            scene = cubes.sample_cube_scene(rng)
            poses = cubes.sample_cube_viewpoints(rng, per_scene, radius_m=(0.25, 0.35))
            K = cubes.default_intrinsics(width, height)
            loaded = cubes.load_cube_scene(scene)
        else:
            scene = clevr.sample_clevr_scene(rng)
            poses, Ks = clevr.camera_ring(per_scene, width=width, height=height)
            K = Ks[0]
            loaded = clevr.load_clevr_scene(scene)
        for pose in poses:
            yield loaded, pose, K


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", choices=["cubes", "clevr"], default="cubes")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--views", type=int, default=2, help="views per scene")
    parser.add_argument("--spp", type=int, nargs="+", default=[16, 64, 144, 256])
    parser.add_argument("--sampler", nargs="+", default=["independent", "multijitter"])
    parser.add_argument("--ref-spp", type=int, default=4096)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32],
                        help="training-store sizes to measure at, besides the capture resolution")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    render.set_render_threads(args.threads)
    sizes = [None, *args.sizes]
    depth = 5 if args.generator == "cubes" else 8       # as each generator renders
    errors: dict[tuple, list] = {}
    seconds: dict[tuple, list] = {}
    noise: list = []
    for v, (loaded, pose, K) in enumerate(views(args.generator, args.scenes, args.views,
                                                args.width, args.height, args.seed)):
        def draw(spp, sampler, seed):
            started = time.perf_counter()
            linear = render.render_linear_rgb(loaded, pose, K, args.width, args.height, spp=spp,
                                              seed=seed, max_depth=depth, sampler=sampler)
            return linear, time.perf_counter() - started

        ref, ref_s = draw(args.ref_spp, "multijitter", 10_000 + v)
        ref_srgb = render.linear_to_srgb(ref)
        print(f"view {v}: reference {args.ref_spp} spp in {ref_s:.1f} s", flush=True)
        for sampler in args.sampler:
            for spp in args.spp:
                linear, s = draw(spp, sampler, v)
                srgb = render.linear_to_srgb(linear)
                errors.setdefault((sampler, spp), []).append([rmse(resized(srgb, z), resized(ref_srgb, z)) for z in sizes])
                seconds.setdefault((sampler, spp), []).append(s)
        rng = np.random.default_rng([args.seed, v])
        settings = webcam.WebcamSettings.draw(rng)
        signal = webcam.photometric(ref, settings)
        clean = render.linear_to_srgb(signal)
        noisy = render.to_uint8(render.linear_to_srgb(webcam.sensor_noise(signal, settings, rng))) / 255.0
        noise.append([rmse(resized(noisy, z), resized(clean, z)) for z in sizes])

    names = [f"{args.width}x{args.height}"] + [f"{z}x{z}" for z in args.sizes]
    print(f"\n{args.generator} scenes, {args.scenes} x {args.views} views, sRGB RMSE in [0, 1] "
          f"against {args.ref_spp} spp; seconds per view at {args.threads} thread(s)\n")
    print("| source | s / view | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    webcam_row = np.mean(noise, axis=0)
    print("| webcam sensor noise (the model's own term) | - | "
          + " | ".join(f"{x:.4f}" for x in webcam_row) + " |")
    for (sampler, spp), errs in errors.items():
        row = np.mean(errs, axis=0)
        ratio = row / webcam_row
        print(f"| Monte Carlo, {sampler} {spp} spp | {np.mean(seconds[(sampler, spp)]):.2f} | "
              + " | ".join(f"{x:.4f} ({r:.2f}x)" for x, r in zip(row, ratio)) + " |")
    print("\n(x): Monte Carlo error / webcam sensor noise at that resolution.")


if __name__ == "__main__":
    main()
