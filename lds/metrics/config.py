"""Thresholds of the evaluation metrics: one dataclass, one source of defaults.

Every value is overridable (``ldsrig eval ... --metric claim_iou=0.6``) and saved in ``eval.json``
so a number can always be traced back to the definition that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class MetricsConfig:
    # --- Which masks give the predicted segmentation (mIoU, ARI) ------------------------------
    # "masks": the contract's mixing masks (softmax of the decoded mask logits); "extras.KEY":
    # a model-specific (B, K, 1, H, W) tensor, e.g. "extras.attention_masks" for MONet's
    # attention-network masks (what MONet's own likelihood mixes with).
    segmentation_masks: str = "masks"

    # --- MulMON's greedy mIoU (kept only to compare with published MulMON numbers) ---------------
    # MulMON binarises the (argmaxed, one-hot) predicted masks at > 0.9 (a no-op on one-hot masks,
    # kept for fidelity) and sets every IoU below 0.05 to zero before the greedy per-GT maximum.
    greedy_mask_threshold: float = 0.9
    greedy_min_iou: float = 0.05

    # --- Duplicates -------------------------------------------------------------------------------
    # Which per-slot masks the duplicate counts look at:
    #   "alone":  each component rendered alone, sigmoid(mask_logit_k) > alone_mask_threshold
    #             (supplement section B; these are the masks in which the paper's Figure 2 shows
    #             duplicates: two components that each draw the same object);
    #   "argmax": the slot's pixels in the argmax segmentation (no overlap between slots, so a
    #             duplicate can only show up as an object split between slots).
    duplicate_masks: Literal["alone", "argmax"] = "alone"
    alone_mask_threshold: float = 0.5
    # With ground truth: slot k *claims* visible GT component g (background included) when
    # IoU(mask_k, g) >= claim_iou; a GT component claimed by two or more slots is a duplicate.
    claim_iou: float = 0.5
    # Without ground truth: a slot is *active* when its mask covers at least active_area of the
    # image; two active slots are duplicates when their masks have IoU >= duplicate_mask_iou or
    # their posterior means have cosine similarity >= duplicate_latent_cos.
    active_area: float = 0.01
    duplicate_mask_iou: float = 0.5
    duplicate_latent_cos: float = 0.9

    # --- Slot similarity ----------------------------------------------------------------------------
    similarity_eps: float = 1e-8  # eps in the norms of the cosine similarity (as in the LDS prior)
