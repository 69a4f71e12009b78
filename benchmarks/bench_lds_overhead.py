"""Cost of the LDS prior per training step, relative to a MONet training step.

Times (a) the prior's forward + backward alone on slot latents of the paper's shape
(batch 40, K=7, D=16), and (b) a full MONet step (forward, backward, RMSprop update) at 64x64,
K=7, batch 40, with LDS off and on. The overhead is (a) / (b, LDS off); the on/off difference of
(b) is printed too but is within timing noise on a shared CPU.

    .venv/bin/python benchmarks/bench_lds_overhead.py [--batch 40] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from flops import kernel_family  # benchmarks/flops.py (this script's folder)
from lds.prior import lds_prior


def time_prior(batch: int, slots: int, dim: int, repeats: int) -> float:
    z = torch.randn(batch, slots, dim, requires_grad=True)

    def step():
        value = -0.5 * lds_prior(z, sigma=0.1).mean()
        value.backward()
        z.grad = None

    for _ in range(20):
        step()
    # median of 10 blocks: the machine is shared, a single block can be hit by other work
    blocks = []
    for _ in range(10):
        start = time.perf_counter()
        for _ in range(repeats // 10):
            step()
        blocks.append((time.perf_counter() - start) / (repeats // 10))
    return sorted(blocks)[len(blocks) // 2]


def time_monet_step(batch: int, steps: int, lds_weight: float) -> float:
    from lds.models.monet import MONet, MONetConfig
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    torch.manual_seed(0)
    model = MONet(MONetConfig())
    lds = LDSConfig(enabled=lds_weight > 0, weight=lds_weight)
    optimiser = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    image = torch.rand(batch, 3, 64, 64)

    def step():
        optimiser.zero_grad(set_to_none=True)
        out = model({"image": image})
        training_objective(out, lds)[0].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--steps", type=int, default=3, help="timed MONet steps per setting")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU kernels: {kernel_family()}")   # figures differ by kernel family (AVX2, AVX-512, AMX)
    torch.set_num_threads(args.threads)

    # The prior's tensors are tiny; on a busy shared CPU a 2-thread parallel region waits for a
    # core, so the 1-thread time is the honest cost of the op and the N-thread time an upper bound.
    torch.set_num_threads(1)
    prior_1 = time_prior(args.batch, 7, 16, repeats=2000)
    torch.set_num_threads(args.threads)
    prior_s = time_prior(args.batch, 7, 16, repeats=2000)
    print(f"LDS prior fwd+bwd (B={args.batch}, K=7, D=16), 1 thread:  {prior_1 * 1e6:8.1f} us")
    print(f"LDS prior fwd+bwd (B={args.batch}, K=7, D=16), {args.threads} threads: {prior_s * 1e6:8.1f} us")
    try:
        off = time_monet_step(args.batch, args.steps, 0.0)
        on = time_monet_step(args.batch, args.steps, 0.5)
    except ImportError:
        print("MONet not available; no step time to compare with")
        return
    print(f"MONet step, LDS off (64x64, K=7, B={args.batch}): {off * 1e3:8.1f} ms")
    print(f"MONet step, LDS on  (weight 0.5):            {on * 1e3:8.1f} ms")
    print(f"LDS overhead = prior (1 thread) / step(off):  {100 * prior_1 / off:8.4f} %  (target < 1%)")
    print(f"LDS overhead = prior ({args.threads} threads) / step(off): {100 * prior_s / off:8.4f} %")
    print(f"step(on) - step(off) (timing noise included): {100 * (on - off) / off:+8.2f} %")


if __name__ == "__main__":
    main()
