"""Every metric on hand-made cases with known answers."""

import itertools
import math

import numpy as np
import pytest
import torch

from lds.contract import ModelOutput
from lds.evaluation.metrics import (MetricsConfig, adjusted_rand_index, batch_metrics, binary_iou,
                         duplicate_pairs_without_gt, duplicated_gt_components, miou_greedy,
                         miou_hungarian, mse, rmse_mulmon, slot_binary_masks, slot_similarity)


def masks_from_labels(labels: torch.Tensor, num_slots: int) -> torch.Tensor:
    """One-hot slot masks (B, K, 1, H, W) in which slot k owns the pixels labelled k."""
    return torch.nn.functional.one_hot(labels, num_slots).permute(0, 3, 1, 2).unsqueeze(2).float()


def output_from_logits(mask_logits: torch.Tensor, latents: torch.Tensor,
                       image: torch.Tensor) -> ModelOutput:
    masks = mask_logits.softmax(dim=1)
    appearance = image.unsqueeze(1).expand(-1, mask_logits.shape[1], -1, -1, -1)
    zero = torch.zeros(())
    return ModelOutput(loss=zero, loss_terms={"nll": zero}, slot_latents=latents,
                       posterior_mean=latents, posterior_logvar=torch.zeros_like(latents),
                       mask_logits=mask_logits, masks=masks, appearance=appearance,
                       reconstruction=(masks * appearance).sum(1))


# Ground truth used by several tests (4x4): background in columns 0-1, object 1 in column 2,
# object 2 in column 3.
GT = torch.tensor([[0, 0, 1, 2]] * 4).unsqueeze(0)


def test_mse_and_mulmon_rmse_known_values():
    image = torch.zeros(1, 3, 2, 2)
    rec = torch.zeros(1, 3, 2, 2)
    rec[0, 0, 0, 0], rec[0, 1, 0, 0] = 0.3, 0.4   # one pixel off by the RGB vector (0.3, 0.4, 0)
    assert math.isclose(mse(image, rec).item(), (0.09 + 0.16) / 12, rel_tol=1e-6)
    assert math.isclose(rmse_mulmon(image, rec).item(), 0.5 / 4, rel_tol=1e-6)
    assert mse(image, image).item() == 0.0


def test_binary_iou_identity_and_true_union():
    a = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0]]], dtype=torch.bool)
    b = torch.tensor([[[0, 0, 1, 1, 1, 1, 0, 0]]], dtype=torch.bool)
    assert binary_iou(a, a).item() == 1.0
    assert binary_iou(a, b).item() == pytest.approx(2 / 6)      # not 2/8 (the |A|+|B| bug)
    empty = torch.zeros_like(a)
    assert binary_iou(empty, empty).item() == 0.0


def test_perfect_permuted_segmentation_scores_one_everywhere():
    permuted = torch.tensor([5, 2, 0, 1, 3, 4, 6])[GT]           # slots renamed
    masks = masks_from_labels(permuted, 7)
    assert miou_hungarian(GT, masks).item() == 1.0
    assert miou_greedy(GT, masks).item() == 1.0
    assert adjusted_rand_index(GT, masks).item() == pytest.approx(1.0)
    assert adjusted_rand_index(GT, masks, ignore_background=True).item() == pytest.approx(1.0)


def test_greedy_and_hungarian_differ_when_two_objects_share_a_slot():
    merged = torch.tensor([[0, 0, 1, 1]] * 4).unsqueeze(0)      # both objects in slot 1
    masks = masks_from_labels(merged, 3)
    # greedy: bg -> slot 0 (IoU 1), obj1 -> slot 1 (4/8), obj2 -> slot 1 again (4/8)
    assert miou_greedy(GT, masks).item() == pytest.approx((1 + 0.5 + 0.5) / 3)
    # Hungarian: one-to-one, so one object is left with the empty slot 2 (IoU 0)
    assert miou_hungarian(GT, masks).item() == pytest.approx((1 + 0.5 + 0.0) / 3)


def test_hungarian_finds_the_best_one_to_one_matching():
    # 1x6 image. GT: a = px 0-2, b = px 3-5. Slot 0 = px 0-3, slot 1 = px 4-5.
    # Matching a->0 (3/4) and b->1 (2/3) beats b->0 (1/6) and a->1 (0).
    gt = torch.tensor([[[0, 0, 0, 1, 1, 1]]])
    pred = torch.tensor([[[0, 0, 0, 0, 1, 1]]])
    assert miou_hungarian(gt, masks_from_labels(pred, 2)).item() == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_miou_counts_only_present_components_and_scores_unmatched_as_zero():
    gt = torch.tensor([[[0, 0, 3, 3]]])                          # labels 1 and 2 absent
    assert miou_hungarian(gt, masks_from_labels(torch.tensor([[[1, 1, 0, 0]]]), 2)).item() == 1.0
    # three GT components, one slot: only one can be matched
    gt3 = torch.tensor([[[0, 1, 2, 2]]])
    one_slot = torch.ones(1, 1, 1, 1, 4)
    assert miou_hungarian(gt3, one_slot).item() == pytest.approx((2 / 4) / 3)


def test_mulmon_greedy_zeroes_small_ious():
    gt = torch.zeros(1, 1, 40, dtype=torch.long)
    gt[0, 0, 0] = 1                                              # object of one pixel
    pred = torch.zeros(1, 1, 40, dtype=torch.long)
    pred[0, 0, :21] = 1                                          # slot 1 covers it and 20 more
    masks = masks_from_labels(pred, 2)
    # object IoU with slot 1 is 1/21 < 0.05 -> 0; background (39 px) takes its best slot,
    # slot 1: 20 / (39 + 21 - 20) = 0.5 (slot 0 would give 19/39)
    assert miou_greedy(gt, masks).item() == pytest.approx((0.5 + 0) / 2)
    assert miou_greedy(gt, masks, min_iou=0.0).item() == pytest.approx((0.5 + 1 / 21) / 2)


def _ari_by_pair_counting(a: np.ndarray, b: np.ndarray) -> float:
    """ARI from the four pair counts (an independent formula), O(N^2)."""
    same_same = same_diff = diff_same = diff_diff = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        sa, sb = a[i] == a[j], b[i] == b[j]
        same_same += sa and sb
        same_diff += sa and not sb
        diff_same += (not sa) and sb
        diff_diff += (not sa) and (not sb)
    num = 2.0 * (same_same * diff_diff - same_diff * diff_same)
    den = ((same_same + same_diff) * (same_diff + diff_diff)
           + (same_same + diff_same) * (diff_same + diff_diff))
    return num / den


def test_ari_matches_pair_counting_on_random_labelings():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = rng.integers(0, 4, size=(1, 5, 6))
        pred = rng.integers(0, 5, size=(1, 5, 6))
        expected = _ari_by_pair_counting(gt.ravel(), pred.ravel())
        got = adjusted_rand_index(torch.from_numpy(gt), masks_from_labels(torch.from_numpy(pred), 5))
        assert got.item() == pytest.approx(expected, abs=1e-12)
        fg = gt.ravel() > 0
        expected_fg = _ari_by_pair_counting(gt.ravel()[fg], pred.ravel()[fg])
        got_fg = adjusted_rand_index(torch.from_numpy(gt), masks_from_labels(torch.from_numpy(pred), 5),
                                     ignore_background=True)
        assert got_fg.item() == pytest.approx(expected_fg, abs=1e-12)


def test_fg_ari_ignores_background_errors_and_is_nan_without_foreground():
    pred = torch.tensor([[[3, 4, 1, 2]] * 4])                    # background split in two slots
    masks = masks_from_labels(pred, 5)
    assert adjusted_rand_index(GT, masks, ignore_background=True).item() == pytest.approx(1.0)
    assert adjusted_rand_index(GT, masks).item() < 0.9
    background_only = torch.zeros(1, 4, 4, dtype=torch.long)
    assert math.isnan(adjusted_rand_index(background_only, masks, ignore_background=True).item())
    # everything one cluster in both -> 1 by convention
    assert adjusted_rand_index(background_only, torch.ones(1, 1, 1, 4, 4)).item() == 1.0


def test_slot_similarity_orthogonal_and_duplicate_latents():
    orthogonal = torch.eye(3).unsqueeze(0)
    assert slot_similarity(orthogonal).item() == pytest.approx(0.0)
    same = torch.ones(1, 3, 4)
    assert slot_similarity(same).item() == pytest.approx(1.0)
    half = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # one identical pair of 3
    assert slot_similarity(half).item() == pytest.approx(2 / 6)


def _logits(owner_sets: list[list[tuple[int, int]]], shape=(4, 4)) -> torch.Tensor:
    """Mask logits (1, K, 1, H, W): +6 on the pixels listed for slot k, -6 elsewhere."""
    logits = torch.full((1, len(owner_sets), 1, *shape), -6.0)
    for k, pixels in enumerate(owner_sets):
        for r, c in pixels:
            logits[0, k, 0, r, c] = 6.0
    return logits


BG = [(r, c) for r in range(4) for c in (0, 1)]
OBJ1 = [(r, 2) for r in range(4)]
OBJ2 = [(r, 3) for r in range(4)]


def test_duplicate_with_gt_known_duplicate():
    clean = slot_binary_masks(_logits([BG, OBJ1, OBJ2, []]), None, "alone")
    assert duplicated_gt_components(GT, clean).item() == 0
    # slot 3 draws object 1 again (rendered alone it overlaps slot 1 entirely)
    dup = slot_binary_masks(_logits([BG, OBJ1, OBJ2, OBJ1]), None, "alone")
    assert duplicated_gt_components(GT, dup).item() == 1
    # two background slots (the "redundant table" of the supplement) plus a duplicate object
    dup2 = slot_binary_masks(_logits([BG, OBJ1, OBJ2, OBJ1, BG + OBJ1[:1]]), None, "alone")
    assert duplicated_gt_components(GT, dup2).item() == 2
    # a slot covering only half of an object does not claim it at claim_iou=0.75
    half = slot_binary_masks(_logits([BG, OBJ1, OBJ2, OBJ1[:2]]), None, "alone")
    assert duplicated_gt_components(GT, half, claim_iou=0.75).item() == 0
    assert duplicated_gt_components(GT, half, claim_iou=0.5).item() == 1


def test_duplicate_without_gt_masks_latents_and_activity():
    latents = torch.eye(4).unsqueeze(0)
    masks = slot_binary_masks(_logits([BG, OBJ1, OBJ2, OBJ1]), None, "alone")
    assert duplicate_pairs_without_gt(masks, latents).item() == 1
    distinct = slot_binary_masks(_logits([BG, OBJ1, OBJ2, []]), None, "alone")
    assert duplicate_pairs_without_gt(distinct, latents).item() == 0
    # same latent direction for slots 1 and 2 -> a duplicate even though their masks differ
    close = latents.clone()
    close[0, 2] = close[0, 1] * 2.0
    assert duplicate_pairs_without_gt(distinct, close).item() == 1
    # ... but not when one of them is inactive (mask below 1/16 of the image here)
    tiny = slot_binary_masks(_logits([BG, OBJ1, OBJ2[:1], []]), None, "alone")
    assert duplicate_pairs_without_gt(tiny, close, active_area=0.1).item() == 0
    assert duplicate_pairs_without_gt(tiny, close, active_area=0.05).item() == 1


def test_batch_metrics_perfect_model_and_duplicate_model():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 4, 4)
    good = output_from_logits(_logits([BG, OBJ1, OBJ2, []]) * 3, torch.eye(4).unsqueeze(0), image)
    values = batch_metrics(good, image, GT)
    assert values["mse"].item() < 1e-6
    assert values["miou"].item() == 1.0 and values["miou_greedy"].item() == 1.0
    assert values["ari"].item() == pytest.approx(1.0)
    assert values["fg_ari"].item() == pytest.approx(1.0)
    assert values["dup_gt"].item() == 0 and values["dup_nogt"].item() == 0
    assert values["active_slots"].item() == 3
    assert values["largest_segment"].item() == pytest.approx(0.5)   # the background: 8 of 16
    assert values["fg_in_bg_slot"].item() == 0.0
    assert values["sim"].item() == pytest.approx(0.0)
    assert all(v.dtype == torch.float64 and v.shape == (1,) for v in values.values())

    # GENESIS in the supplement's C.2: one slot draws the whole scene as one flat object
    flat = output_from_logits(_logits([BG + OBJ1 + OBJ2, [], [], []]) * 3, torch.eye(4).unsqueeze(0),
                              image)
    flat_values = batch_metrics(flat, image, GT)
    assert flat_values["largest_segment"].item() == 1.0 and flat_values["fg_ari"].item() == 0.0
    assert flat_values["fg_in_bg_slot"].item() == 1.0
    # the background's slot takes object 1 (4 of the 8 object pixels), object 2 keeps its own
    half = output_from_logits(_logits([BG + OBJ1, [], OBJ2, []]) * 3, torch.eye(4).unsqueeze(0),
                              image)
    assert batch_metrics(half, image, GT)["fg_in_bg_slot"].item() == 0.5

    # Masks that partition the image with no logit of a component's own (GENESIS: log pi_k) are
    # counted on their argmax segments: object 1 split between slots 1 and 3 is a duplicate.
    split = [BG, OBJ1[:2], OBJ2, OBJ1[2:]]
    partition = output_from_logits(_logits(split) * 3, torch.eye(4).unsqueeze(0), image)
    partition.mask_logits = partition.masks.log()
    partition.masks_partition = True
    values_partition = batch_metrics(partition, image, GT)
    assert values_partition["active_slots"].item() == 4
    assert values_partition["dup_gt"].item() == 1 and values_partition["dup_components"].item() == 1
    partition.masks_partition = False   # the old rule: sigmoid(log pi) <= 0.5, no slot is active
    assert batch_metrics(partition, image, GT)["active_slots"].item() == 0

    bad = output_from_logits(_logits([BG, OBJ1, OBJ2, OBJ1]), torch.eye(4).unsqueeze(0), image)
    values = batch_metrics(bad, image, GT)
    assert values["dup_gt"].item() == 1 and values["dup_components"].item() == 1
    assert values["dup_nogt"].item() == 1 and values["dup_pairs"].item() == 1
    no_gt = batch_metrics(bad, image, None)
    assert "miou" not in no_gt and no_gt["dup_nogt"].item() == 1
    argmax_cfg = MetricsConfig(duplicate_masks="argmax")
    # in the argmax segmentation slot 1 and slot 3 split object 1 (ties go to the first slot)
    assert batch_metrics(bad, image, GT, argmax_cfg)["dup_gt"].item() == 0


def test_greedy_never_below_hungarian_without_the_iou_floor():
    rng = np.random.default_rng(3)
    for _ in range(20):
        gt = torch.from_numpy(rng.integers(0, 5, size=(2, 6, 6)))
        masks = torch.from_numpy(rng.random((2, 4, 1, 6, 6)))
        assert torch.all(miou_greedy(gt, masks, min_iou=0.0) >= miou_hungarian(gt, masks) - 1e-12)


def test_greedy_threshold_at_one_empties_the_one_hot_masks():
    masks = masks_from_labels(GT, 3)
    assert miou_greedy(GT, masks, mask_threshold=0.5).item() == 1.0
    assert miou_greedy(GT, masks, mask_threshold=1.0).item() == 0.0


def test_segmentation_can_come_from_model_extras():
    from common.errors import ConfigError

    image = torch.rand(1, 3, 4, 4)
    out = output_from_logits(_logits([BG, OBJ1, OBJ2, []]), torch.eye(4).unsqueeze(0), image)
    wrong = torch.tensor([[[0, 0, 0, 0]] * 4])                 # everything in slot 0
    out.extras["attention_masks"] = masks_from_labels(wrong, 4)
    assert batch_metrics(out, image, GT)["miou"].item() == 1.0
    cfg = MetricsConfig(segmentation_masks="extras.attention_masks")
    assert batch_metrics(out, image, GT, cfg)["miou"].item() == pytest.approx(0.5 / 3)
    with pytest.raises(ConfigError):
        batch_metrics(out, image, GT, MetricsConfig(segmentation_masks="extras.nope"))


def test_split_component_is_a_duplicate_on_disjoint_masks_by_purity():
    # Background (columns 0-1) split between slots 0 and 3; each slot lies wholly in it.
    split = torch.tensor([[[0, 3, 1, 2]] * 4])
    slot_masks = slot_binary_masks(torch.zeros(1, 4, 1, 4, 4), masks_from_labels(split, 4), "argmax")
    assert duplicated_gt_components(GT, slot_masks, rule="purity").item() == 1
    # IoU finds it only when both halves are exact halves (IoU 0.5 each); above that, never...
    assert duplicated_gt_components(GT, slot_masks, claim_iou=0.51, rule="iou").item() == 0
    # ...and a slot below active_area claims nothing (here 4 of 16 pixels = 0.25 < 0.3).
    assert duplicated_gt_components(GT, slot_masks, rule="purity", active_area=0.3).item() == 0
    # A slot that straddles two components claims neither (purity 0.5 needs >= half inside).
    straddle = torch.tensor([[[0, 3, 3, 3]] * 4])
    slot_masks = slot_binary_masks(torch.zeros(1, 4, 1, 4, 4), masks_from_labels(straddle, 4), "argmax")
    assert duplicated_gt_components(GT, slot_masks, rule="purity", claim_purity=0.7).item() == 0


def test_model_segmentation_source_is_used_and_decoded_masks_reported_beside_it():
    image = torch.rand(1, 3, 4, 4)
    # Decoded masks still flat: every component rendered alone covers the whole image.
    out = output_from_logits(torch.full((1, 4, 1, 4, 4), 3.0), torch.eye(4).unsqueeze(0), image)
    out.segmentation_masks = masks_from_labels(torch.tensor([[[0, 0, 1, 2]] * 4]), 4)
    out.segmentation_source = "attention masks"
    values = batch_metrics(out, image, GT)
    assert values["miou"].item() == 1.0 and values["fg_ari"].item() == pytest.approx(1.0)
    assert values["dup_gt"].item() == 0.0          # counted on the masks that segment
    # The decoded masks, labelled apart: flat, so they segment nothing and are all duplicates.
    assert values["decoded_miou"].item() < 1.0
    assert values["decoded_dup_gt"].item() == 1.0
    # Asking for the decoded masks explicitly gives exactly the decoded_ values, and no pair.
    decoded = batch_metrics(out, image, GT, MetricsConfig(segmentation_masks="masks"))
    assert decoded["miou"].item() == values["decoded_miou"].item()
    assert not any(name.startswith("decoded_") for name in decoded)
    # A model that segments with its decoded masks gets no decoded_ companions.
    plain = output_from_logits(torch.full((1, 4, 1, 4, 4), 3.0), torch.eye(4).unsqueeze(0), image)
    assert not any(name.startswith("decoded_") for name in batch_metrics(plain, image, GT))


def test_metric_table_labels_both_sources():
    from lds.evaluation.metrics import METRICS, metric

    assert metric("decoded_fg_ari").label == "FG-ARI, decoded masks"
    assert metric("fg_ari", "attention masks").label == "FG-ARI, attention masks"
    assert metric("mse", "attention masks").label == "MSE"          # not a segmentation metric
    assert metric("query_miou").label.endswith("query views")
    assert METRICS["dup_gt"].format(0.25) == "25.0" and METRICS["miou"].higher_is_better


def test_duplicated_background_is_counted_apart():
    image = torch.rand(1, 3, 4, 4)
    split_table = torch.tensor([[[0, 3, 1, 2]] * 4])              # the table in slots 0 and 3
    out = output_from_logits(torch.zeros(1, 4, 1, 4, 4), torch.eye(4).unsqueeze(0), image)
    out.segmentation_masks = masks_from_labels(split_table, 4)
    values = batch_metrics(out, image, GT)
    assert values["dup_bg"].item() == 1.0 and values["dup_components"].item() == 1.0
    split_object = torch.tensor([[[0, 0, 1, 2], [0, 0, 1, 2], [0, 0, 3, 2], [0, 0, 3, 2]]])
    out.segmentation_masks = masks_from_labels(split_object, 4)
    values = batch_metrics(out, image, GT)
    assert values["dup_bg"].item() == 0.0 and values["dup_gt"].item() == 1.0
