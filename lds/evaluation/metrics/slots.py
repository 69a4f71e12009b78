"""Slot-level metrics: average pairwise latent similarity and automatic duplicate counts.

The paper counted duplicates by eye on 100 images; these two definitions count them
automatically (thresholds in :class:`lds.evaluation.metrics.config.MetricsConfig`, documented in
docs/evaluation.md):

* with ground truth: slot k *claims* visible GT component g (background included) when
  IoU(slot mask k, GT mask g) >= ``claim_iou`` (overlapping masks: components rendered alone),
  or, for disjoint masks (the argmax segmentation), when slot k is active and at least
  ``claim_purity`` of its pixels lie in g; g is *duplicated* when two or more slots claim it.
  An image "has a duplicate" when at least one of its GT components is duplicated.
* without ground truth: slot k is *active* when its mask covers at least ``active_area`` of the
  image; two active slots h != j are a *duplicate pair* when IoU(mask h, mask j) >=
  ``duplicate_mask_iou`` or cos(mu_h, mu_j) >= ``duplicate_latent_cos`` (posterior means).
  An image "has a duplicate" when it has at least one duplicate pair.

"Slot mask" comes from the masks the model segments with: for decoded masks, the component
rendered alone, sigmoid(mask_logit_k) > 0.5 (supplement section B), where a slot that draws an
object already drawn by another slot is visible (as in the paper's Figure 2); for MONet's
attention masks, which partition the image, the slot's argmax region, where a duplicate shows as
one object split between slots (supplement Figure 5: the table split into several components).
"""

from __future__ import annotations

import torch

from lds.evaluation.metrics.segmentation import (argmax_labels, binary_iou, flatten_slot_masks,
                                      one_hot_labels)
from lds.prior import cosine_similarity_matrix, off_diagonal_mean


def slot_similarity(posterior_mean: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Average pairwise similarity: off-diagonal mean of the cosine-similarity matrix -> (B,).

    Signed cosine (as in Sigma of Eq. 3), over the posterior means mu_k of q(z_k | x).
    """
    return off_diagonal_mean(cosine_similarity_matrix(posterior_mean.to(torch.float64), eps))


def slot_binary_masks(mask_logits: torch.Tensor, masks: torch.Tensor, source: str = "alone",
                      alone_threshold: float = 0.5) -> torch.Tensor:
    """The per-slot binary masks the duplicate counts use: (B, K, H*W) bool.

    ``source="alone"``: sigmoid(mask_logit_k) > alone_threshold (each component rendered alone);
    ``source="argmax"``: the slot's pixels in the argmax segmentation of the mixing masks.
    """
    if source == "alone":
        return torch.sigmoid(flatten_slot_masks(mask_logits).float()) > alone_threshold
    if source == "argmax":
        return one_hot_labels(argmax_labels(masks), flatten_slot_masks(masks).shape[1])
    raise ValueError(f"unknown duplicate mask source {source!r} (use 'alone' or 'argmax')")


def gt_component_claims(gt_labels: torch.Tensor, slot_masks: torch.Tensor,
                        claim_iou: float = 0.5, rule: str = "iou", claim_purity: float = 0.5,
                        active_area: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(claims, present): how many slots claim each GT label (B, G), and which labels own
    pixels (B, G); label 0 is the background.

    ``slot_masks`` (B, K, N) bool. ``rule="iou"``: a slot claims a component when their IoU >=
    ``claim_iou``; ``rule="purity"`` (disjoint masks): when the slot covers >= ``active_area`` of
    the image and >= ``claim_purity`` of its pixels lie in the component.
    """
    batch, num_slots, _ = slot_masks.shape
    num_gt = int(gt_labels.max().item()) + 1
    gt_flat = gt_labels.flatten(1).long()
    gt_area = torch.zeros(batch, num_gt, dtype=torch.float32).scatter_add_(
        1, gt_flat, torch.ones_like(gt_flat, dtype=torch.float32))
    # intersection[b, k, g] = pixels of slot k's mask with GT label g (a scatter, not a matmul)
    intersection = torch.zeros(batch, num_slots, num_gt, dtype=torch.float32).scatter_add_(
        2, gt_flat.unsqueeze(1).expand(-1, num_slots, -1), slot_masks.to(torch.float32))
    slot_area = slot_masks.sum(-1, dtype=torch.float32).unsqueeze(-1)
    if rule == "iou":
        union = slot_area + gt_area.unsqueeze(1) - intersection
        iou = torch.where(union > 0, intersection / union.clamp_min(1.0), torch.zeros_like(union))
        claimed = iou >= claim_iou
    elif rule == "purity":
        active = slot_area >= active_area * slot_masks.shape[-1]
        claimed = active & (intersection >= claim_purity * slot_area) & (slot_area > 0)
    else:
        raise ValueError(f"unknown claim rule {rule!r} (use 'iou' or 'purity')")
    return claimed.sum(dim=1), gt_area > 0


def duplicated_gt_components(gt_labels: torch.Tensor, slot_masks: torch.Tensor,
                             claim_iou: float = 0.5, rule: str = "iou", claim_purity: float = 0.5,
                             active_area: float = 0.01) -> torch.Tensor:
    """Number of present GT components (background included) claimed by >= 2 slots -> (B,)
    (claim rules: :func:`gt_component_claims`)."""
    claims, present = gt_component_claims(gt_labels, slot_masks, claim_iou, rule, claim_purity,
                                          active_area)
    return ((claims >= 2) & present).sum(dim=-1)


def duplicate_pairs_without_gt(slot_masks: torch.Tensor, posterior_mean: torch.Tensor,
                               active_area: float = 0.01, mask_iou: float = 0.5,
                               latent_cos: float = 0.9, eps: float = 1e-8) -> torch.Tensor:
    """Number of unordered pairs of active slots that nearly coincide -> (B,).

    A slot is active when its mask covers >= ``active_area`` of the pixels; a pair of active
    slots coincides when its mask IoU >= ``mask_iou`` or its posterior-mean cosine >= ``latent_cos``.
    """
    num_pixels = slot_masks.shape[-1]
    active = slot_masks.sum(dim=-1) >= active_area * num_pixels            # (B, K)
    mask_overlap = binary_iou(slot_masks, slot_masks) >= mask_iou           # (B, K, K)
    latent_close = cosine_similarity_matrix(posterior_mean.to(torch.float64), eps) >= latent_cos
    both_active = active.unsqueeze(2) & active.unsqueeze(1)
    duplicate = (mask_overlap | latent_close) & both_active
    upper = torch.ones_like(duplicate[0]).triu(diagonal=1)                 # each pair once
    return (duplicate & upper).sum(dim=(1, 2))
