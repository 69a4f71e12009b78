"""The loop every evaluation shares (metrics, the inference gap): the batches of the first N
items that this process handles, and the gathering of every process's results in order.

Under torchrun whole batches go round-robin to the ranks (lds.distributed.shard_batches); each
batch keeps its number, so results gathered in batch order equal a one-process run's whatever
the world size. ``shard=False`` keeps every batch in this process (validation inside training,
on rank 0 alone).
"""

from __future__ import annotations

from typing import Any, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset, Subset

from lds import distributed


class ShardedBatches:
    def __init__(self, dataset: Dataset, count: int, batch_size: int, shard: bool = True):
        self.shard = shard
        self.shards = (distributed.shard_batches(count, batch_size) if shard else
                       [(j, list(range(lo, min(lo + batch_size, count))))
                        for j, lo in enumerate(range(0, count, batch_size))])
        mine = [i for _, indices in self.shards for i in indices]
        self.num_items = len(mine)
        self._loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False,
                                  num_workers=0)

    def __iter__(self) -> Iterator[tuple[int, list[int], dict]]:
        """(batch number, the items' dataset indices, the collated batch)."""
        for (number, indices), batch in zip(self.shards, self._loader):
            yield number, indices, batch

    def gather(self, per_batch: list[tuple[int, list[Any]]]) -> list[Any]:
        """Every process's (batch number, results) flattened in batch order."""
        parts = (distributed.gather_batches(per_batch) if self.shard
                 else [part for _, part in sorted(per_batch, key=lambda pair: pair[0])])
        return [result for part in parts for result in part]

    def any_rank(self, flag: bool) -> bool:
        return any(distributed.all_gather_objects(bool(flag))) if self.shard else bool(flag)

    def progress(self, description: str, enabled: bool) -> Progress:
        """A progress bar over this process's items (rank 0's only under torchrun)."""
        return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                        TextColumn("images"), TimeRemainingColumn(),
                        disable=not enabled or (self.shard and not distributed.is_main()),
                        transient=True)
