"""Data-parallel training throughput: the same global batch on 1 process and on N (torchrun).

    .venv/bin/python benchmarks/bench_ddp.py                       # MONet 64x64, global batch 8
    .venv/bin/python benchmarks/bench_ddp.py --procs 1 2 --steps 8 --batch 8 --device cpu
    .venv/bin/python benchmarks/bench_ddp.py --device cuda --procs 1 2 --amp bf16   # GPU node

Each case runs ``python -m torch.distributed.run --nproc-per-node N`` on this script's worker
mode, which calls the real ``lds.training.train`` (DDP, gloo on CPU / NCCL on CUDA) on random
64x64 images with the paper's MONet architecture. Throughput is the loop's own ``images_per_s``
(global images per second) over the steps after the first ``--warmup`` (logged as one window).
On CPU the cores are split evenly between the processes (``threads = cores // N``, or
``--threads`` per process), so the comparison is "the same cores, one process or N": data
parallelism on one CPU only pays when a single process cannot use all its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class RandomImages:
    """Random 64x64 images (what the loop reads from a store, minus the disk)."""

    def __init__(self, count: int, size: int):
        import torch

        self.images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def worker(args) -> None:
    from lds import distributed
    from lds.training import load_train_config, train

    world = distributed.launched_world_size()
    threads = args.threads or (max(1, args.cores // world) if args.device == "cpu" else 0)
    cfg = load_train_config(args.model, overrides=[
        f"optim.batch_size={args.batch}", f"optim.steps={args.warmup + args.steps}",
        f"log.every={args.warmup}" if args.warmup else f"log.every={args.steps}",
        f"log.checkpoint_every={10 ** 9}", "log.tensorboard=false", f"threads={threads}",
        f"device={args.device}", f"amp={args.amp}", "lds.enabled=true"])
    train(cfg, args.run_dir, dataset=RandomImages(4 * args.batch, 64), progress=False)


def run_case(procs: int, args, tmp: Path) -> dict:
    run_dir = tmp / f"run_{procs}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={procs}", str(Path(__file__).resolve()), "--worker",
           "--run-dir", str(run_dir), "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--cores", str(args.cores), "--threads", str(args.threads),
           "--device", args.device, "--amp", args.amp]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{procs} processes failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"procs": procs, "images_per_s": rows[-1]["images_per_s"], "wall_s": wall,
            "per_rank_batch": args.batch // procs, "steps_timed": args.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default="")
    parser.add_argument("--model", default="monet")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (default: cores // processes on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from flops import kernel_family     # benchmarks/flops.py (this script's folder)
    print(f"CPU kernels: {kernel_family()}")   # figures differ by kernel family (AVX2, AVX-512, AMX)
    try:
        load = os.getloadavg()[0]
        if load > 0.5 * args.cores:
            print(f"warning: load average {load:.1f} on {args.cores} cores: other work shares "
                  f"the machine, absolute numbers are unreliable")
    except OSError:
        pass
    print(f"{args.model} 64x64 (paper architecture), global batch {args.batch}, device "
          f"{args.device}, amp {args.amp}, {args.cores} cores, threads/process "
          f"{args.threads or 'cores // processes'}, {args.steps} timed steps after "
          f"{args.warmup} warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(procs, args, Path(tmp)) for procs in args.procs]
    base = results[0]["images_per_s"]
    print(f"{'procs':>5} {'per-rank batch':>14} {'images/s':>9} {'speed-up':>8} {'wall s':>7}")
    for r in results:
        print(f"{r['procs']:>5} {r['per_rank_batch']:>14} {r['images_per_s']:>9.2f} "
              f"{r['images_per_s'] / base:>8.2f} {r['wall_s']:>7.1f}")


if __name__ == "__main__":
    main()
