"""Inference-gap throughput: seconds per image for B importance samples, by chunk size.

    .venv/bin/python benchmarks/bench_gap.py [--size 64] [--slots 7] [--samples 500] [--images 2]

An untrained MONet at the paper's architecture (the cost does not depend on the weights). Prints
one line per chunk size: seconds per image, decoder latents per second, peak RSS growth.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flops import kernel_family  # noqa: E402  (benchmarks/flops.py)
import torch  # noqa: E402

from lds.evaluation.gap import estimate_gap  # noqa: E402
from lds.models import MONetConfig, build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slots", type=int, default=7)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"CPU kernels: {kernel_family()}")   # figures differ by kernel family (AVX2, AVX-512, AMX)
    torch.set_num_threads(args.threads)
    blocks = {32: (32, 32, 64, 64), 64: (32, 32, 64, 64, 64)}[args.size]
    model = build_model("monet", MONetConfig(height=args.size, width=args.size,
                                             num_slots=args.slots, unet_channels=blocks)).eval()
    batch = {"image": torch.rand(args.images, 3, args.size, args.size)}
    print(f"MONet {args.size}x{args.size} K={args.slots}, B={args.samples}, {args.images} images, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    for chunk in args.chunks:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        out = estimate_gap(model, batch, args.samples, chunk,
                           generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        latents = args.samples * args.images * args.slots
        print(f"chunk {chunk:4d}: {seconds / args.images:7.2f} s/image, "
              f"{latents / seconds:8.0f} latents decoded/s, peak RSS +{grown:.0f} MiB, "
              f"mean G {float(out['gap'].mean()):.2f} nats")


if __name__ == "__main__":
    main()
