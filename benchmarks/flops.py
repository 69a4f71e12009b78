"""What the training benchmarks share: the matrix-multiply rate every utilisation figure is
measured against (one definition, so the models' percentages compare): a 4096^3 fp32 torch.mm,
and for mixed-precision runs also the same product in bf16."""

from __future__ import annotations

import time

import torch


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str = "cpu", n: int = 4096, reps: int = 4,
                dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``reps`` FLOP/s of one n x n ``dtype`` matmul on ``device`` (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
