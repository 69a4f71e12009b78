"""The fused CPU decoder trunk against the plain layers, side by side (lds/models/fused_decoder.py).

    .venv/bin/python benchmarks/bench_decoder_trunk.py [--items 56] [--reps 4] [--threads 1]
        [--chunks 2 4 8 14 28]

One MulMON decoder call at the paper setting (8 scenes x 7 slots = 56 slot images, 64x64,
32-channel convs): forward, the refinement gradient (dL/dz only, what MulMON's and IODINE's
inference asks for) and the training backward (inputs and weights), timed for the plain
layer-by-layer decoder and the fused trunk in alternating repetitions (best of ``--reps``); the
ratio plain / fused is the speed-up. ``--chunks`` also sweeps the trunk's chunk size (slot
images per thread).
FLOP rates are against the fp32 matmul rate measured in the same run (benchmarks/flops.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import kernel_family, matmul_rate  # noqa: E402  (benchmarks/flops.py)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lds.models import fused_decoder  # noqa: E402
from lds.models.base import SpatialBroadcastDecoder  # noqa: E402
from lds.training.loop import keep_freed_memory  # noqa: E402

PHASES = ("forward", "refinement grad", "training backward")


def mulmon_decoder(size: int, fused: bool) -> SpatialBroadcastDecoder:
    """MulMON's decoder (lds/models/mulmon.py): 4 x 32-channel convs, RGB and mask heads."""
    return SpatialBroadcastDecoder(16, size, size, (32, 32, 32, 32), 4, channels_last=True,
                                   fused_trunk=fused)


def phases(decoder: SpatialBroadcastDecoder, z: torch.Tensor) -> list[float]:
    """Seconds of: forward, dL/dz alone (retaining the graph), the full backward."""
    zz = z.detach().clone().requires_grad_()
    start = time.perf_counter()
    means, logits = decoder(zz, splits=(3, 1))
    loss = means.sum() + logits.sum()
    forward = time.perf_counter()
    torch.autograd.grad(loss, [zz], retain_graph=True)
    refine = time.perf_counter()
    loss.backward()
    end = time.perf_counter()
    return [forward - start, refine - forward, end - refine]


def flops_per_phase(decoder: SpatialBroadcastDecoder, z: torch.Tensor) -> list[int]:
    counts = []
    zz = z.detach().clone().requires_grad_()
    for phase in range(3):
        counter = FlopCounterMode(display=False)
        with counter:
            if phase == 0:
                means, logits = decoder(zz, splits=(3, 1))
                loss = means.sum() + logits.sum()
            elif phase == 1:
                torch.autograd.grad(loss, [zz], retain_graph=True)
            else:
                loss.backward()
        counts.append(counter.get_total_flops())
    decoder.zero_grad(set_to_none=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=56, help="slot images per decoder call")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunks", type=int, nargs="*", default=[])
    args = parser.parse_args()
    print(f"CPU kernels: {kernel_family()}")   # figures differ by kernel family (AVX2, AVX-512, AMX)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    fused = mulmon_decoder(args.size, fused=True)
    plain = mulmon_decoder(args.size, fused=False)
    plain.load_state_dict(fused.state_dict())
    z = torch.randn(args.items, 16)
    flops = flops_per_phase(plain, z)
    rate = matmul_rate()

    best = {"plain": [float("inf")] * 3, "fused": [float("inf")] * 3}
    for _ in range(args.reps + 1):                                   # the first round warms up
        for name, decoder in (("plain", plain), ("fused", fused)):
            best[name] = [min(a, b) for a, b in zip(best[name], phases(decoder, z))]
    print(f"decoder call: {args.items} slot images, {args.size}x{args.size}, channels "
          f"{tuple(c.out_channels for c in fused.convs)}, threads {torch.get_num_threads()}, "
          f"fp32 matmul {rate / 1e9:.0f} GFLOP/s, chunk {fused_decoder.chunk_size()} slot images "
          f"({fused_decoder.CHUNK_SLOT_IMAGES} per thread)")
    print(f"  {'phase':<18} {'GFLOP':>7} {'plain ms':>9} {'fused ms':>9} {'plain/fused':>11}"
          f" {'plain %':>8} {'fused %':>8}")
    for i, phase in enumerate(PHASES):
        p, f = best["plain"][i], best["fused"][i]
        print(f"  {phase:<18} {flops[i] / 1e9:7.2f} {1e3 * p:9.1f} {1e3 * f:9.1f} {p / f:11.2f}"
              f" {100 * flops[i] / p / rate:7.0f}% {100 * flops[i] / f / rate:7.0f}%")
    total_p, total_f = sum(best["plain"]), sum(best["fused"])
    print(f"  {'all three':<18} {sum(flops) / 1e9:7.2f} {1e3 * total_p:9.1f} {1e3 * total_f:9.1f}"
          f" {total_p / total_f:11.2f} {100 * sum(flops) / total_p / rate:7.0f}%"
          f" {100 * sum(flops) / total_f / rate:7.0f}%")
    if args.chunks:
        print("  chunk sweep, slot images per thread (fused, all three phases, best of reps):")
        default = fused_decoder.CHUNK_SLOT_IMAGES
        for chunk in args.chunks:
            fused_decoder.CHUNK_SLOT_IMAGES = chunk
            times = [sum(phases(fused, z)) for _ in range(args.reps + 1)][1:]
            print(f"    chunk {chunk:3d}: {1e3 * min(times):7.1f} ms"
                  f"  ({100 * sum(flops) / min(times) / rate:.0f}% of the matmul rate)")
        fused_decoder.CHUNK_SLOT_IMAGES = default
    print(f"  load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
