"""Evaluation throughput of the metric code (images/s) on 64x64 images, K=7.

Model outputs are fake (random mask logits, latents and appearance) so only the metrics are
timed, not a network. One line per metric, then the whole batch_metrics call.

    .venv/bin/python benchmarks/bench_eval.py [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from lds.contract import ModelOutput
from lds.evaluation.metrics import (MetricsConfig, adjusted_rand_index, batch_metrics,
                         duplicate_pairs_without_gt, duplicated_gt_components, miou_greedy,
                         miou_hungarian, mse, rmse_mulmon, slot_binary_masks, slot_similarity)


def fake_batch(batch: int, slots: int = 7, size: int = 64, latent: int = 16, objects: int = 4):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, slots, 1, size, size, generator=generator) * 3
    masks = logits.softmax(dim=1)
    appearance = torch.rand(batch, slots, 3, size, size, generator=generator)
    latents = torch.randn(batch, slots, latent, generator=generator)
    zero = torch.zeros(())
    output = ModelOutput(zero, {"nll": zero}, latents, latents, latents, logits, masks, appearance,
                         (masks * appearance).sum(1))
    image = torch.rand(batch, 3, size, size, generator=generator)
    # blocky GT label map: background plus `objects` rectangles
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    for o in range(1, objects + 1):
        r, c = 8 + 12 * (o - 1), 4 + 13 * (o - 1)
        labels[:, r:r + 10, c:c + 12] = o
    return output, image, labels


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output, image, labels = fake_batch(args.batch)
    cfg = MetricsConfig()
    alone = slot_binary_masks(output.mask_logits, output.masks)
    cases = {
        "mse": lambda: mse(image, output.reconstruction),
        "rmse (MulMON)": lambda: rmse_mulmon(image, output.reconstruction),
        "miou (Hungarian)": lambda: miou_hungarian(labels, output.masks),
        "miou (greedy)": lambda: miou_greedy(labels, output.masks),
        "ari": lambda: adjusted_rand_index(labels, output.masks),
        "fg_ari": lambda: adjusted_rand_index(labels, output.masks, ignore_background=True),
        "sim": lambda: slot_similarity(output.posterior_mean),
        "alone masks": lambda: slot_binary_masks(output.mask_logits, output.masks),
        "duplicates (GT)": lambda: duplicated_gt_components(labels, alone),
        "duplicates (no GT)": lambda: duplicate_pairs_without_gt(alone, output.posterior_mean),
        "TOTAL batch_metrics": lambda: batch_metrics(output, image, labels, cfg),
    }
    print(f"batch {args.batch} images of 64x64, K=7, torch threads {torch.get_num_threads()}")
    for name, fn in cases.items():
        seconds = timed(fn, args.repeats)
        print(f"{name:22s} {seconds * 1e3:8.2f} ms/batch  {args.batch / seconds:10.0f} images/s")


if __name__ == "__main__":
    main()
