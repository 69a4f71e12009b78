"""The one small interface every multi-object VAE implements.

Evaluation, the inference gap, figures and the trainer rely on this and on the output contract
(lds.contract) alone, so each of them is written once:

    input_keys                 the batch keys the model reads (the collate keeps only these)
    item_kind                  "images" (one item = one image) or "scenes" (a set of views)
    output_rows(batch)         rows of the ModelOutput for a batch (scenes x views for MulMON)
    forward(batch)             -> ModelOutput, its loss the negative ELBO (no LDS: the trainer
                               applies the prior to ``lds_latents``)

and, for the inference gap G = log p(x) - ELBO (lds.evaluation.gap), the model's own
probabilistic interface, built from the named steps of its forward pass:

    posterior(batch)           -> GaussianPosterior: q(z | x) after inference (the last
                               refinement step for iterative models); ``context`` holds what is
                               deterministic given x and the joint needs (MONet's attention)
    log_joint(batch, q, z)     -> (S, N): log p~(x, z) for samples z (S, N, K, D)
    sample_posterior(batch, q, S, generator) -> (z, log q(z | x)); default: the diagonal
                               Gaussian q (GENESIS overrides: its z^c proposal depends on z^m)
    gap_observed_views(V)      views of an item that are x for the gap (MulMON: the observed
                               ones; the query views are not part of the bound)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from lds.models.base import LOG_2PI


@dataclass
class GaussianPosterior:
    """q(z | x) for N items: a diagonal Gaussian, plus what the joint needs that is not z."""

    mean: torch.Tensor                     # (N, ...)
    logvar: torch.Tensor                   # (N, ...)
    context: dict[str, Any] = field(default_factory=dict)


def diagonal_gaussian_log_density(z: torch.Tensor, mean: torch.Tensor,
                                  logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over every axis after the first two: (S, N)."""
    log_density = -0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)
    return log_density.flatten(2).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over every axis after the first two: (S, N)."""
    return (-0.5 * (z ** 2 + LOG_2PI)).flatten(2).sum(-1)


class MultiObjectVAE(nn.Module, abc.ABC):
    """The base class of MONet, IODINE, MulMON and GENESIS (module docstring)."""

    input_keys: ClassVar[tuple[str, ...]] = ("image",)
    item_kind: ClassVar[str] = "images"
    num_slots: int

    def output_rows(self, batch: dict) -> int:
        return batch["image"].shape[0]

    def gap_observed_views(self, num_views: int) -> int:
        return num_views

    @abc.abstractmethod
    def posterior(self, batch: dict) -> GaussianPosterior:
        """q(z | x) of the batch (after the last refinement step for iterative models)."""

    @abc.abstractmethod
    def log_joint(self, batch: dict, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        """log p~(x, z) for each sample z (S, N, ...): (S, N)."""

    def log_q(self, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        return diagonal_gaussian_log_density(z, posterior.mean.unsqueeze(0),
                                             posterior.logvar.unsqueeze(0))

    def sample_posterior(self, batch: dict, posterior: GaussianPosterior, num_samples: int,
                         generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` draws z ~ q and their log q(z | x): ((S, N, ...), (S, N))."""
        mean, std = posterior.mean, torch.exp(0.5 * posterior.logvar)
        noise = torch.randn((num_samples, *mean.shape), generator=generator, device=mean.device,
                            dtype=mean.dtype)
        z = mean.unsqueeze(0) + std.unsqueeze(0) * noise
        return z, self.log_q(posterior, z)


__all__ = ["GaussianPosterior", "MultiObjectVAE", "diagonal_gaussian_log_density",
           "standard_normal_log_density"]
