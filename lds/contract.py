"""The one output contract every model (MONet, IODINE, MulMON, GENESIS) returns.

LDS, the metrics, the figures and the training loop are written once against this contract.
It is checked on every training step (cheap: shapes and dtypes only), so a model that drifts
from it fails at once with a message naming the field, not later inside a metric.

Shapes (B images, K slots, D latent size, H x W pixels):

    loss             ()            the scalar that is minimised: -ELBO - lambda * L_LDS (Eq. 4)
    loss_terms       dict[str, ()] every named term that makes up ``loss`` (detached copies for
                                   logging are taken by the trainer), e.g. ``nll``, ``kl_z``,
                                   ``kl_mask``, ``lds``; ``lds`` is the *prior* value (Eq. 3,
                                   higher is better) before weighting, 0 when LDS is off
    slot_latents     (B, K, D)     the latents LDS sees (samples z_k ~ q during training)
    posterior_mean   (B, K, D)     mean of q(z_k | x) (after the last refinement step for
                                   iterative models)
    posterior_logvar (B, K, D)     log-variance of q(z_k | x)
    mask_logits      (B, K, 1, H, W)  unnormalised mask logits m_k^lg (supplement, section B)
    masks            (B, K, 1, H, W)  mixing probabilities, softmax over K (sum to 1 per pixel)
    appearance       (B, K, 3, H, W)  per-slot RGB means x_k in [0, 1] (or unbounded for MulMON)
    reconstruction   (B, 3, H, W)  sum_k masks * appearance
    segmentation_masks (B, K, 1, H, W)  the masks the model segments with (their per-pixel
                                   argmax is its segmentation); default ``masks``. MONet sets
                                   its attention masks, which its likelihood mixes with
    segmentation_source str        what those masks are, for labels ("decoded masks",
                                   "attention masks")
    lds_latents      (T, R, K, D)  the latents the LDS prior applies to at each of T inference
                                   steps, for R rows (images, or scenes), in the graph; default
                                   ``slot_latents[None]``. The trainer applies the prior, once,
                                   to these (lds.training.objective); the models know no LDS
    lds_means        (T, R, K, D)  the posterior means of the same steps (what ``lds.latents=mean``
                                   applies the prior to); default ``posterior_mean[None]``
    lds_weights      (T,)          the steps' weights in the ELBO (default: one step, 1)
    lds_iterations   (T,) long     each step's refinement iteration (default 0 .. T-1): MulMON
                                   runs the same iterations once per observed view, so its
                                   per-iteration figures average over the views
    query_rows       (B,) bool     multi-view models: which rows are query (unobserved) views;
                                   None for single-image models
    masks_partition  bool          True when the decoded masks split the image by construction
                                   and no component has a mask of its own (GENESIS's stick-
                                   breaking: mask_logits = log pi_k, whose sigmoid means nothing
                                   alone). Each component "alone" is then its share pi_k, and
                                   duplicates are counted on the argmax segments, as for MONet's
                                   attention masks (docs/evaluation.md)

Multi-view models flatten views into the batch axis for every image-shaped field
(B = scenes * views) and keep their latents per scene-view pair the same way, so metrics and
figures need no special case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CONTRACT_FIELDS = (
    "loss", "loss_terms", "slot_latents", "posterior_mean", "posterior_logvar",
    "mask_logits", "masks", "appearance", "reconstruction",
)


class ContractError(AssertionError):
    """A model returned something that breaks the output contract (a bug, not a user error)."""


@dataclass
class ModelOutput:
    loss: torch.Tensor
    loss_terms: dict[str, torch.Tensor]
    slot_latents: torch.Tensor
    posterior_mean: torch.Tensor
    posterior_logvar: torch.Tensor
    mask_logits: torch.Tensor
    masks: torch.Tensor
    appearance: torch.Tensor
    reconstruction: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # model-specific, optional
    segmentation_masks: torch.Tensor | None = None                 # None: the decoded masks
    segmentation_source: str = "decoded masks"
    lds_latents: torch.Tensor | None = None                        # None: slot_latents[None]
    lds_means: torch.Tensor | None = None                          # None: posterior_mean[None]
    lds_weights: torch.Tensor | None = None                        # None: one step, weight 1
    lds_iterations: torch.Tensor | None = None                     # None: 0 .. T-1
    query_rows: torch.Tensor | None = None                         # multi-view models only
    masks_partition: bool = False                                  # GENESIS: see the docstring

    def __post_init__(self) -> None:
        if self.segmentation_masks is None:
            self.segmentation_masks = self.masks
        if self.lds_latents is None:
            self.lds_latents = self.slot_latents.unsqueeze(0)
        if self.lds_means is None:
            self.lds_means = self.posterior_mean.unsqueeze(0)
        if self.lds_weights is None:
            self.lds_weights = self.slot_latents.new_ones(self.lds_latents.shape[0])
        if self.lds_iterations is None:
            self.lds_iterations = torch.arange(self.lds_latents.shape[0])

    def per_iteration(self, per_step: torch.Tensor) -> torch.Tensor:
        """(T, ...) values of the inference steps -> (I, ...): the mean over the steps of each
        refinement iteration 0 .. I-1 (for MulMON, over its observed views)."""
        iterations = self.lds_iterations.to(per_step.device)
        count = int(iterations.max()) + 1
        sums = per_step.new_zeros((count, *per_step.shape[1:])).index_add_(0, iterations, per_step)
        steps = torch.bincount(iterations, minlength=count).to(per_step.dtype)
        return sums / steps.view(-1, *([1] * (per_step.dim() - 1)))

    @property
    def segments_with_decoded_masks(self) -> bool:
        return self.segmentation_masks is self.masks

    def detached(self) -> "ModelOutput":
        """A copy with every tensor detached (evaluation: nothing keeps a graph alive). The
        decoded masks stay the segmenting masks when they were."""
        import dataclasses

        def cut(value):
            if isinstance(value, torch.Tensor):
                return value.detach()
            if isinstance(value, dict):
                return {k: cut(v) for k, v in value.items()}
            return value

        fields = {f.name: cut(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if self.segments_with_decoded_masks:
            fields["segmentation_masks"] = fields["masks"]
        return ModelOutput(**fields)

    def check(self, batch_size: int, num_slots: int, height: int, width: int) -> "ModelOutput":
        """Raise ContractError unless every field has the documented shape."""
        B, K, H, W = batch_size, num_slots, height, width

        def expect(name: str, tensor: torch.Tensor, shape: tuple) -> None:
            if not isinstance(tensor, torch.Tensor):
                raise ContractError(f"{name} must be a tensor, got {type(tensor).__name__}")
            if tuple(tensor.shape) != shape:
                raise ContractError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")

        expect("loss", self.loss, ())
        if not self.loss_terms:
            raise ContractError("loss_terms is empty")
        for key, value in self.loss_terms.items():
            expect(f"loss_terms[{key!r}]", value, ())
        D = self.slot_latents.shape[-1] if self.slot_latents.dim() == 3 else -1
        expect("slot_latents", self.slot_latents, (B, K, D))
        expect("posterior_mean", self.posterior_mean, (B, K, D))
        expect("posterior_logvar", self.posterior_logvar, (B, K, D))
        expect("mask_logits", self.mask_logits, (B, K, 1, H, W))
        expect("masks", self.masks, (B, K, 1, H, W))
        expect("appearance", self.appearance, (B, K, 3, H, W))
        expect("reconstruction", self.reconstruction, (B, 3, H, W))
        expect("segmentation_masks", self.segmentation_masks, (B, K, 1, H, W))
        T = self.lds_latents.shape[0] if self.lds_latents.dim() == 4 else -1
        R = self.lds_latents.shape[1] if self.lds_latents.dim() == 4 else -1
        expect("lds_latents", self.lds_latents, (T, R, K, D))
        expect("lds_means", self.lds_means, (T, R, K, D))
        expect("lds_weights", self.lds_weights, (T,))
        expect("lds_iterations", self.lds_iterations, (T,))
        if self.lds_iterations.dtype != torch.long:
            raise ContractError(f"lds_iterations must be long, got {self.lds_iterations.dtype}")
        if self.query_rows is not None:
            expect("query_rows", self.query_rows, (B,))
        return self
