"""Thresholds of the evaluation metrics: one dataclass, one source of defaults.

Every value is overridable (``ldsrig eval ... --metric claim_iou=0.6``) and saved in ``eval.json``
so a number can always be traced back to the definition that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class MetricsConfig:
    # --- Which masks give the predicted segmentation (mIoU, ARI, FG-ARI, duplicates) ---------
    # "model": the model's own segmentation (ModelOutput.segmentation_masks: MONet's attention
    # masks, the decoded mixing masks for IODINE, MulMON and GENESIS); "masks": the decoded
    # mixing masks (softmax of the decoded mask logits) of any model; "extras.KEY": a
    # model-specific (B, K, 1, H, W) tensor. Whenever the chosen masks are not the decoded ones,
    # the segmentation metrics are computed on the decoded masks too (as decoded_<name>).
    segmentation_masks: str = "model"

    # --- MulMON's greedy mIoU (kept only to compare with published MulMON numbers) ---------------
    # MulMON binarises the (argmaxed, one-hot) predicted masks at > 0.9 (a no-op on one-hot masks,
    # kept for fidelity) and sets every IoU below 0.05 to zero before the greedy per-GT maximum.
    greedy_mask_threshold: float = 0.9
    greedy_min_iou: float = 0.05

    # --- Duplicates -------------------------------------------------------------------------------
    # Which per-slot masks the duplicate counts look at (always derived from the masks that
    # segment, so a model whose decoded masks are still flat is not counted on them):
    #   "auto":   "alone" when the segmenting masks are the decoded ones and each component
    #             has a mask logit of its own (IODINE, MulMON), else "argmax" (MONet's attention,
    #             GENESIS's stick-breaking: ModelOutput.masks_partition);
    #   "alone":  each component rendered alone, sigmoid(mask_logit_k) > alone_mask_threshold
    #             (supplement section B; these are the masks in which the paper's Figure 2 shows
    #             duplicates: two components that each draw the same object). Only defined for
    #             decoded masks;
    #   "argmax": the slot's pixels in the argmax segmentation (no overlap between slots, so a
    #             duplicate can only show up as an object split between slots).
    duplicate_masks: Literal["auto", "alone", "argmax"] = "auto"
    alone_mask_threshold: float = 0.5
    # With ground truth, slot k *claims* visible GT component g (background included) when
    #   "alone" masks:  IoU(mask_k, g) >= claim_iou;
    #   "argmax" masks: slot k is active and at least claim_purity of its pixels lie in g (two
    #                   disjoint masks can never both reach IoU 0.5 with one component, so IoU
    #                   would find no split at all).
    # A GT component claimed by two or more slots is a duplicate.
    claim_iou: float = 0.5
    claim_purity: float = 0.5
    # Without ground truth: a slot is *active* when its mask covers at least active_area of the
    # image; two active slots are duplicates when their masks have IoU >= duplicate_mask_iou or
    # their posterior means have cosine similarity >= duplicate_latent_cos.
    active_area: float = 0.01
    duplicate_mask_iou: float = 0.5
    duplicate_latent_cos: float = 0.9

    # --- Slot similarity ----------------------------------------------------------------------------
    similarity_eps: float = 1e-8  # eps in the norms of the cosine similarity (as in the LDS prior)
