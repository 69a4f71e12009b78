"""Reconstruction errors per image. Images are (B, 3, H, W) in [0, 1]."""

from __future__ import annotations

import torch


def mse(image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared error over pixels *and* channels, per image -> (B,)."""
    return (image - reconstruction).pow(2).flatten(1).mean(dim=1)


def rmse_mulmon(image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """MulMON's "RMSE": per pixel the L2 distance of the RGB vectors, averaged over pixels -> (B,).

    (Not the square root of :func:`mse`: the root is taken per pixel, before the mean.)
    """
    per_pixel = (image - reconstruction).pow(2).sum(dim=1).sqrt()
    return per_pixel.flatten(1).mean(dim=1)
