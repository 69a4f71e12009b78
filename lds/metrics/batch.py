"""All per-image metrics of one batch, computed once from a model's ModelOutput."""

from __future__ import annotations

import torch

from common.errors import ConfigError
from lds.contract import ModelOutput
from lds.metrics.config import MetricsConfig
from lds.metrics.reconstruction import mse, rmse_mulmon
from lds.metrics.segmentation import (argmax_labels, ari_from_contingency, contingency_table,
                                      miou_greedy_from_contingency,
                                      miou_hungarian_from_contingency)
from lds.metrics.slots import (duplicate_pairs_without_gt, duplicated_gt_components,
                               slot_binary_masks, slot_similarity)

# Metric names, in table order, and whether they need ground truth.
METRICS_WITHOUT_GT = ("mse", "rmse", "sim", "active_slots", "dup_pairs", "dup_nogt")
METRICS_WITH_GT = ("miou", "miou_greedy", "ari", "fg_ari", "dup_components", "dup_gt")
HIGHER_IS_BETTER = {"mse": False, "rmse": False, "sim": False, "dup_pairs": False,
                    "dup_nogt": False, "miou": True, "miou_greedy": True, "ari": True,
                    "fg_ari": True, "dup_components": False, "dup_gt": False}


def segmentation_masks(output: ModelOutput, source: str = "masks") -> torch.Tensor:
    """The (B, K, 1, H, W) masks whose per-pixel argmax is the predicted segmentation."""
    if source == "masks":
        return output.masks
    if source.startswith("extras."):
        key = source.removeprefix("extras.")
        if key in output.extras and output.extras[key].shape == output.masks.shape:
            return output.extras[key]
        raise ConfigError(f"segmentation_masks={source!r}: this model has no extras[{key!r}] "
                          f"of shape {tuple(output.masks.shape)} (extras: {sorted(output.extras)})")
    raise ConfigError(f"segmentation_masks must be 'masks' or 'extras.KEY', got {source!r}")


@torch.no_grad()
def batch_metrics(output: ModelOutput, image: torch.Tensor, label_map: torch.Tensor | None = None,
                  config: MetricsConfig | None = None) -> dict[str, torch.Tensor]:
    """Per-image metric values (each a (B,) float64 CPU tensor) for one evaluated batch.

    ``image`` (B, 3, H, W) in [0, 1]; ``label_map`` (B, H, W) visible GT labels or None (then
    only the metrics that need no ground truth are computed). ``dup_gt`` / ``dup_nogt`` are 0/1
    per image, so their mean is the fraction of images with a duplicate.
    """
    config = config or MetricsConfig()
    image = image.detach().float().cpu()
    reconstruction = output.reconstruction.detach().float().cpu()
    masks = segmentation_masks(output, config.segmentation_masks).detach().float().cpu()
    mask_logits = output.mask_logits.detach().float().cpu()
    posterior_mean = output.posterior_mean.detach().cpu()

    slot_masks = slot_binary_masks(mask_logits, masks, config.duplicate_masks,
                                   config.alone_mask_threshold)
    num_pixels = slot_masks.shape[-1]
    dup_pairs = duplicate_pairs_without_gt(slot_masks, posterior_mean, config.active_area,
                                           config.duplicate_mask_iou, config.duplicate_latent_cos,
                                           config.similarity_eps)
    values = {
        "mse": mse(image, reconstruction),
        "rmse": rmse_mulmon(image, reconstruction),
        "sim": slot_similarity(posterior_mean, config.similarity_eps),
        "active_slots": (slot_masks.sum(-1) >= config.active_area * num_pixels).sum(-1),
        "dup_pairs": dup_pairs,
        "dup_nogt": dup_pairs > 0,
    }
    if label_map is not None:
        gt = label_map.detach().cpu().long()
        dup_components = duplicated_gt_components(gt, slot_masks, config.claim_iou)
        # one contingency table (GT label x argmax slot pixel counts) serves every segmentation
        # metric; FG-ARI is the same table without the GT background row
        table = contingency_table(gt, argmax_labels(masks), masks.shape[1])
        values.update({
            "miou": miou_hungarian_from_contingency(table),
            "miou_greedy": miou_greedy_from_contingency(table, config.greedy_mask_threshold,
                                                        config.greedy_min_iou),
            "ari": ari_from_contingency(table),
            "fg_ari": ari_from_contingency(table[:, 1:]),
            "dup_components": dup_components,
            "dup_gt": dup_components > 0,
        })
    return {name: value.to(torch.float64) for name, value in values.items()}
