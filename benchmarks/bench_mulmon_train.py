"""MulMON training throughput at the paper's settings, FLOP utilisation and peak memory.

    .venv/bin/python benchmarks/bench_mulmon_train.py [--steps 2] [--scenes 8] [--views 10]
        [--observed 3] [--size 64] [--no-lds] [--threads N] [--amp bf16 | --compare-amp]

Paper setting (the issue's "Speed" section): B = 8 scenes of 10 views, 3 observed + 7 query,
64x64, K = 7, D = 16, T = 5, LDS weight 1.0 at every iteration. One full training step (forward
with the 3 x 5 refinement iterations, backward, gradient-norm clip 5.0, Adam) is timed
``--steps`` times after one warm-up step. The FLOPs of one step are counted with
torch.utils.flop_counter.FlopCounterMode (convs and matmuls, forward, refinement gradients and
backward; always counted on an fp32 step, so bf16 steps are credited with the same model
FLOPs); the fp32 matmul rate is measured in the same run (benchmarks/flops.py: a 4096^3 torch.mm,
best of 4, before and after, the higher one used). Utilisation = achieved FLOP/s / matmul FLOP/s.

``--amp bf16``: the steps run under ``torch.autocast("cpu", bfloat16)`` as ``amp=bf16`` training
does (the loss cast to fp32 before backward); utilisation is then reported against both the fp32
matmul rate (the issue's definition) and a bf16 4096^3 matmul measured in the same run.
``--compare-amp``: fp32 and bf16 steps alternating in one process (``--steps`` pairs after one
warm-up pair), side by side with per-pair time ratios.

Peak memory: the process's resident-set high-water mark (VmHWM) is reset (clear_refs 5) before
the first step and read after the timed steps; minus the resident size before the first step it
is the peak working memory of a step. ``--checkpoint-iterations`` turns on the memory knob.

The machine is shared (2 cores, other helpers' jobs): absolute numbers move by tens of percent;
the load average is printed at the end.

``--ab-query-views N``: side by side in one process, alternating steps, the default query
decoding (lds.models.mulmon.QUERY_VIEWS_PER_DECODER_CALL views per decoder call) against N
query views per call (e.g. 100: all query views in one call, the earlier code); prints the
per-pair time ratios, which survive the shared machine's drifting load better than two runs.
``--ab-layout``: the same, NHWC activations (the default) against NCHW everywhere.
"""

from __future__ import annotations

import argparse
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

import contextlib  # noqa: E402

from lds.models import MulMONConfig, build_model  # noqa: E402
from lds.prior import lds_prior  # noqa: E402
from lds.training.config import LDSConfig  # noqa: E402
from lds.training.loop import keep_freed_memory  # noqa: E402
from lds.training.objective import training_objective  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def alternate(step, variants, steps: int) -> dict[str, list[float]]:
    """Time ``step`` under each (name, apply) variant in turn, ``steps`` rounds after one warm-up
    round; ``apply()`` switches the model to that variant before its step."""
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for repeat in range(steps + 1):                                    # the first round warms up
        for name, apply in variants:
            apply()
            start = time.perf_counter()
            step()
            if repeat:
                times[name].append(time.perf_counter() - start)
    return times


def print_ab(times: dict[str, list[float]], heading: str) -> None:
    print(heading)
    for name, seconds in times.items():
        print(f"  {name}: {', '.join(f'{t:.2f}' for t in seconds)} s")
    (name_a, a), (name_b, b) = times.items()
    ratios = [tb / ta for ta, tb in zip(a, b)]
    print(f"  time({name_b}) / time({name_a}) per pair: {', '.join(f'{r:.3f}' for r in ratios)}"
          f"  median {statistics.median(ratios):.3f}")
    print(f"  load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def ab_query_views(step, args) -> None:
    """Alternate steps: the default query decoding vs ``args.ab_query_views`` views per call."""
    from lds.models import mulmon

    default = mulmon.QUERY_VIEWS_PER_DECODER_CALL

    def use(views: int):
        return lambda: setattr(mulmon, "QUERY_VIEWS_PER_DECODER_CALL", views)

    times = alternate(step, ((f"default ({default} query views per decoder call)", use(default)),
                             (f"{args.ab_query_views} query views per call",
                              use(args.ab_query_views))), args.steps)
    mulmon.QUERY_VIEWS_PER_DECODER_CALL = default
    print_ab(times, f"A/B query decoding, {args.scenes} scenes x {args.views} views "
                    f"({args.observed} observed), threads {torch.get_num_threads()}")


def ab_layout(step, model, args) -> None:
    """Alternate steps: NHWC activations (the default: the decoder's fused channels-last trunk
    and the refinement convs on NHWC input) vs NCHW everywhere (plain layer-by-layer decoder).
    Issue 17: oneDNN's AVX2 weight-gradient kernel for NHWC 3x3 convs is the slow part of an
    AVX2 step; this measures whether NCHW wins the whole step back on a given kernel family."""
    def use(channels_last: bool):
        def apply():
            model.decoder.channels_last = channels_last
            model.refine.channels_last = channels_last
        return apply

    times = alternate(step, (("NHWC (default)", use(True)), ("NCHW", use(False))), args.steps)
    use(True)()
    print_ab(times, f"A/B activation layout, {args.scenes} scenes x {args.views} views "
                    f"({args.observed} observed), threads {torch.get_num_threads()}, "
                    f"CPU kernels {kernel_family()}")


def autocast(amp: str):
    """The forward's context for ``amp`` ("off" or "bf16"), as the training loop builds it."""
    if amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_flops(step) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step("off")                                     # model FLOPs: counted in fp32
    return counter.get_total_flops()


def compare_amp(step, args, title: str) -> None:
    """Alternate fp32 and bf16 steps; per-pair ratios survive the shared machine's drift."""
    rate32, rate16 = matmul_rate(), matmul_rate(dtype=torch.bfloat16)
    times: dict[str, list[float]] = {"off": [], "bf16": []}
    for repeat in range(args.steps + 1):                               # the first pair warms up
        for amp in ("off", "bf16"):
            start = time.perf_counter()
            step(amp)
            if repeat:
                times[amp].append(time.perf_counter() - start)
    flops = 0 if args.skip_flops else count_flops(step)
    rate32 = max(rate32, matmul_rate())
    rate16 = max(rate16, matmul_rate(dtype=torch.bfloat16))
    print(f"{title}, fp32 vs bf16 autocast, alternating")
    print(f"  matmul rate (4096^3 mm): fp32 {rate32 / 1e9:.1f} GFLOP/s, bf16 {rate16 / 1e9:.1f} "
          f"GFLOP/s (x{rate16 / rate32:.2f})")
    for amp, label in (("off", "fp32"), ("bf16", "bf16")):
        median = statistics.median(times[amp])
        line = (f"  {label}: step times (s) {', '.join(f'{t:.2f}' for t in times[amp])}  median "
                f"{median:.2f}   images/s {args.scenes * args.views / median:.2f}")
        if flops:
            achieved = flops / median
            line += f"   {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / rate32:.0f}% of fp32 mm"
            if amp == "bf16":
                line += f", {100 * achieved / rate16:.0f}% of bf16 mm"
        print(line)
    ratios = [b / a for a, b in zip(times["off"], times["bf16"])]
    print(f"  time(bf16) / time(fp32) per pair: {', '.join(f'{r:.3f}' for r in ratios)}  "
          f"median {statistics.median(ratios):.3f}")
    if flops:
        print(f"  FLOPs per step (fp32 count): {flops / 1e9:.1f} GFLOP")
    print(f"  load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--observed", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--no-lds", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-flops", action="store_true", help="skip the (slow) FLOP count")
    parser.add_argument("--checkpoint-iterations", action="store_true",
                        help="model.checkpoint_iterations=true (the memory knob)")
    parser.add_argument("--ab-query-views", type=int, default=0,
                        help="A/B: also time steps decoding N query views per call, alternating")
    parser.add_argument("--ab-layout", action="store_true",
                        help="A/B: NHWC (default) against NCHW activations, alternating steps")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off",
                        help="bf16: steps under CPU autocast to bfloat16 (as amp=bf16 training)")
    parser.add_argument("--compare-amp", action="store_true",
                        help="time fp32 and bf16 autocast steps alternating, side by side")
    args = parser.parse_args()
    print(f"CPU kernels: {kernel_family()}")   # figures differ by kernel family (AVX2, AVX-512, AMX)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)

    cfg = MulMONConfig(height=args.size, width=args.size, viewpoint="clevr-mv",
                       checkpoint_iterations=args.checkpoint_iterations)
    lds_cfg = LDSConfig(enabled=not args.no_lds, weight=1.0)
    model = build_model(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    s, v = args.scenes, args.views
    batch = {"image": torch.rand(s, v, 3, args.size, args.size),
             "viewpoint": torch.randn(s, v, cfg.viewpoint_size)}

    def step(amp: str = args.amp) -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast(amp):
            out = model(batch, num_observed=args.observed)
        loss = training_objective(out, lds_cfg)[0]
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return float(loss.detach())

    title = (f"MulMON training step: {s} scenes x {v} views ({args.observed} observed + "
             f"{v - args.observed} query), {args.size}x{args.size}, K={cfg.num_slots}, "
             f"D={cfg.latent_dim}, T={cfg.num_iterations}, LDS {'off' if args.no_lds else 'on (1.0)'}, "
             f"threads {torch.get_num_threads()}"
             f"{', checkpointed iterations' if args.checkpoint_iterations else ''}")
    if args.ab_query_views:
        ab_query_views(step, args)
        return
    if args.ab_layout:
        ab_layout(step, model, args)
        return
    if args.compare_amp:
        compare_amp(step, args, title)
        return
    rate_before = matmul_rate()
    rate16_before = matmul_rate(dtype=torch.bfloat16) if args.amp == "bf16" else 0.0
    # Freed memory stays in the heap (keep_freed_memory, as in training), so the high-water
    # mark above the resident size before the first step is the peak working memory of a step.
    rss_before = _status_kib("VmRSS")
    can_reset = reset_peak_rss()
    step()                                                             # warm-up
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_kib = _status_kib("VmHWM")
    flops = 0 if args.skip_flops else count_flops(step)
    rate_after = matmul_rate()
    rate16 = max(rate16_before, matmul_rate(dtype=torch.bfloat16)) if args.amp == "bf16" else 0.0
    # LDS overhead: the prior's forward + backward for every refinement iteration of a step,
    # timed on its own (a whole-step difference drowns in the shared machine's noise).
    z = torch.randn(s, cfg.num_slots, cfg.latent_dim, requires_grad=True)
    lds_calls = args.observed * cfg.num_iterations
    start = time.perf_counter()
    for _ in range(lds_calls):
        lds_prior(z).mean().backward()
    lds_seconds = time.perf_counter() - start
    rate = max(rate_before, rate_after)

    median = statistics.median(times)
    print(title + (", bf16 autocast" if args.amp == "bf16" else ""))
    print(f"  step times (s): {', '.join(f'{t:.2f}' for t in times)}  median {median:.2f}")
    print(f"  scenes/s: {s / median:.3f}   images/s (all views): {s * v / median:.2f}")
    print(f"  fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s (before {rate_before / 1e9:.1f}, "
          f"after {rate_after / 1e9:.1f})")
    if rate16:
        print(f"  bf16 matmul rate: {rate16 / 1e9:.1f} GFLOP/s")
    if flops:
        achieved = flops / median
        print(f"  FLOPs per step (fp32 count): {flops / 1e9:.1f} GFLOP   achieved "
              f"{achieved / 1e9:.1f} GFLOP/s   utilisation {100 * achieved / rate:.0f}% of the fp32 "
              f"matmul rate" + (f", {100 * achieved / rate16:.0f}% of the bf16 rate" if rate16 else ""))
    if can_reset:
        print(f"  peak memory per step: {(peak_kib - rss_before) / 2**20:.2f} GiB above the "
              f"{rss_before / 2**20:.2f} GiB resident before the first step "
              f"(process high-water {peak_kib / 2**20:.2f} GiB)")
    print(f"  LDS prior fwd+bwd, {lds_calls} iterations: {1e3 * lds_seconds:.2f} ms per step "
          f"({100 * lds_seconds / median:.3f}% of the step)")
    print(f"  load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
