"""MONet training throughput at the paper's settings (64x64, K=7, batch 40), and utilisation.

    .venv/bin/python benchmarks/bench_monet_train.py [--steps 3] [--batch 40] [--compile]
    .venv/bin/python benchmarks/bench_monet_train.py --size 32 --slots 5 --batch 16   # CPU regime

For each variant, one full training step (forward, backward, gradient-norm clip, RMSprop
update) is timed ``--steps`` times after one warm-up step; the FLOPs of a step are counted with
torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls, forward and backward), and the
fp32 matrix-multiply rate is measured in the same run (a 4096^2 torch.mm loop, before and after
the variants; the higher one is used). Utilisation = achieved FLOP/s / matmul FLOP/s.

Two FLOP counts are reported: "model" FLOPs are those of the plain formulation (the decoder's
first conv on the materialised broadcast grid), the same for every variant, so images/s and
model-FLOP utilisation compare variants fairly; "executed" FLOPs are what the variant really ran.

Variants (same parameters, same function; tests/test_monet.py checks they agree):
  reference     NCHW, broadcast grid materialised, glibc's default malloc behaviour
  malloc        + keep freed memory in the heap (lds.training.loop.keep_freed_memory)
  optimised     + channels-last convs, 1x1 convs as matmuls, fused broadcast conv
  fused         + the decoder's conv trunk as one chunked, ReLU-fused op (the default;
                  lds/models/fused_decoder.py)
  compiled      + torch.compile (only with --compile; compiling takes a minute or two)

The machine is shared: other processes' load moves absolute numbers by tens of percent, so
compare variants within one run (ratios), and look at the load average printed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import kernel_family, matmul_rate  # noqa: E402  (benchmarks/flops.py)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lds.models import MONetConfig, build_model  # noqa: E402
from lds.training.config import LDSConfig  # noqa: E402
from lds.training.loop import keep_freed_memory  # noqa: E402
from lds.training.objective import training_objective  # noqa: E402

LDS_ON = LDSConfig(enabled=True, weight=0.5)


def default_malloc() -> None:
    """glibc's defaults again (mmap for large blocks, trimming), for the reference variant."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-4, 65536)        # M_MMAP_MAX
    libc.mallopt(-1, 128 * 1024)   # M_TRIM_THRESHOLD


def make_step(model, forward, optimizer, images):
    def step():
        optimizer.zero_grad(set_to_none=True)
        out = forward({"image": images})
        training_objective(out, LDS_ON)[0].backward()       # MONet+: Table 1's LDS weight 0.5
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return out
    return step


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def run_variant(name: str, cfg: MONetConfig, images: torch.Tensor, steps: int, compiled: bool):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    forward = torch.compile(model) if compiled else model
    step = make_step(model, forward, optimizer, images)
    start = time.perf_counter()
    out = step()                                    # warm-up (and compilation)
    warmup = time.perf_counter() - start
    out.check(images.shape[0], cfg.num_slots, cfg.height, cfg.width)
    # FlopCounterMode needs eager dispatch; count on the uncompiled model (same ops).
    executed = count_flops(make_step(model, model, optimizer, images))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"name": name, "times": times, "executed_flops": executed, "warmup": warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--size", type=int, default=64, help="image side (the U-Net follows MONet's rule)")
    parser.add_argument("--slots", type=int, default=7, help="K")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--only", default="", help="comma-separated variant names to run")
    args = parser.parse_args()

    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    shape = dict(height=args.size, width=args.size, num_slots=args.slots)
    load_before = os.getloadavg()[0]
    mm_rates = [matmul_rate()]
    plain = MONetConfig(channels_last=False, fused_broadcast=False, **shape)
    fast = MONetConfig(channels_last=True, fused_broadcast=True, fused_decoder=False, **shape)
    fused = MONetConfig(channels_last=True, fused_broadcast=True, fused_decoder=True, **shape)
    variants = [("reference", plain, False, default_malloc), ("malloc", plain, False, keep_freed_memory),
                ("optimised", fast, False, keep_freed_memory), ("fused", fused, False, keep_freed_memory)]
    if args.compile:
        variants.append(("compiled", fused, True, keep_freed_memory))
    if args.only:
        keep = set(args.only.split(","))
        variants = [v for v in variants if v[0] in keep]

    # Model FLOPs: the plain formulation's count, one step at this batch size.
    torch.manual_seed(0)
    ref_model = build_model(plain).train()
    model_flops = count_flops(make_step(ref_model, ref_model, torch.optim.RMSprop(ref_model.parameters()), images))
    del ref_model

    results = []
    for name, cfg, compiled, malloc_setting in variants:
        malloc_setting()
        results.append(run_variant(name, cfg, images, args.steps, compiled))
    mm_rates.append(matmul_rate())
    mm = max(mm_rates)

    print(f"MONet training step, {args.size}x{args.size}, K={args.slots}, batch {args.batch}, fp32, "
          f"{torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"CPU kernels: {kernel_family()}")
    print(f"fp32 matmul rate (4096^2 torch.mm): {mm / 1e9:.0f} GFLOP/s "
          f"(before {mm_rates[0] / 1e9:.0f}, after {mm_rates[1] / 1e9:.0f})")
    print(f"model FLOPs per step: {model_flops / 1e9:.1f} GFLOP")
    print(f"{'variant':10s} {'s/step':>7s} {'(min)':>7s} {'img/s':>7s} {'exec GFLOP':>10s} "
          f"{'model util':>10s} {'exec util':>9s} {'speed-up':>8s}")
    base = None
    for r in results:
        median, best = statistics.median(r["times"]), min(r["times"])
        base = base or median
        print(f"{r['name']:10s} {median:7.2f} {best:7.2f} {args.batch / median:7.2f} "
              f"{r['executed_flops'] / 1e9:10.1f} {model_flops / median / mm:10.1%} "
              f"{r['executed_flops'] / median / mm:9.1%} {base / median:7.2f}x"
              + (f"   (first step incl. compile {r['warmup']:.0f} s)" if r["name"] == "compiled" else ""))
    load_after = os.getloadavg()[0]
    print(f"load average (1 min): {load_before:.2f} at start, {load_after:.2f} at end "
          f"on {os.cpu_count()} CPUs")
    if max(load_before, load_after) > (os.cpu_count() or 1) + 0.5:
        print("warning: the machine was busy with other work; absolute numbers are unreliable, "
              "compare the variants' ratios")


if __name__ == "__main__":
    main()
