"""Segmentation metrics per image: mIoU (Hungarian and MulMON's greedy variant), ARI, FG-ARI.

Conventions. Ground truth is a visible label map (B, H, W) int, 0 = background, i = object i.
Predictions are per-slot mixing masks (B, K, 1, H, W) or (B, K, H, W), turned into one label per
pixel by argmax over slots. "GT components present in the image" are the labels that own at
least one pixel; the background is one of them. IoU uses the true union |A| + |B| - |A & B|.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def flatten_slot_masks(masks: torch.Tensor) -> torch.Tensor:
    """(B, K, 1, H, W) or (B, K, H, W) -> (B, K, H*W)."""
    if masks.dim() == 5:
        if masks.shape[2] != 1:
            raise ValueError(f"slot masks must have one channel, got shape {tuple(masks.shape)}")
        masks = masks[:, :, 0]
    if masks.dim() != 4:
        raise ValueError(f"slot masks must be (B, K, [1,] H, W), got shape {tuple(masks.shape)}")
    return masks.flatten(2)


def argmax_labels(masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel winning slot: (B, K, [1,] H, W) -> (B, H, W) int64."""
    flat = flatten_slot_masks(masks)
    # argmax over a strided axis is ~4x slower on the CPU than moving K last first
    labels = flat.transpose(1, 2).contiguous().argmax(dim=-1)
    height, width = masks.shape[-2:]
    return labels.view(masks.shape[0], height, width)


def one_hot_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) int labels -> (B, C, H*W) bool indicator masks."""
    flat = labels.flatten(1).long()
    return F.one_hot(flat, num_classes).transpose(1, 2).bool()


def binary_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every mask in ``a`` (B, G, N) with every mask in ``b`` (B, K, N) -> (B, G, K).

    Masks are bool (or 0/1). Two empty masks have IoU 0 (there is nothing to match).
    """
    a = a.to(torch.float32)
    b = b.to(torch.float32)
    intersection = a @ b.transpose(1, 2)
    union = a.sum(-1, keepdim=True) + b.sum(-1).unsqueeze(1) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1.0), torch.zeros_like(union))


def contingency_table(gt_labels: torch.Tensor, pred_labels: torch.Tensor,
                      num_pred: int) -> torch.Tensor:
    """Pixel counts n[b, g, k] = #{pixels with GT label g and predicted slot k} -> (B, G, K).

    G = max GT label + 1 over the batch. One bincount over the whole batch: every segmentation
    metric (IoU, mIoU, ARI) is a function of this table.
    """
    batch = gt_labels.shape[0]
    num_gt = int(gt_labels.max().item()) + 1
    cells = num_gt * num_pred
    flat = gt_labels.flatten(1).long() * num_pred + pred_labels.flatten(1).long()
    flat = flat + torch.arange(batch, device=flat.device).unsqueeze(1) * cells
    counts = torch.bincount(flat.flatten(), minlength=batch * cells)
    return counts.view(batch, num_gt, num_pred).to(torch.float64)


def foreground_in_background_slot(table: torch.Tensor) -> torch.Tensor:
    """Share of the GT foreground (labels >= 1) that lies in the slot holding most of the GT
    background (label 0), from a (B, G, K) contingency table -> (B,); NaN without foreground.

    Near 0 when the objects have slots of their own; near 1 when the slot that draws the
    background draws the objects too, as one flat layer (GENESIS on CLE-MV, supplement C.2).
    """
    background_slot = table[:, 0].argmax(dim=-1)                                   # (B,)
    foreground = table[:, 1:].sum(dim=1)                                          # (B, K)
    in_slot = foreground.gather(1, background_slot[:, None])[:, 0]
    total = foreground.sum(dim=-1)
    return torch.where(total > 0, in_slot / total.clamp_min(1.0), torch.full_like(total, float("nan")))


def _contingency(gt_labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    num_slots = flatten_slot_masks(masks).shape[1]
    return contingency_table(gt_labels, argmax_labels(masks), num_slots)


def iou_from_contingency(table: torch.Tensor) -> torch.Tensor:
    """IoU of every GT component with every slot, union = |A| + |B| - |A & B| -> (B, G, K)."""
    union = table.sum(2, keepdim=True) + table.sum(1, keepdim=True) - table
    return torch.where(union > 0, table / union.clamp_min(1.0), torch.zeros_like(table))


def miou_hungarian_from_contingency(table: torch.Tensor) -> torch.Tensor:
    iou = iou_from_contingency(table).cpu().numpy()
    present = (table.sum(2) > 0).cpu().numpy()
    out = np.zeros(len(iou))
    for i, (image_iou, image_present) in enumerate(zip(iou, present)):
        rows = image_iou[image_present]
        gt_index, slot_index = linear_sum_assignment(rows, maximize=True)
        out[i] = rows[gt_index, slot_index].sum() / len(rows)
    return torch.from_numpy(out)


def miou_greedy_from_contingency(table: torch.Tensor, mask_threshold: float = 0.9,
                                 min_iou: float = 0.05) -> torch.Tensor:
    present = table.sum(2) > 0
    if not 1.0 > mask_threshold:
        table = torch.zeros_like(table)  # binarising one-hot masks at >= 1 empties every mask
    iou = iou_from_contingency(table)
    iou = torch.where(iou < min_iou, torch.zeros_like(iou), iou)
    best = iou.max(dim=-1).values * present
    return best.sum(-1) / present.sum(-1)


def ari_from_contingency(table: torch.Tensor) -> torch.Tensor:
    """Adjusted Rand index from a (B, G, K) contingency table (see adjusted_rand_index)."""
    def pairs(x):
        return x * (x - 1) / 2.0                        # number of unordered pairs

    n = table.sum(dim=(1, 2))
    index = pairs(table).sum(dim=(1, 2))
    sum_gt = pairs(table.sum(dim=2)).sum(dim=1)
    sum_pred = pairs(table.sum(dim=1)).sum(dim=1)
    expected = sum_gt * sum_pred / pairs(n).clamp_min(1.0)
    denominator = 0.5 * (sum_gt + sum_pred) - expected
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    ari = torch.where(denominator == 0, torch.ones_like(index), (index - expected) / safe)
    return torch.where(n < 2, torch.full_like(ari, float("nan")), ari)


def miou_hungarian(gt_labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean IoU over present GT components after a one-to-one Hungarian matching -> (B,).

    Predicted masks are argmaxed per pixel; every present GT component (background included) is
    matched to a distinct slot so that the summed IoU is maximal (scipy linear_sum_assignment);
    a GT component left without a slot (more components than slots) scores 0.
    """
    return miou_hungarian_from_contingency(_contingency(gt_labels, masks))


def miou_greedy(gt_labels: torch.Tensor, masks: torch.Tensor, mask_threshold: float = 0.9,
                min_iou: float = 0.05) -> torch.Tensor:
    """MulMON's mIoU: each GT component takes its best slot, duplicates allowed -> (B,).

    As in MulMON's evaluation: predicted masks are argmaxed to one-hot, binarised at
    ``> mask_threshold`` (a no-op on one-hot masks for any threshold below 1), IoUs below
    ``min_iou`` are set to 0, and every present GT component (background included) takes the
    maximum IoU over slots, so two GT components may share one slot. Kept beside
    :func:`miou_hungarian` only to compare with published MulMON numbers; with ``min_iou=0`` it
    is never lower than the Hungarian score.
    """
    return miou_greedy_from_contingency(_contingency(gt_labels, masks), mask_threshold, min_iou)


def adjusted_rand_index(gt_labels: torch.Tensor, masks: torch.Tensor,
                        ignore_background: bool = False) -> torch.Tensor:
    """Adjusted Rand index between GT labels and argmaxed slot masks, per image -> (B,).

    The standard ARI (Hubert & Arabie) from the contingency table of pixel assignments. With
    ``ignore_background`` (FG-ARI) the GT background pixels (label 0) are left out. Conventions:
    when both partitions put every pixel in one cluster the ARI is 1; with fewer than two pixels
    to compare (e.g. no foreground) it is NaN and left out of the aggregates.
    """
    table = _contingency(gt_labels, masks)
    return ari_from_contingency(table[:, 1:] if ignore_background else table)
