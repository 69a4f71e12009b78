"""All per-image metrics of one batch, computed once from a model's ModelOutput."""

from __future__ import annotations

import torch

from common.errors import ConfigError
from lds.contract import ModelOutput
from lds.evaluation.metrics.config import MetricsConfig
from lds.evaluation.metrics.reconstruction import mse, rmse_mulmon
from lds.evaluation.metrics.segmentation import (argmax_labels, ari_from_contingency, contingency_table,
                                      foreground_in_background_slot,
                                      miou_greedy_from_contingency,
                                      miou_hungarian_from_contingency, one_hot_labels)
from lds.evaluation.metrics.slots import (duplicate_pairs_without_gt, gt_component_claims,
                               slot_binary_masks, slot_similarity)
from lds.evaluation.metrics.table import DECODED_LABEL, DECODED_PREFIX, METRICS


def segmentation_masks(output: ModelOutput, source: str = "model") -> tuple[torch.Tensor, str]:
    """The (B, K, 1, H, W) masks whose per-pixel argmax is the predicted segmentation, and
    their label ("attention masks", "decoded masks", ...)."""
    if source == "model":
        return output.segmentation_masks, output.segmentation_source
    if source == "masks":
        return output.masks, DECODED_LABEL
    if source.startswith("extras."):
        key = source.removeprefix("extras.")
        if key in output.extras and output.extras[key].shape == output.masks.shape:
            return output.extras[key], key.replace("_", " ")
        raise ConfigError(f"segmentation_masks={source!r}: this model has no extras[{key!r}] "
                          f"of shape {tuple(output.masks.shape)} (extras: {sorted(output.extras)})")
    raise ConfigError(f"segmentation_masks must be 'model', 'masks' or 'extras.KEY', got {source!r}")


def _segmentation_values(masks: torch.Tensor, own_masks: bool, mask_logits: torch.Tensor,
                         posterior_mean: torch.Tensor, gt: torch.Tensor | None,
                         config: MetricsConfig) -> dict[str, torch.Tensor]:
    """The metrics that depend on which masks segment (lds.evaluation.metrics.table.SEGMENTATION_METRICS).

    ``own_masks``: the segmenting masks are decoded ones whose components each have a mask logit
    of their own, so ``duplicate_masks=auto`` renders each alone; otherwise (MONet's attention,
    GENESIS's stick-breaking) it counts on the argmax segments."""
    kind = config.duplicate_masks
    if kind == "auto":
        kind = "alone" if own_masks else "argmax"
    # one argmax serves the segment areas, the contingency table and, for the argmax rule, the
    # duplicate counts' slot masks
    labels = argmax_labels(masks)
    flat_labels = labels.flatten(1)
    slot_masks = (one_hot_labels(labels, masks.shape[1]) if kind == "argmax" else
                  slot_binary_masks(mask_logits, masks, kind, config.alone_mask_threshold))
    num_pixels = slot_masks.shape[-1]
    dup_pairs = duplicate_pairs_without_gt(slot_masks, posterior_mean, config.active_area,
                                           config.duplicate_mask_iou, config.duplicate_latent_cos,
                                           config.similarity_eps)
    segment_area = torch.zeros(masks.shape[:2], dtype=torch.float32).scatter_add_(   # (B, K)
        1, flat_labels, torch.ones(flat_labels.shape, dtype=torch.float32))
    values = {
        "active_slots": (slot_masks.sum(-1) >= config.active_area * num_pixels).sum(-1),
        "largest_segment": segment_area.max(-1).values / flat_labels.shape[1],
        "dup_pairs": dup_pairs,
        "dup_nogt": dup_pairs > 0,
    }
    if gt is not None:
        claims, present = gt_component_claims(
            gt, slot_masks, config.claim_iou, rule="iou" if kind == "alone" else "purity",
            claim_purity=config.claim_purity, active_area=config.active_area)
        dup_components = ((claims >= 2) & present).sum(dim=-1)
        # one contingency table (GT label x argmax slot pixel counts) serves every segmentation
        # metric; FG-ARI is the same table without the GT background row
        table = contingency_table(gt, labels, masks.shape[1])
        values.update({
            "miou": miou_hungarian_from_contingency(table),
            "miou_greedy": miou_greedy_from_contingency(table, config.greedy_mask_threshold,
                                                        config.greedy_min_iou),
            "ari": ari_from_contingency(table),
            "fg_ari": ari_from_contingency(table[:, 1:]),
            "fg_in_bg_slot": foreground_in_background_slot(table),
            "dup_components": dup_components,
            "dup_gt": dup_components > 0,
            # the supplement's Figure 5: the table (GT background) claimed by two or more slots
            "dup_bg": claims[:, 0] >= 2,
        })
    return values


@torch.no_grad()
def batch_metrics(output: ModelOutput, image: torch.Tensor, label_map: torch.Tensor | None = None,
                  config: MetricsConfig | None = None) -> dict[str, torch.Tensor]:
    """Per-image metric values (each a (B,) float64 CPU tensor) for one evaluated batch.

    ``image`` (B, 3, H, W) in [0, 1]; ``label_map`` (B, H, W) visible GT labels or None (then
    only the metrics that need no ground truth are computed). ``dup_gt`` / ``dup_nogt`` are 0/1
    per image, so their mean is the fraction of images with a duplicate. When the segmenting
    masks (``config.segmentation_masks``) are not the decoded masks, the segmentation metrics
    on the decoded masks are added as ``decoded_<name>``.
    """
    config = config or MetricsConfig()
    image = image.detach().float().cpu()
    reconstruction = output.reconstruction.detach().float().cpu()
    masks, _ = segmentation_masks(output, config.segmentation_masks)
    decoded = masks is output.masks
    mask_logits = output.mask_logits.detach().float().cpu()
    posterior_mean = output.posterior_mean.detach().cpu()
    gt = label_map.detach().cpu().long() if label_map is not None else None

    values = {
        "mse": mse(image, reconstruction),
        "rmse": rmse_mulmon(image, reconstruction),
        "sim": slot_similarity(posterior_mean, config.similarity_eps),
    }
    own_masks = not output.masks_partition
    values.update(_segmentation_values(masks.detach().float().cpu(), decoded and own_masks,
                                       mask_logits, posterior_mean, gt, config))
    if not decoded:
        values.update({DECODED_PREFIX + name: value for name, value in _segmentation_values(
            output.masks.detach().float().cpu(), own_masks, mask_logits, posterior_mean, gt,
            config).items()})
    order = [name for name in METRICS if name in values]
    return {name: values[name].to(torch.float64) for name in order}
