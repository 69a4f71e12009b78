"""What the training benchmarks share: the fp32 matrix-multiply rate every utilisation figure is
measured against (one definition, so the models' percentages compare)."""

from __future__ import annotations

import time

import torch


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str = "cpu", n: int = 4096, reps: int = 4) -> float:
    """Best-of-``reps`` FLOP/s of one n x n fp32 matmul on ``device`` (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
