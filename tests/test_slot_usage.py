"""experiments/slot_usage.py tells evenly blended duplicate slots from a clean split."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from slot_usage import slot_usage  # noqa: E402


def _output(masks: torch.Tensor, appearance: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor):
    reconstruction = (masks * appearance).sum(1)
    return SimpleNamespace(masks=masks, appearance=appearance, posterior_mean=mean,
                           posterior_logvar=logvar, reconstruction=reconstruction)


def test_blended_duplicates_against_a_clean_split():
    torch.manual_seed(0)
    rows, k, h, w = 2, 4, 8, 8
    picture = torch.rand(rows, 1, 3, h, w)
    # every slot everywhere, all drawing the same picture, latents at the prior
    blended = _output(torch.full((rows, k, 1, h, w), 1.0 / k), picture.expand(rows, k, 3, h, w),
                      torch.zeros(rows, k, 3), torch.zeros(rows, k, 3))
    numbers = slot_usage(blended, picture[:, 0])
    assert numbers["mask_share"] == [0.25] * k and numbers["kl_nats"] == [0.0] * k
    assert numbers["largest_mask_mean"] == 0.25 and numbers["pixels_with_a_majority_slot"] == 0.0
    assert math.isclose(numbers["appearance_cosine"], 1.0, rel_tol=1e-5)
    assert numbers["mse"] < 1e-12

    # each slot owns one quarter of the image (columns), its own picture; latent mean 1 in 3 dims
    owner = torch.arange(w).div(w // k, rounding_mode="floor").expand(h, w)
    split_masks = torch.nn.functional.one_hot(owner, k).permute(2, 0, 1)[None, :, None].float()
    split = _output(split_masks.expand(rows, k, 1, h, w).contiguous(), torch.rand(rows, k, 3, h, w),
                    torch.ones(rows, k, 3), torch.zeros(rows, k, 3))
    numbers = slot_usage(split, picture[:, 0])
    assert numbers["largest_mask_mean"] == 1.0 and numbers["pixels_with_a_majority_slot"] == 1.0
    assert all(math.isclose(v, 1.5) for v in numbers["kl_nats"])      # 0.5 * |mu|^2 per slot
    assert abs(numbers["appearance_cosine"]) < 0.2                      # independent pictures
