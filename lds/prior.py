"""The LDS ("latent duplicate suppression") prior, Eq. 3 of Li & Fisher (BMVC 2021).

For the K slot latents z_1..z_K of one image, Sigma is their cosine-similarity matrix and

    L_LDS = sum_{h != j} log N(Sigma_hj; 0, sigma^2)
          = -sum_{h != j} Sigma_hj^2 / (2 sigma^2)  -  K (K - 1) * log(sigma * sqrt(2 pi)).

The sum runs over *ordered* pairs (h, j), so every unordered pair counts twice; with sigma = 0.1
the prior is -100 * sum_{h<j} cos^2 + const. The prior is maximised (added to the ELBO with
weight lambda), i.e. the training loss is ``-ELBO - lambda * mean_b(lds_prior(z))``.

Numerical safety: each norm is ``sqrt(|z|^2 + eps)``, smooth everywhere, so a slot whose latent
is exactly zero gives similarity 0 with every other slot and finite gradients (no NaN). For
latents of ordinary size (|z| >> 1e-4) the eps changes Sigma by a relative 1e-8.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cosine_similarity_matrix", "lds_prior", "off_diagonal_mean", "weighted_lds_prior"]


def cosine_similarity_matrix(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarities of the K latents of each image: (B, K, D) -> (B, K, K).

    ``eps`` is added to each squared norm before the square root (see module docstring).
    """
    if z.dim() != 3:
        raise ValueError(f"slot latents must be (B, K, D), got shape {tuple(z.shape)}")
    unit = z * torch.rsqrt(z.pow(2).sum(dim=-1, keepdim=True) + eps)
    return unit @ unit.transpose(-1, -2)


def lds_prior(slot_latents: torch.Tensor, sigma: float = 0.1, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 3 per image: sum over ordered pairs h != j of log N(Sigma_hj; 0, sigma^2) -> (B,).

    Higher is better (fewer duplicates). Differentiable; O(B K^2 D), a single batched matmul.
    """
    if sigma <= 0:
        raise ValueError(f"LDS sigma must be positive, got {sigma}")
    # fp32 even under autocast (CPU autocast would run the similarity matmul in bf16, ~1% off
    # here); the tensor is (B, K, D), so this costs nothing.
    with torch.autocast(slot_latents.device.type, enabled=False):
        wide = slot_latents.to(torch.promote_types(slot_latents.dtype, torch.float32))
        similarity = cosine_similarity_matrix(wide, eps)
    num_slots = similarity.shape[-1]
    # The off-diagonal sum of squares is the full sum minus the diagonal: no K x K mask needed.
    squares = similarity.pow(2)
    off_diagonal_sq = squares.sum(dim=(-1, -2)) - torch.diagonal(squares, dim1=-2, dim2=-1).sum(-1)
    log_norm_const = math.log(sigma) + 0.5 * math.log(2.0 * math.pi)
    num_pairs = num_slots * (num_slots - 1)
    return -off_diagonal_sq / (2.0 * sigma * sigma) - num_pairs * log_norm_const


def weighted_lds_prior(latents: torch.Tensor, weights: torch.Tensor, sigma: float = 0.1,
                       eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior as a model's objective uses it: (sum_t w_t mean_r L_LDS(z_t), per-step values).

    ``latents`` (T, R, K, D): the slot latents at each of T inference steps (T = 1 for MONet and
    GENESIS; one per refinement iteration, and per observed view, for IODINE and MulMON) for R
    rows (images, or scenes); ``weights`` (T,): the steps' weights in the ELBO. Returns the
    scalar weighted prior and the (T,) batch-mean prior of each step.
    """
    per_step = torch.stack([lds_prior(z, sigma, eps).mean() for z in latents.unbind(0)])
    return (weights.to(per_step.dtype) * per_step).sum(), per_step


def off_diagonal_mean(matrix: torch.Tensor) -> torch.Tensor:
    """Mean of the off-diagonal entries of each (..., K, K) matrix -> (...,). Zero when K = 1."""
    num_slots = matrix.shape[-1]
    if num_slots < 2:
        return matrix.new_zeros(matrix.shape[:-2])
    total = matrix.sum(dim=(-1, -2)) - torch.diagonal(matrix, dim1=-2, dim2=-1).sum(-1)
    return total / (num_slots * (num_slots - 1))
