"""Inference-gap throughput: seconds per image for B importance samples, by chunk size.

    .venv/bin/python benchmarks/bench_gap.py [--size 64] [--slots 7] [--samples 500] [--images 2]

An untrained MONet at the paper's architecture (the cost does not depend on the weights). Prints
one line per chunk size: seconds per image, decoder latents per second, peak RSS growth.

    .venv/bin/python benchmarks/bench_gap.py --compare-amp --run RUN --data STORE [--images 8]

bf16 autocast against fp32 on a trained run, image by image: G in fp32 with the samples of seed
0 and of seed 1 (their difference is the estimate's own Monte Carlo error), G in bf16 with the
samples of seed 0 (its difference from fp32 is what bf16 changes), and the two precisions'
seconds per image, timed alternately in one process (the ratio is what to read on a shared
machine). Needs CUDA or a CPU with native bf16.
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


def compare_amp(args) -> None:
    """G and seconds per image, fp32 against bf16 autocast, on a trained run's images."""
    import numpy as np

    from lds.data import open_eval_dataset
    from lds.training.runs import load_run

    model, cfg = load_run(args.run)
    dataset = open_eval_dataset(Path(args.data), cfg.model)
    print(f"{cfg.model.name} {cfg.model.height}x{cfg.model.width} K={cfg.model.num_slots} from "
          f"{args.run}, B={args.samples}, chunk {args.chunks[0]}, {args.threads} thread(s)")

    def gap(item, seed, amp):
        started = time.perf_counter()
        out = estimate_gap(model, item, args.samples, args.chunks[0],
                           generator=torch.Generator().manual_seed(seed), amp=amp)
        return float(out["gap"][0]), time.perf_counter() - started

    rows = []
    for i in range(min(args.images, len(dataset))):
        item = {k: v[None] if isinstance(v, torch.Tensor) else v for k, v in dataset[i].items()}
        order = ("off", "bf16") if i % 2 == 0 else ("bf16", "off")   # alternate: no drift bias
        timed = {amp: gap(item, 0, amp) for amp in order}
        other_seed, _ = gap(item, 1, "off")
        rows.append((timed["off"][0], other_seed, timed["bf16"][0], timed["off"][1], timed["bf16"][1]))
        print(f"image {i}: G fp32 {timed['off'][0]:9.3f} (seed 1: {other_seed:9.3f}), "
              f"bf16 {timed['bf16'][0]:9.3f}; {timed['off'][1]:.2f} s fp32, "
              f"{timed['bf16'][1]:.2f} s bf16")
    g32, g32b, g16, t32, t16 = (np.array(c) for c in zip(*rows))
    print(f"mean G: fp32 {g32.mean():.3f}, bf16 {g16.mean():.3f} nats "
          f"(difference {np.mean(g16 - g32):+.3f} ± {np.std(g16 - g32, ddof=1) / len(g32) ** 0.5:.3f})")
    print(f"per image |G bf16 - G fp32| (same samples): mean {np.abs(g16 - g32).mean():.3f} nats; "
          f"Monte Carlo error |G seed 0 - G seed 1| (fp32): mean {np.abs(g32 - g32b).mean():.3f} nats")
    print(f"seconds per image: fp32 {t32.mean():.2f}, bf16 {t16.mean():.2f}; "
          f"time(bf16)/time(fp32) per image {np.median(t16 / t32):.2f} (median)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slots", type=int, default=7)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off",
                        help="precision of the joint's decoder passes (throughput mode)")
    parser.add_argument("--compare-amp", action="store_true",
                        help="fp32 against bf16 autocast on a trained run (--run, --data)")
    parser.add_argument("--run", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    print(f"CPU kernels: {kernel_family()}")   # figures differ by kernel family (AVX2, AVX-512, AMX)
    torch.set_num_threads(args.threads)
    if args.compare_amp:
        if args.run is None or args.data is None:
            parser.error("--compare-amp needs --run and --data")
        compare_amp(args)
        return
    blocks = {32: (32, 32, 64, 64), 64: (32, 32, 64, 64, 64)}[args.size]
    model = build_model("monet", MONetConfig(height=args.size, width=args.size,
                                             num_slots=args.slots, unet_channels=blocks)).eval()
    batch = {"image": torch.rand(args.images, 3, args.size, args.size)}
    print(f"MONet {args.size}x{args.size} K={args.slots}, B={args.samples}, {args.images} images, "
          f"{args.threads} thread(s), amp {args.amp}, torch {torch.__version__}")
    for chunk in args.chunks:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        out = estimate_gap(model, batch, args.samples, chunk,
                           generator=torch.Generator().manual_seed(0), amp=args.amp)
        seconds = time.perf_counter() - start
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        latents = args.samples * args.images * args.slots
        print(f"chunk {chunk:4d}: {seconds / args.images:7.2f} s/image, "
              f"{latents / seconds:8.0f} latents decoded/s, peak RSS +{grown:.0f} MiB, "
              f"mean G {float(out['gap'].mean()):.2f} nats")


if __name__ == "__main__":
    main()
