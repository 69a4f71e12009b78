"""GENESIS (Engelcke et al., ICLR 2020) on the shared output contract, with optional LDS.

Generative model, per image, for slots k = 1..K:

    z^m_k ~ p(z^m_k | z^m_{1:k-1})   an LSTM over the previous mask latents (p(z^m_1) = N(0, I))
    alpha_k = MaskDecoder(z^m_k)       spatial broadcast decoder -> one logit per pixel
    pi_k    = s_{k-1} sigmoid(alpha_k), s_k = s_{k-1} (1 - sigmoid(alpha_k)), s_0 = 1;
              the last slot takes the remaining scope, pi_K = s_{K-1}   (stick breaking)
    z^c_k ~ p(z^c_k | z^m_k)          an MLP on z^m_k
    mu_k    = sigmoid(ComponentDecoder(z^c_k))
    x       ~ sum_k pi_k N(mu_k, sigma_x^2 I)      (each pixel's RGB vector is one draw)

Inference: q(z^m_{1:K} | x) - an image encoder, then an LSTM run for K steps on the encoding
whose state carries the autoregression, a linear head per step -> (mean, std); q(z^c_k | x, pi_k)
- a component encoder on (image, log pi_k), all B*K slots in one batched call. Standard
deviations are softplus(raw + 0.5) + 1e-8 as in the original code.

Loss, per image, averaged over the batch (single-sample estimates of the KLs, since the priors
are autoregressive / conditional):

    NLL + beta * (KL_m + KL_c) - lambda * L_LDS([z^m_k, z^c_k])

with beta from GECO (``geco=True``, the original default: beta is a Lagrange multiplier updated
after every training step from a moving average of the NLL against a goal, and stored as a
buffer so checkpoints resume it) or fixed (``geco=False``).

LDS sees ``slot_latents = [z^m_k, z^c_k]`` (concatenated, D = mask + component latent size): the
slot's whole representation, as the contract's posterior_mean / posterior_logvar are too. Two
slots that duplicate one object have near-identical masks and appearance, so both halves agree.

Contract: ``mask_logits = log pi_k`` (their softmax over slots is pi itself), ``masks = pi``,
``appearance = mu_k``, ``reconstruction = sum_k pi_k mu_k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from common.errors import ConfigError
from lds.contract import ModelOutput
from lds.models.interface import GaussianPosterior, MultiObjectVAE
from lds.models.base import LOG_2PI, SpatialBroadcastDecoder, conv_output_size, gaussian_log_density


@dataclass
class GENESISConfig:
    """GENESIS's architecture and loss. Defaults follow the original code's settings (see docs)."""

    name: Literal["genesis"] = "genesis"
    height: int = 64
    width: int = 64
    num_slots: int = 7                                  # K ("K_steps")
    mask_latent_dim: int = 64                           # z^m
    comp_latent_dim: int = 16                           # z^c
    encoder_channels: tuple[int, ...] = (32, 32, 64, 64)   # 3x3 stride-2 convs, ReLU
    encoder_hidden: int = 256
    lstm_hidden: int = 256
    mask_decoder_channels: tuple[int, ...] = (32, 32, 32, 32)
    comp_encoder_channels: tuple[int, ...] = (32, 32, 64, 64)
    comp_encoder_hidden: int = 256
    comp_decoder_channels: tuple[int, ...] = (32, 32, 32, 32)
    comp_prior_hidden: int = 256
    pixel_std: float = 0.7                              # sigma_x (0.7 with GECO, the original)
    beta: float = 1.0                                   # KL weight when geco is off
    # GECO (Rezende & Viola 2018) as the original trains GENESIS: goal per pixel and channel.
    geco: bool = True
    geco_goal: float = 0.5655
    geco_step_size: float = 1e-5
    geco_alpha: float = 0.99
    geco_beta_init: float = 1.0
    geco_beta_min: float = 1e-10
    geco_speedup: float = 10.0
    channels_last: bool = True
    fused_broadcast: bool = True
    # CPU: the decoder's conv trunk as one chunked, ReLU-fused op (lds/models/fused_decoder.py).
    fused_decoder: bool = True

    def __post_init__(self) -> None:
        for key in ("encoder_channels", "mask_decoder_channels", "comp_encoder_channels",
                    "comp_decoder_channels"):
            setattr(self, key, tuple(getattr(self, key)))
        if self.num_slots < 2:
            raise ConfigError(f"model.num_slots must be at least 2, got {self.num_slots}")
        if min(self.mask_latent_dim, self.comp_latent_dim) < 1:
            raise ConfigError("model.mask_latent_dim and model.comp_latent_dim must be positive")
        if self.pixel_std <= 0:
            raise ConfigError("model.pixel_std must be positive")
        for key in ("encoder_channels", "comp_encoder_channels"):
            h, w = self.height, self.width
            for _ in getattr(self, key):
                h, w = conv_output_size(h, 3, 2), conv_output_size(w, 3, 2)
            if h < 1 or w < 1:
                raise ConfigError(f"{self.height}x{self.width} images are too small for "
                                  f"model.{key} ({len(getattr(self, key))} stride-2 convs)")


def conv_stack(in_channels: int, channels: Sequence[int], height: int, width: int):
    """3x3 stride-2 unpadded convs with ReLU -> (module, flattened feature size)."""
    layers: list[nn.Module] = []
    h, w, in_ch = height, width, in_channels
    for out_ch in channels:
        layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2), nn.ReLU(inplace=True)]
        h, w, in_ch = conv_output_size(h, 3, 2), conv_output_size(w, 3, 2), out_ch
    return nn.Sequential(*layers, nn.Flatten()), in_ch * h * w


def std_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """The original code's scale parametrisation: softplus(raw + 0.5) + 1e-8."""
    return F.softplus(raw + 0.5) + 1e-8


def normal_log_density(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, std^2) summed over the last dim."""
    return gaussian_log_density(z, mean, std).sum(-1)


class GENESIS(MultiObjectVAE):
    """GENESIS. ``model(batch) -> ModelOutput``; uses ``batch["image"]``."""

    def __init__(self, cfg: GENESISConfig):
        super().__init__()
        self.cfg = cfg
        self.num_slots = cfg.num_slots
        dm, dc = cfg.mask_latent_dim, cfg.comp_latent_dim
        # Mask inference: image encoder -> LSTM over K steps -> (mean, raw std) of z^m_k.
        convs, flat = conv_stack(3, cfg.encoder_channels, cfg.height, cfg.width)
        self.image_encoder = nn.Sequential(convs, nn.Linear(flat, cfg.encoder_hidden),
                                           nn.ReLU(inplace=True))
        self.posterior_lstm = nn.LSTM(cfg.encoder_hidden, cfg.lstm_hidden, batch_first=True)
        self.posterior_head = nn.Linear(cfg.lstm_hidden, 2 * dm)
        # Autoregressive mask prior p(z^m_k | z^m_{<k}): LSTM on z^m_{k-1}.
        self.prior_lstm = nn.LSTM(dm, cfg.lstm_hidden, batch_first=True)
        self.prior_head = nn.Linear(cfg.lstm_hidden, 2 * dm)
        self.mask_decoder = SpatialBroadcastDecoder(dm, cfg.height, cfg.width,
                                                    cfg.mask_decoder_channels, 1,
                                                    cfg.fused_broadcast, cfg.channels_last,
                                                    cfg.fused_decoder)
        # Component VAE conditioned on the mask: q(z^c_k | x, log pi_k), p(z^c_k | z^m_k).
        convs, flat = conv_stack(4, cfg.comp_encoder_channels, cfg.height, cfg.width)
        self.comp_encoder = nn.Sequential(convs, nn.Linear(flat, cfg.comp_encoder_hidden),
                                          nn.ReLU(inplace=True),
                                          nn.Linear(cfg.comp_encoder_hidden, 2 * dc))
        self.comp_prior = nn.Sequential(nn.Linear(dm, cfg.comp_prior_hidden), nn.ReLU(inplace=True),
                                        nn.Linear(cfg.comp_prior_hidden, 2 * dc))
        self.comp_decoder = SpatialBroadcastDecoder(dc, cfg.height, cfg.width,
                                                    cfg.comp_decoder_channels, 3,
                                                    cfg.fused_broadcast, cfg.channels_last,
                                                    cfg.fused_decoder)
        # GECO state (persistent: a resumed run continues the same beta); NaN = no average yet.
        self.register_buffer("geco_beta", torch.tensor(float(cfg.geco_beta_init)))
        self.register_buffer("geco_err_ema", torch.tensor(float("nan")))

    def _memory_format(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else t

    @staticmethod
    def stick_breaking(alpha: torch.Tensor) -> torch.Tensor:
        """Mask logits alpha (B, K, 1, H, W) -> log pi (B, K, 1, H, W), in log space.

        log pi_k = sum_{j<k} log(1 - sigmoid(alpha_j)) + log sigmoid(alpha_k) for k < K, and the
        last slot takes the remaining scope: log pi_K = sum_{j<K} log(1 - sigmoid(alpha_j)).
        """
        log_keep = F.logsigmoid(alpha[:, :-1])                    # log sigmoid(alpha_k), k < K
        log_pass = F.logsigmoid(-alpha[:, :-1])                   # log (1 - sigmoid(alpha_k))
        log_scope = torch.cumsum(log_pass, dim=1)                 # log s_k, k = 1..K-1
        log_scope_before = torch.cat([torch.zeros_like(log_scope[:, :1]), log_scope[:, :-1]], 1)
        return torch.cat([log_scope_before + log_keep, log_scope[:, -1:]], dim=1)

    # ---- the named steps of GENESIS's forward pass (the gap's q and joint reuse them) ------
    # .float() casts: no-ops in fp32; under bf16 autocast the densities and KLs stay fp32.
    def mask_posterior(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z^m | x): the posterior LSTM sees the image encoding at every one of the K steps
        -> mean, std (B, K, Dm)."""
        b, k = image.shape[0], self.num_slots
        features = self.image_encoder(self._memory_format(image))            # (B, F)
        hidden, _ = self.posterior_lstm(features.unsqueeze(1).expand(b, k, features.shape[1]))
        mask_mean, mask_raw = self.posterior_head(hidden).float().chunk(2, dim=-1)
        return mask_mean, std_from_raw(mask_raw)

    def mask_prior(self, z_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The autoregressive p(z^m_k | z^m_{<k}) (teacher forcing: one LSTM call for all
        steps; p(z^m_1) = N(0, I)) -> mean, std (N, K, Dm)."""
        prior_hidden, _ = self.prior_lstm(z_mask[:, :-1])
        prior_mean, prior_raw = self.prior_head(prior_hidden).float().chunk(2, dim=-1)
        prior_mean = torch.cat([torch.zeros_like(z_mask[:, :1]), prior_mean], dim=1)
        prior_std = torch.cat([torch.ones_like(z_mask[:, :1]), std_from_raw(prior_raw)], dim=1)
        return prior_mean, prior_std

    def log_masks_of(self, z_mask: torch.Tensor) -> torch.Tensor:
        """z^m (N, K, Dm) -> log pi (N, K, 1, H, W): stick breaking on the decoded logits."""
        n, k, dm = z_mask.shape
        cfg = self.cfg
        alpha = self.mask_decoder(z_mask.reshape(n * k, dm)).float().view(n, k, 1, cfg.height, cfg.width)
        return self.stick_breaking(alpha)

    def component_posterior(self, image: torch.Tensor, log_masks: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z^c | x, log pi) for (N, 3, H, W) images and their log masks -> mean, std (N, K, Dc)."""
        n, c, h, w = image.shape
        k, dc = self.num_slots, self.cfg.comp_latent_dim
        enc_in = torch.cat([image.unsqueeze(1).expand(n, k, c, h, w), log_masks], dim=2)
        comp_mean, comp_raw = self.comp_encoder(
            self._memory_format(enc_in.reshape(n * k, c + 1, h, w))).float().view(n, k, 2 * dc).chunk(2, -1)
        return comp_mean, std_from_raw(comp_raw)

    def component_prior(self, z_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z^c_k | z^m_k) -> mean, std (N, K, Dc)."""
        comp_prior_mean, comp_prior_raw = self.comp_prior(z_mask).float().chunk(2, dim=-1)
        return comp_prior_mean, std_from_raw(comp_prior_raw)

    def appearance_of(self, z_comp: torch.Tensor) -> torch.Tensor:
        """z^c (N, K, Dc) -> RGB means (N, K, 3, H, W) in [0, 1]."""
        n, k, dc = z_comp.shape
        cfg = self.cfg
        return torch.sigmoid(self.comp_decoder(z_comp.reshape(n * k, dc)).float()).view(
            n, k, 3, cfg.height, cfg.width)

    def log_likelihood(self, image: torch.Tensor, appearance: torch.Tensor,
                       log_masks: torch.Tensor) -> torch.Tensor:
        """log p(x | z): Eq. 1 with one pixel std for every slot -> (N,)."""
        sigma = self.cfg.pixel_std
        log_comp = (-0.5 / sigma**2) * (image.unsqueeze(1) - appearance).pow(2).sum(2, keepdim=True) \
            - 3 * (math.log(sigma) + 0.5 * LOG_2PI)
        return torch.logsumexp(log_masks + log_comp, dim=1).flatten(1).sum(1)

    def forward(self, batch: dict) -> ModelOutput:
        cfg = self.cfg
        image = batch["image"]
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"batch['image'] must be (B, 3, H, W), got {tuple(image.shape)}")
        b, c, h, w = image.shape
        if (h, w) != (cfg.height, cfg.width):
            raise ValueError(f"GENESIS was built for {cfg.height}x{cfg.width} images, got {h}x{w}")
        sample = self.training

        mask_mean, mask_std = self.mask_posterior(image)                     # (B, K, Dm)
        z_mask = mask_mean + mask_std * torch.randn_like(mask_std) if sample else mask_mean
        prior_mean, prior_std = self.mask_prior(z_mask)
        log_masks = self.log_masks_of(z_mask)
        comp_mean, comp_std = self.component_posterior(image, log_masks)
        z_comp = comp_mean + comp_std * torch.randn_like(comp_std) if sample else comp_mean
        comp_prior_mean, comp_prior_std = self.component_prior(z_mask)
        appearance = self.appearance_of(z_comp)

        nll = -self.log_likelihood(image, appearance, log_masks).mean()
        kl_mask = (normal_log_density(z_mask, mask_mean, mask_std)
                   - normal_log_density(z_mask, prior_mean, prior_std)).sum(1).mean()
        kl_comp = (normal_log_density(z_comp, comp_mean, comp_std)
                   - normal_log_density(z_comp, comp_prior_mean, comp_prior_std)).sum(1).mean()

        slot_latents = torch.cat([z_mask, z_comp], dim=-1)
        beta = self._kl_weight(nll)
        loss = nll + beta * (kl_mask + kl_comp)

        masks = log_masks.exp()
        return ModelOutput(
            loss=loss,
            loss_terms={"nll": nll, "kl_mask": kl_mask, "kl_comp": kl_comp},
            slot_latents=slot_latents,
            posterior_mean=torch.cat([mask_mean, comp_mean], dim=-1),
            posterior_logvar=2.0 * torch.log(torch.cat([mask_std, comp_std], dim=-1)),
            mask_logits=log_masks,
            masks=masks,
            appearance=appearance,
            reconstruction=(masks * appearance).sum(1),
            extras={"kl_weight": torch.as_tensor(beta, dtype=image.dtype).detach()},
        )

    # ---- the probabilistic interface (lds.models.interface) -------------------------------
    # z_k = [z^m_k, z^c_k] (the slot latents), q sequential as in the model:
    #     q(z | x) = q(z^m_{1:K} | x) prod_k q(z^c_k | x, pi_k(z^m))
    # the mask posterior is a fixed diagonal Gaussian given x (its LSTM runs on the image
    # encoding, not on sampled latents); the component posterior is re-encoded from
    # (x, log pi_k) for every sampled z^m. The joint is GENESIS's generative model,
    #     log p~(x, z) = log sum_k pi_k(z^m) N(x; mu_k(z^c_k), sigma_x^2 I)
    #                    + log p(z^m_{1:K}) (autoregressive) + sum_k log p(z^c_k | z^m_k)
    # so ELBO = -(nll + kl_mask + kl_comp): GENESIS's loss at beta = 1 (no GECO), no LDS.

    def posterior(self, batch: dict) -> GaussianPosterior:
        mask_mean, mask_std = self.mask_posterior(batch["image"])
        return GaussianPosterior(mask_mean, 2.0 * torch.log(mask_std))

    def _q_given_masks(self, batch: dict, posterior: GaussianPosterior, z_mask: torch.Tensor,
                       z_comp: torch.Tensor | None = None, generator=None):
        """(z = [z^m, z^c], log q(z | x)) for z^m (S, N, K, Dm); z^c drawn when not given."""
        s, n, k, dm = z_mask.shape
        image = batch["image"]
        images = image.unsqueeze(0).expand(s, *image.shape).reshape(s * n, *image.shape[1:])
        log_masks = self.log_masks_of(z_mask.reshape(s * n, k, dm))
        comp_mean, comp_std = (t.view(s, n, k, -1) for t in self.component_posterior(images, log_masks))
        if z_comp is None:
            noise = torch.randn(comp_mean.shape, generator=generator, device=comp_mean.device,
                                dtype=comp_mean.dtype)
            z_comp = comp_mean + comp_std * noise
        mask_std = torch.exp(0.5 * posterior.logvar).unsqueeze(0)
        log_q = (normal_log_density(z_mask, posterior.mean.unsqueeze(0), mask_std)
                 + normal_log_density(z_comp, comp_mean, comp_std)).sum(-1)
        z = torch.cat([z_mask, z_comp], dim=-1)
        posterior.context["decoded"] = (z, log_masks)      # log_joint reuses these masks
        return z, log_q

    def sample_posterior(self, batch, posterior, num_samples, generator=None):
        mean, std = posterior.mean, torch.exp(0.5 * posterior.logvar)
        noise = torch.randn((num_samples, *mean.shape), generator=generator, device=mean.device,
                            dtype=mean.dtype)
        return self._q_given_masks(batch, posterior, mean.unsqueeze(0) + std.unsqueeze(0) * noise,
                                   generator=generator)

    def log_q(self, posterior, z):
        """log q(z | x) needs the model (z^c's proposal depends on z^m): use log_q_at."""
        raise NotImplementedError("GENESIS's q depends on the batch: use log_q_at(batch, q, z)")

    def log_q_at(self, batch: dict, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        """log q(z | x) for given z = [z^m, z^c] (S, N, K, Dm + Dc): (S, N)."""
        z_mask, z_comp = z.split([self.cfg.mask_latent_dim, self.cfg.comp_latent_dim], dim=-1)
        return self._q_given_masks(batch, posterior, z_mask, z_comp)[1]

    def log_joint(self, batch: dict, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        image = batch["image"]
        s, n, k, _ = z.shape
        z_mask, z_comp = z.split([cfg.mask_latent_dim, cfg.comp_latent_dim], dim=-1)
        flat_mask = z_mask.reshape(s * n, k, cfg.mask_latent_dim)
        decoded = posterior.context.get("decoded")
        log_masks = decoded[1] if decoded is not None and decoded[0] is z else self.log_masks_of(flat_mask)
        prior_mean, prior_std = self.mask_prior(flat_mask)
        log_p_mask = normal_log_density(flat_mask, prior_mean, prior_std).sum(1)
        comp_prior_mean, comp_prior_std = self.component_prior(z_mask)
        log_p_comp = normal_log_density(z_comp, comp_prior_mean, comp_prior_std).sum(-1)
        appearance = self.appearance_of(z_comp.reshape(s * n, k, -1))
        images = image.unsqueeze(0).expand(s, *image.shape).reshape(s * n, *image.shape[1:])
        log_lik = self.log_likelihood(images, appearance, log_masks)
        return (log_lik + log_p_mask).view(s, n) + log_p_comp

    def _kl_weight(self, nll: torch.Tensor) -> torch.Tensor | float:
        """The KL weight of this step: GECO's beta (then updated, in training only) or cfg.beta.

        GECO as in the original: err_ema <- alpha err_ema + (1 - alpha) err; constraint =
        goal - err_ema with goal = geco_goal * 3 * H * W; beta <- beta exp(step * constraint)
        (times ``speedup`` while the constraint is satisfied), clamped to [beta_min, 1e10].
        A non-finite NLL leaves the state alone (the NaN guard then stops the run).
        """
        cfg = self.cfg
        if not cfg.geco:
            return cfg.beta
        beta = self.geco_beta.clone()
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                err = nll.detach().clone()
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    # Data-parallel: GECO follows the global batch's error, the same on every rank.
                    torch.distributed.all_reduce(err)
                    err /= torch.distributed.get_world_size()
                if torch.isfinite(err):
                    ema = self.geco_err_ema
                    ema = err if torch.isnan(ema) else cfg.geco_alpha * ema + (1 - cfg.geco_alpha) * err
                    constraint = cfg.geco_goal * 3 * cfg.height * cfg.width - ema
                    step = cfg.geco_step_size * (cfg.geco_speedup if constraint > 0 else 1.0)
                    self.geco_err_ema.copy_(ema)
                    self.geco_beta.copy_((self.geco_beta * torch.exp(step * constraint))
                                         .clamp(cfg.geco_beta_min, 1e10))
        return beta
