"""The training objective: the model's negative ELBO, and the LDS prior applied once, here.

    loss = -ELBO - lambda * sum_t w_t mean_r L_LDS(z_t)        (Eq. 4, per inference step for
                                                               IODINE and MulMON: supplement A)

Every model returns its negative ELBO as ``ModelOutput.loss`` and the latents the prior applies
to (``lds_latents``, with the steps' weights ``lds_weights``); none of them knows about LDS.
"""

from __future__ import annotations

import torch

from common.errors import ConfigError
from lds.contract import ModelOutput
from lds.prior import weighted_lds_prior


def training_objective(out: ModelOutput, lds) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, the weighted LDS prior value) for one forward pass. ``lds``: the run's
    ``LDSConfig`` (enabled, weight, sigma, latents: samples or posterior means, from_iteration:
    the first refinement iteration it applies to); off, the prior is a detached zero and the loss
    is the model's own."""
    if not lds.enabled or lds.weight == 0:
        return out.loss, out.loss.new_zeros(())
    latents = out.lds_means if lds.latents == "mean" else out.lds_latents
    weights = out.lds_weights
    if lds.from_iteration > 0:
        applied = out.lds_iterations.to(weights.device) >= lds.from_iteration
        if not bool(applied.any()):
            raise ConfigError(f"lds.from_iteration={lds.from_iteration} leaves no inference step "
                              f"to apply the prior to: this model's iterations are 0.."
                              f"{int(out.lds_iterations.max())}")
        weights = weights * applied.to(weights.dtype)
    prior, _ = weighted_lds_prior(latents, weights, lds.sigma)
    return out.loss - lds.weight * prior, prior


@torch.no_grad()
def prior_per_iteration(out: ModelOutput, lds) -> torch.Tensor | None:
    """The batch-mean LDS prior of each refinement iteration, (I,), on the latents the run's
    prior applies to (for MulMON averaged over the observed views), or None where LDS is off
    or the model has one inference step. What the trainer logs to show whether LDS acts early
    or late in inference, and whether it rises over training."""
    if not lds.enabled or lds.weight == 0 or out.lds_latents.shape[0] < 2:
        return None
    latents = out.lds_means if lds.latents == "mean" else out.lds_latents
    _, per_step = weighted_lds_prior(latents.detach(), out.lds_weights, lds.sigma)
    return out.per_iteration(per_step)
