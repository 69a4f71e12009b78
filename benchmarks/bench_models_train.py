"""IODINE, GENESIS (and MONet) training throughput at the paper settings, FLOP utilisation, peak memory.

    .venv/bin/python benchmarks/bench_models_train.py [--models iodine genesis] [--steps 1]
                                                      [--batch N] [--size 64] [--device cpu]
                                                      [--amp bf16 | --compare-amp]

Each case runs in its own child process (so its peak memory is its own): build the model at the
paper settings (64x64, K=7; IODINE T=5, D=16, batch 8; GENESIS batch 32, GECO; MONet batch 40,
only when named: ``--models monet``), one warm-up
step, one step under torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls, forward,
backward and IODINE's input-gradient passes), then ``--steps`` timed training steps (forward,
backward, gradient-norm clip 5.0, Adam). The fp32 matrix-multiply rate (4096^3 torch.mm, best of
4) is measured in the parent before and after the cases and in every case's process before and
after its steps; the highest is the reference, and utilisation = FLOPs per step / fastest step
time / matmul rate (both "best of" figures: other jobs on a shared machine only slow things down).

``--amp bf16``: the timed steps run under ``torch.autocast(device, bfloat16)`` as ``amp=bf16``
training does (the loss cast to fp32 before backward). The FLOPs are still counted on an fp32
step (the same model FLOPs), and utilisation is reported against both the fp32 matmul rate (the
issue's definition) and a bf16 4096^3 matmul measured in the same processes. ``--compare-amp``:
every case times fp32 and bf16 steps alternating in its process (``--steps`` pairs after one
warm-up pair), with the bf16/fp32 time ratio per case. Peak memory is that of the first mode's
warm-up step (fp32 under --compare-amp).

Cases: <model> with LDS, <model> without (control), and IODINE with gradient checkpointing.
LDS overhead is reported twice: the step-time difference (noisy on a shared machine) and the
LDS prior's own forward+backward at the model's shape, timed directly (T times for IODINE).

Peak memory per step: on CUDA torch.cuda.max_memory_allocated; on the CPU the child's peak RSS
during its first step (VmHWM, reset just before) minus its RSS before it (model, data and
libraries excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import kernel_family, matmul_rate, sync  # noqa: E402  (benchmarks/flops.py)

import torch  # noqa: E402

PAPER = {"iodine": {"batch": 8, "config": {}},
         "genesis": {"batch": 32, "config": {}},
         "monet": {"batch": 40, "config": {}}}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def autocast(device: str, amp: str):
    """The forward's context for ``amp`` ("off" or "bf16"), as the training loop builds it."""
    if amp == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_case(model_name: str, lds: bool, grad_checkpoint: bool, batch: int, size: int,
             steps: int, device: str, threads: int, amps: list[str]) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from lds.models import MODEL_CONFIGS, build_model
    from lds.prior import lds_prior
    from lds.training.config import LDSConfig
    from lds.training.loop import keep_freed_memory
    from lds.training.objective import training_objective

    keep_freed_memory()                       # as the training loop runs
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    changes = dict(height=size, width=size)
    lds_cfg = LDSConfig(enabled=lds, weight=1.0)          # Tables 2-3: weight 1 per iteration
    if grad_checkpoint:
        changes["grad_checkpoint"] = True
    cfg = MODEL_CONFIGS[model_name](**changes)
    model = build_model(model_name, cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, size, size, device=device)

    def step(amp: str):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = model({"image": images})
        training_objective(out, lds_cfg)[0].float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return out

    # Peak memory of one step: the first one (the heap grows to what a step needs, and the
    # training loop's malloc settings keep it for later steps), before anything else runs.
    rss_before = rss_mib()
    reset_peak_rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    out = step(amps[0])                                       # warm-up
    if device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = peak_rss_mib() - rss_before
    # The matmul rate is sampled after the peak: its freed 4096^2 matrices stay in the heap (the
    # training loop's malloc settings) and would hide up to ~300 MiB of a step's peak.
    rate_start = matmul_rate(device)          # sampled in every child too: the machine is shared
    with_bf16 = "bf16" in amps
    rate16_start = matmul_rate(device, dtype=torch.bfloat16) if with_bf16 else 0.0
    latent_shape = tuple(out.slot_latents.shape)
    for amp in amps[1:]:
        step(amp)                                             # the other mode's warm-up
    with FlopCounterMode(display=False) as counter:
        step("off")                                           # model FLOPs: counted in fp32
    flops = counter.get_total_flops()
    times: dict[str, list[float]] = {amp: [] for amp in amps}
    for _ in range(steps):                                    # alternating under --compare-amp
        for amp in amps:
            sync(device)
            start = time.perf_counter()
            step(amp)
            sync(device)
            times[amp].append(time.perf_counter() - start)

    # The LDS prior alone (forward + backward) at this shape, as often as the model applies it.
    # (IODINE decodes T + 1 times, the first at lambda_0 with loss weight 0, as DeepMind's code.)
    applications = getattr(cfg, "num_iterations", 0) + 1 if cfg.name == "iodine" else 1
    z = torch.randn(latent_shape, device=device, requires_grad=True)
    prior_times = []
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(applications):
            lds_prior(z).mean().backward()
        sync(device)
        prior_times.append(time.perf_counter() - start)
    return {"model": model_name, "lds": lds, "grad_checkpoint": grad_checkpoint, "batch": batch,
            "step_s": {amp: min(t) for amp, t in times.items()}, "step_times": times,
            "flops": flops, "peak_mib": peak_mib, "peak_amp": amps[0],
            "lds_prior_s": min(prior_times), "threads": torch.get_num_threads(),
            "matmul_rate": max(rate_start, matmul_rate(device)),
            "matmul_rate_bf16": (max(rate16_start, matmul_rate(device, dtype=torch.bfloat16))
                                 if with_bf16 else 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["iodine", "genesis"], choices=sorted(PAPER))
    parser.add_argument("--steps", type=int, default=1, help="timed steps per case (after warm-up)")
    parser.add_argument("--batch", type=int, default=None, help="override the paper batch size")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default). 1 by default: on a machine shared "
                             "with other jobs, OpenMP barriers across threads make 2-thread timings "
                             "swing by 3x; the utilisation is against the matmul rate at the same "
                             "thread count")
    parser.add_argument("--no-checkpoint-case", action="store_true")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off",
                        help="bf16: timed steps under autocast to bfloat16 (as amp=bf16 training)")
    parser.add_argument("--compare-amp", action="store_true",
                        help="time fp32 and bf16 autocast steps alternating, side by side")
    parser.add_argument("--case", help=argparse.SUPPRESS)       # child mode: JSON arguments
    args = parser.parse_args()
    print(f"CPU kernels: {kernel_family()}")   # figures differ by kernel family (AVX2, AVX-512, AMX)

    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    amps = ["off", "bf16"] if args.compare_amp else [args.amp]
    with_bf16 = "bf16" in amps
    rate_before = matmul_rate(args.device)
    rate16_before = matmul_rate(args.device, dtype=torch.bfloat16) if with_bf16 else 0.0
    results = []
    for name in args.models:
        batch = args.batch or PAPER[name]["batch"]
        cases = [(True, False), (False, False)]
        if name == "iodine" and not args.no_checkpoint_case:
            cases.append((True, True))
        for lds, ckpt in cases:
            spec = dict(model_name=name, lds=lds, grad_checkpoint=ckpt, batch=batch,
                        size=args.size, steps=args.steps, device=args.device,
                        threads=args.threads, amps=amps)
            proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"case {spec} failed")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rate = max([rate_before, matmul_rate(args.device)] + [r["matmul_rate"] for r in results])
    rate16 = (max([rate16_before, matmul_rate(args.device, dtype=torch.bfloat16)]
                  + [r["matmul_rate_bf16"] for r in results]) if with_bf16 else 0.0)

    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.size}x{args.size}, timed steps per case: {args.steps}"
          f"{' (fp32 and bf16 alternating)' if args.compare_amp else ''}")
    print(f"fp32 matmul rate (4096^3 mm): {rate / 1e9:.1f} GFLOP/s" +
          (f"; bf16: {rate16 / 1e9:.1f} GFLOP/s" if with_bf16 else ""))
    print("util: achieved / fp32 mm rate (FLOPs counted in fp32); util16: achieved / bf16 mm rate")
    header = (f"{'case':<31}{'batch':>6}{'s/step':>9}{'img/s':>8}{'GFLOP/step':>12}"
              f"{'GFLOP/s':>9}{'util':>7}{'util16':>8}{'peak MiB':>10}")
    print(header)
    by_key = {}
    for r in results:
        label = f"{r['model']} {'LDS' if r['lds'] else 'control'}" + \
            (" +grad_checkpoint" if r["grad_checkpoint"] else "")
        for amp in amps:
            step_s = r["step_s"][amp]
            achieved = r["flops"] / step_s
            util16 = f"{achieved / rate16:>8.0%}" if amp == "bf16" else f"{'-':>8}"
            peak = f"{r['peak_mib']:>10.0f}" if amp == r["peak_amp"] else f"{'-':>10}"
            name = label + (" bf16" if amp == "bf16" else "")
            print(f"{name:<31}{r['batch']:>6}{step_s:>9.2f}{r['batch'] / step_s:>8.2f}"
                  f"{r['flops'] / 1e9:>12.1f}{achieved / 1e9:>9.1f}{achieved / rate:>7.0%}"
                  f"{util16}{peak}")
        by_key[(r["model"], r["lds"], r["grad_checkpoint"])] = r
    if args.compare_amp:
        for r in results:
            label = f"{r['model']} {'LDS' if r['lds'] else 'control'}" + \
                (" +grad_checkpoint" if r["grad_checkpoint"] else "")
            pairs = [b / a for a, b in zip(r["step_times"]["off"], r["step_times"]["bf16"])]
            print(f"{label}: time(bf16) / time(fp32) per pair: "
                  f"{', '.join(f'{x:.3f}' for x in pairs)}; best-of: "
                  f"{r['step_s']['bf16'] / r['step_s']['off']:.3f}")
    for name in args.models:
        on, off = by_key.get((name, True, False)), by_key.get((name, False, False))
        if on and off:
            first = amps[0]
            diff = on["step_s"][first] - off["step_s"][first]
            print(f"{name}: LDS overhead per step ({'fp32' if first == 'off' else 'bf16'}): "
                  f"step-time difference {diff * 1e3:+.1f} ms "
                  f"({diff / off['step_s'][first]:+.1%}, noisy); the prior's own fwd+bwd "
                  f"{on['lds_prior_s'] * 1e3:.2f} ms "
                  f"({on['lds_prior_s'] / on['step_s'][first]:.2%} of a step)")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machine)")


if __name__ == "__main__":
    main()
