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


def kernel_family() -> str:
    """The CPU kernel family this process runs: ATen's vector ISA (AVX2, AVX512, ...) as it
    dispatches (ATEN_CPU_CAPABILITY lowers it), oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA) and
    whether AMX is there for oneDNN to use. Benchmarks print it next to their figures: the
    same code runs at different shares of the matmul rate on different families."""
    import os

    aten = torch.backends.cpu.get_cpu_capability()
    capabilities = torch.cpu.get_capabilities()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "default"
    amx = bool(capabilities.get("amx_bf16") or capabilities.get("amx_tile"))
    cap_allows_amx = onednn.upper() in ("DEFAULT", "ALL") or "AMX" in onednn.upper()
    state = "no" if not amx else "yes" if cap_allows_amx else "present, capped off"
    return f"ATen {aten}, oneDNN ISA cap {onednn}, AMX {state}"
