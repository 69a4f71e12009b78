"""Data-parallel helpers on top of torch.distributed (launched by ``torchrun``; nothing home-made).

    torchrun --nproc-per-node 2 cli.py train monet --data STORE --out runs/x

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`session`
reads them, picks the backend (NCCL when the run's device is a CUDA GPU, gloo otherwise), binds
each rank to GPU ``LOCAL_RANK`` and tears the process group down when it created it. Without
those variables (a plain ``ldsrig train``), or with WORLD_SIZE=1, every helper here is a no-op
for a single process, so the training and evaluation code has one path.

What the rest of the code uses:

- :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`is_distributed`;
- :func:`on_main`: run a function (a checkpoint, a directory check) on rank 0 only; its result or
  its :class:`UserError` reaches every rank, so no rank waits forever on one that failed;
- :func:`any_rank` (the NaN guard's "stop everyone"), :func:`mean_across_ranks` (logged values),
  :func:`broadcast_object`, :func:`barrier`;
- :func:`shard_batches` / :func:`gather_batches`: evaluation splits the batch sequence
  round-robin over ranks (whole batches, so every image sees exactly the batch it would see in
  one process) and gathers the per-batch results back into the single-process order.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from common.errors import UserError

T = TypeVar("T")


class DistributedError(UserError):
    """A distributed launch that cannot work (bad environment, batch not divisible, ...)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str | None            # None: a single process, no process group


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun (or SLURM through torchrun) set it; 1 when not launched that way."""
    return _env_int("WORLD_SIZE", 1)


def launched_rank() -> int:
    """RANK as torchrun set it (0 when not launched that way); valid outside a process group,
    e.g. to print a command's summary once after the group is gone."""
    return _env_int("RANK", 0)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def choose_backend(device: str | torch.device) -> str:
    """NCCL for CUDA devices (when torch was built with it), gloo for CPUs."""
    if torch.device(device).type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def local_device(device: str | torch.device) -> torch.device:
    """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun
    (one GPU per process); CPU stays CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DistributedError(f"device {device} requested but no CUDA GPU is available")
    if launched_world_size() > 1 or is_distributed():
        index = _env_int("LOCAL_RANK", 0)
        if index >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {index} but only {torch.cuda.device_count()} GPUs "
                                   f"are visible on this node; lower --nproc-per-node")
        return torch.device("cuda", index)
    return device


@contextlib.contextmanager
def session(device: str | torch.device = "cpu", timeout_s: float = 1800.0) -> Iterator[DistInfo]:
    """Join the process group torchrun described (if any) for the duration of the block.

    Reuses a group that is already initialised (tests, or a caller that set one up) and then
    leaves it alone; otherwise creates it from the environment (``env://``) and destroys it on
    exit. A single process (no WORLD_SIZE, or WORLD_SIZE=1) gets ``DistInfo(0, 1, 0, None)``.
    """
    if dist.is_available() and dist.is_initialized():
        yield DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0),
                       dist.get_backend())
        return
    size = launched_world_size()
    if size <= 1:
        yield DistInfo(0, 1, 0, None)
        return
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise DistributedError(f"WORLD_SIZE={size} but {name} is not set; launch with torchrun")
    backend = choose_backend(device)
    local = local_device(device)
    if local.type == "cuda":
        torch.cuda.set_device(local)
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://",
                              "timeout": datetime.timedelta(seconds=timeout_s)}
    if backend == "nccl":
        kwargs["device_id"] = local        # binds the communicator to this rank's GPU
    dist.init_process_group(**kwargs)
    try:
        yield DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), backend)
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """NCCL only reduces CUDA tensors; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (any picklable object)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a non-finite loss)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (every rank passes the same keys, same order)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = list(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                          device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= world_size()
    return dict(zip(keys, tensor.cpu().tolist()))


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank.

    A :class:`UserError` raised by ``fn`` on rank 0 is raised on every rank (same class when it
    can be rebuilt from its message, else DistributedError), so the other ranks stop with it
    instead of waiting in the next collective.
    """
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except UserError as exc:
            outcome = ("error", (type(exc), str(exc)))
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        cls, message = outcome[1]
        try:
            error = cls(message)
        except Exception:                  # an error class with another constructor
            error = DistributedError(message)
        raise error
    return outcome[1]


def split_global_batch(global_batch: int) -> int:
    """The per-rank batch for a global batch (the paper's batch sizes are global batches)."""
    size = world_size()
    if global_batch % size:
        raise DistributedError(
            f"optim.batch_size={global_batch} (the global batch) is not divisible by the "
            f"{size} processes; choose a batch size that is a multiple of the world size")
    return global_batch // size


def shard_batches(num_items: int, batch_size: int) -> list[tuple[int, list[int]]]:
    """This rank's share of the batches ``0..ceil(num_items / batch_size) - 1`` of items in
    order: batch j goes to rank j mod world size, as (j, item indices)."""
    batches = [(j, list(range(start, min(start + batch_size, num_items))))
               for j, start in enumerate(range(0, num_items, batch_size))]
    return batches[rank()::world_size()]


def gather_batches(per_batch: list[tuple[int, T]]) -> list[T]:
    """Every rank's (batch number, result) pairs, on every rank, in batch-number order."""
    merged = [pair for part in all_gather_objects(per_batch) for pair in part]
    merged.sort(key=lambda pair: pair[0])
    return [result for _, result in merged]


__all__ = ["DistInfo", "DistributedError", "session", "is_distributed", "rank", "world_size",
           "is_main", "choose_backend", "local_device", "launched_world_size", "launched_rank", "barrier",
           "broadcast_object", "all_gather_objects", "any_rank", "mean_across_ranks", "on_main",
           "split_global_batch", "shard_batches", "gather_batches"]
