"""GENESIS (Engelcke et al., ICLR 2020) on the shared output contract, with optional LDS.

Follows the official code, applied-ai-lab/genesis (commit 9abf202; docs/models.md lists what
was checked and the remaining departures). Generative model, per image, for slots k = 1..K:

    z^m_k ~ p(z^m_k | z^m_{1:k-1})   an LSTM over the previous mask latents (p(z^m_1) = N(0, I))
    alpha_k = MaskDecoder(z^m_k)       gated deconvolutions with batch norm -> one logit per pixel
    pi_k    = s_{k-1} sigmoid(alpha_k), s_k = s_{k-1} (1 - sigmoid(alpha_k)), s_0 = 1;
              the last slot takes the remaining scope, pi_K = s_{K-1}   (stick breaking)
    z^c_k ~ p(z^c_k | z^m_k)          an MLP on z^m_k
    mu_k    = sigmoid(ComponentDecoder(z^c_k))   spatial broadcast decoder, ELU
    x_c     ~ sum_k pi_k N(mu_kc, sigma_x^2)     every pixel's every colour channel its own draw

Inference: q(z^m_{1:K} | x) = prod_k q(z^m_k | x, z^m_{<k}) - a gated-conv image encoder gives
features h; z^m_1 from a linear head on h, z^m_k (k > 1) from an LSTM fed [h, z^m_{k-1}] (the
sampled latent); q(z^c_k | x, pi_k) - a component encoder on (log pi_k, image), all B*K slots
in one batched call. Posterior standard deviations are softplus(raw + 0.5) + 1e-8, the learned
priors' sigmoid(raw + 4) + 1e-4 with tanh means, as in the original.

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

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from common.errors import ConfigError
from lds.contract import ModelOutput
from lds.models.interface import GaussianPosterior, MultiObjectVAE
from lds.models.base import SpatialBroadcastDecoder, check_image_batch, conv_output_size, \
    gaussian_log_density, mixture_log_likelihood


@dataclass
class GENESISConfig:
    """GENESIS's architecture and loss. Defaults are the original code's (see docs/models.md)."""

    name: Literal["genesis"] = "genesis"
    height: int = 64
    width: int = 64
    num_slots: int = 7                                  # K ("K_steps"; GQN's and Objects Room's)
    mask_latent_dim: int = 64                           # z^m ("attention_latents")
    comp_latent_dim: int = 16                           # z^c ("comp_ldim")
    # Mask VAE: gated 5x5 convs (32, 32, 64, 64, 64) with these strides, then a gated conv whose
    # kernel covers the remaining map -> mask_encoder_hidden features; the decoder mirrors it:
    # a gated deconv from z^m to that map (first channel count), then a gated 5x5 deconv per
    # stride, reversed. The original's strides are (1, 2, 1, 2, 1) at 32x32 and 64x64.
    mask_encoder_channels: tuple[int, ...] = (32, 32, 64, 64, 64)
    mask_strides: tuple[int, ...] = (1, 2, 1, 2, 1)
    mask_encoder_hidden: int = 256
    mask_decoder_channels: tuple[int, ...] = (64, 64, 32, 32, 32, 32)
    batch_norm: bool = True                             # the mask VAE's ("enc_norm/dec_norm: bn")
    prior_lstm_hidden: int = 256                        # p(z^m_k | z^m_{<k})
    comp_encoder_channels: tuple[int, ...] = (32, 32, 64, 64)   # 3x3 stride-2 padded, ELU
    comp_encoder_hidden: int = 256
    comp_decoder_channels: tuple[int, ...] = (32, 32, 32, 32)   # broadcast decoder, ELU
    comp_prior_hidden: int = 256                        # p(z^c_k | z^m_k): two hidden layers
    pixel_std: float = 0.7                              # sigma_x ("pixel_std1/2")
    # The mixture over components, as MONetConfig.likelihood: "channel" (the original's x_loss,
    # the default) or "pixel" (the LDS paper's Eq. 1). MulMON's per-channel mixture is what kept
    # its slots from taking objects' colours at CPU scale (docs/results/mulmon_cpu_regime).
    likelihood: Literal["channel", "pixel"] = "channel"
    beta: float = 0.5                                   # KL weight when geco is off (train.py)
    # GECO (Rezende & Viola 2018) as the original trains GENESIS: goal per pixel and channel;
    # step size at 64x64, scaled by 64^2 / (H W) as the original scales it.
    geco: bool = True
    geco_goal: float = 0.5655
    geco_step_size: float = 1e-5
    geco_alpha: float = 0.99
    geco_beta_init: float = 1.0
    geco_beta_min: float = 1e-10
    geco_speedup: float = 10.0
    channels_last: bool = True
    # The component decoder's first conv without materialising the tiled latent (same function).
    fused_broadcast: bool = True

    def __post_init__(self) -> None:
        for key in ("mask_encoder_channels", "mask_strides", "mask_decoder_channels",
                    "comp_encoder_channels", "comp_decoder_channels"):
            setattr(self, key, tuple(getattr(self, key)))
        if self.num_slots < 2:
            raise ConfigError(f"model.num_slots must be at least 2, got {self.num_slots}")
        if min(self.mask_latent_dim, self.comp_latent_dim) < 1:
            raise ConfigError("model.mask_latent_dim and model.comp_latent_dim must be positive")
        if self.likelihood not in ("channel", "pixel"):
            raise ConfigError(f"model.likelihood must be channel or pixel, got {self.likelihood!r}")
        if self.pixel_std <= 0:
            raise ConfigError("model.pixel_std must be positive")
        if not set(self.mask_strides) <= {1, 2}:
            raise ConfigError(f"model.mask_strides must be 1s and 2s, got {self.mask_strides}")
        if len(self.mask_encoder_channels) != len(self.mask_strides) or \
                len(self.mask_decoder_channels) != len(self.mask_strides) + 1:
            raise ConfigError("model.mask_encoder_channels needs one entry per mask stride and "
                              "model.mask_decoder_channels one more")
        scale = 2 ** self.mask_strides.count(2)
        if self.height % scale or self.width % scale:
            raise ConfigError(f"{self.height}x{self.width} images must divide by {scale} for "
                              f"model.mask_strides {self.mask_strides}")
        if not (self.comp_encoder_channels and self.comp_decoder_channels):
            raise ConfigError("model.comp_encoder_channels and comp_decoder_channels need a layer")

    @property
    def mask_feature_size(self) -> tuple[int, int]:
        """The mask encoder's last feature map (the kernel of its final conv): H, W / 2^#2s."""
        scale = 2 ** self.mask_strides.count(2)
        return self.height // scale, self.width // scale


def gated(conv: nn.Module, channels: int, batch_norm: bool) -> list[nn.Module]:
    """A gated layer: ``conv`` gives 2 x channels, h * sigmoid(g) (nn.GLU). Batch norm of the
    2 x channels is the original's separate norms of h and g (both are per channel)."""
    return [conv, nn.BatchNorm2d(2 * channels) if batch_norm else nn.Identity(), nn.GLU(dim=1)]


def mask_encoder(cfg: GENESISConfig) -> nn.Sequential:
    """Image (3, H, W) -> features (mask_encoder_hidden,): the original's gated-conv encoder."""
    layers: list[nn.Module] = []
    in_ch = 3
    for out_ch, stride in zip(cfg.mask_encoder_channels, cfg.mask_strides):
        layers += gated(nn.Conv2d(in_ch, 2 * out_ch, 5, stride, 2), out_ch, cfg.batch_norm)
        in_ch = out_ch
    # The last gated conv covers the whole remaining map and has no norm.
    layers += gated(nn.Conv2d(in_ch, 2 * cfg.mask_encoder_hidden, cfg.mask_feature_size),
                    cfg.mask_encoder_hidden, False)
    return nn.Sequential(*layers, nn.Flatten())


def mask_decoder(cfg: GENESISConfig) -> nn.Sequential:
    """z^m (Dm,) -> mask logit (1, H, W): the original's gated-deconv decoder."""
    first, *rest = cfg.mask_decoder_channels
    layers: list[nn.Module] = [nn.Unflatten(1, (cfg.mask_latent_dim, 1, 1))]
    layers += gated(nn.ConvTranspose2d(cfg.mask_latent_dim, 2 * first, cfg.mask_feature_size),
                    first, False)
    in_ch = first
    for out_ch, stride in zip(rest, reversed(cfg.mask_strides)):
        layers += gated(nn.ConvTranspose2d(in_ch, 2 * out_ch, 5, stride, 2, stride - 1), out_ch,
                        cfg.batch_norm)
        in_ch = out_ch
    return nn.Sequential(*layers, nn.Conv2d(in_ch, 1, 1))


def component_encoder(cfg: GENESISConfig) -> nn.Sequential:
    """(log pi_k, image) (4, H, W) -> (mean, raw std) of z^c_k: 3x3 stride-2 padded convs,
    ELU, an MLP with one ELU hidden layer (the original's MONetCompEncoder)."""
    layers: list[nn.Module] = []
    h, w, in_ch = cfg.height, cfg.width, 4
    for out_ch in cfg.comp_encoder_channels:
        layers += [nn.Conv2d(in_ch, out_ch, 3, 2, 1), nn.ELU(inplace=True)]
        h, w, in_ch = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1), out_ch
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_ch * h * w, cfg.comp_encoder_hidden),
                         nn.ELU(inplace=True),
                         nn.Linear(cfg.comp_encoder_hidden, 2 * cfg.comp_latent_dim))


def posterior_std(raw: torch.Tensor) -> torch.Tensor:
    """The original's posterior scale: softplus(raw + 0.5) + 1e-8."""
    return F.softplus(raw + 0.5) + 1e-8


def prior_std(raw: torch.Tensor) -> torch.Tensor:
    """The original's learned-prior scale: sigmoid(raw + 4) + 1e-4, in (1e-4, 1 + 1e-4), near 1
    at initialisation."""
    return torch.sigmoid(raw + 4.0) + 1e-4


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
        # Mask inference: features h; z^m_1 from a linear head on h, z^m_k from an LSTM on
        # [h, z^m_{k-1}] with 2 Dm hidden units (the original's LatentSBP).
        self.image_encoder = mask_encoder(cfg)
        self.posterior_first = nn.Linear(cfg.mask_encoder_hidden, 2 * dm)
        self.posterior_lstm = nn.LSTMCell(cfg.mask_encoder_hidden + dm, 2 * dm)
        self.posterior_head = nn.Linear(2 * dm, 2 * dm)
        # Autoregressive mask prior p(z^m_k | z^m_{<k}): LSTM on z^m_{k-1}.
        self.prior_lstm = nn.LSTM(dm, cfg.prior_lstm_hidden, batch_first=True)
        self.prior_head = nn.Linear(cfg.prior_lstm_hidden, 2 * dm)
        self.mask_decoder = mask_decoder(cfg)
        # Component VAE conditioned on the mask: q(z^c_k | x, log pi_k), p(z^c_k | z^m_k).
        self.comp_encoder = component_encoder(cfg)
        hidden = cfg.comp_prior_hidden
        self.comp_prior = nn.Sequential(nn.Linear(dm, hidden), nn.ELU(inplace=True),
                                        nn.Linear(hidden, hidden), nn.ELU(inplace=True),
                                        nn.Linear(hidden, 2 * dc))
        # The original's broadcast decoder: the shared one with ELU (so without ReLU's fused trunk).
        self.comp_decoder = SpatialBroadcastDecoder(dc, cfg.height, cfg.width,
                                                    cfg.comp_decoder_channels, 3,
                                                    cfg.fused_broadcast, cfg.channels_last,
                                                    fused_trunk=False, activation="elu")
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
    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """The mask encoder's features h of (N, 3, H, W) images: (N, mask_encoder_hidden)."""
        return self.image_encoder(self._memory_format(image))

    def mask_posterior(self, features: torch.Tensor, z_mask: torch.Tensor | None = None,
                       sample: bool = False, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(z^m_{1:K} | x) = prod_k q(z^m_k | x, z^m_{<k}) from features h (N, F) -> z^m, mean,
        std (N, K, Dm). Step k's conditional depends on z^m_{k-1}: the given ``z_mask`` (to score
        it), else a draw (``sample``) or the conditional mean (evaluation)."""
        mean, raw = self.posterior_first(features).float().chunk(2, dim=-1)
        means, stds, zs, state = [], [], [], None
        for k in range(self.num_slots):
            if k > 0:
                state = self.posterior_lstm(torch.cat([features, zs[-1].to(features.dtype)], -1),
                                            state)
                mean, raw = self.posterior_head(state[0]).float().chunk(2, dim=-1)
            std = posterior_std(raw)
            if z_mask is not None:
                z = z_mask[:, k]
            elif sample:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                                    dtype=mean.dtype)
                z = mean + std * noise
            else:
                z = mean
            means.append(mean)
            stds.append(std)
            zs.append(z)
        return torch.stack(zs, 1), torch.stack(means, 1), torch.stack(stds, 1)

    def mask_prior(self, z_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The autoregressive p(z^m_k | z^m_{<k}) (teacher forcing: one LSTM call for all
        steps; p(z^m_1) = N(0, I)) -> mean, std (N, K, Dm)."""
        prior_hidden, _ = self.prior_lstm(z_mask[:, :-1])
        prior_mean, prior_raw = self.prior_head(prior_hidden).float().chunk(2, dim=-1)
        prior_mean = torch.cat([torch.zeros_like(z_mask[:, :1]), torch.tanh(prior_mean)], dim=1)
        prior_scale = torch.cat([torch.ones_like(z_mask[:, :1]), prior_std(prior_raw)], dim=1)
        return prior_mean, prior_scale

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
        enc_in = torch.cat([log_masks, image.unsqueeze(1).expand(n, k, c, h, w)], dim=2)
        comp_mean, comp_raw = self.comp_encoder(
            self._memory_format(enc_in.reshape(n * k, c + 1, h, w))).float().view(n, k, 2 * dc).chunk(2, -1)
        return comp_mean, posterior_std(comp_raw)

    def component_prior(self, z_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z^c_k | z^m_k) -> mean, std (N, K, Dc)."""
        comp_prior_mean, comp_prior_raw = self.comp_prior(z_mask).float().chunk(2, dim=-1)
        return torch.tanh(comp_prior_mean), prior_std(comp_prior_raw)

    def appearance_of(self, z_comp: torch.Tensor) -> torch.Tensor:
        """z^c (N, K, Dc) -> RGB means (N, K, 3, H, W) in [0, 1]."""
        n, k, dc = z_comp.shape
        cfg = self.cfg
        return torch.sigmoid(self.comp_decoder(z_comp.reshape(n * k, dc)).float()).view(
            n, k, 3, cfg.height, cfg.width)

    def log_likelihood(self, image: torch.Tensor, appearance: torch.Tensor,
                       log_masks: torch.Tensor) -> torch.Tensor:
        """log p(x | z) -> (N,): by default a mixture per pixel *and colour channel*, as the
        original's x_loss (its mixture sum runs over the slots of each channel separately);
        per pixel with model.likelihood=pixel."""
        sigma = appearance.new_tensor(self.cfg.pixel_std)
        return mixture_log_likelihood(image, appearance, log_masks, sigma,
                                      per_channel=self.cfg.likelihood == "channel")

    def forward(self, batch: dict) -> ModelOutput:
        cfg = self.cfg
        image = batch["image"]
        check_image_batch(image, "GENESIS", cfg.height, cfg.width)
        b, c, h, w = image.shape
        sample = self.training

        z_mask, mask_mean, mask_std = self.mask_posterior(self.image_features(image), sample=sample)
        prior_mean, prior_scale = self.mask_prior(z_mask)
        log_masks = self.log_masks_of(z_mask)
        comp_mean, comp_std = self.component_posterior(image, log_masks)
        z_comp = comp_mean + comp_std * torch.randn_like(comp_std) if sample else comp_mean
        comp_prior_mean, comp_prior_std = self.component_prior(z_mask)
        appearance = self.appearance_of(z_comp)

        nll = -self.log_likelihood(image, appearance, log_masks).mean()
        kl_mask = (normal_log_density(z_mask, mask_mean, mask_std)
                   - normal_log_density(z_mask, prior_mean, prior_scale)).sum(1).mean()
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
            masks_partition=True,       # stick-breaking: no component has a mask of its own
        )

    # ---- the probabilistic interface (lds.models.interface) -------------------------------
    # z_k = [z^m_k, z^c_k] (the slot latents), q sequential as in the model:
    #     q(z | x) = prod_k q(z^m_k | x, z^m_{<k}) q(z^c_k | x, pi_k(z^m))
    # z^m's conditionals come from the LSTM on the previous *sampled* z^m, z^c's proposal is
    # re-encoded from (x, log pi_k) for every sampled z^m; so q is no diagonal Gaussian, and
    # ``posterior`` returns the conditionals along the mean path (what evaluation decodes) with
    # the image features in its context. The joint is GENESIS's generative model,
    #     log p~(x, z) = sum_{pixels, channels} log sum_k pi_k(z^m) N(x; mu_k(z^c_k), sigma_x^2)
    #                    + log p(z^m_{1:K}) (autoregressive) + sum_k log p(z^c_k | z^m_k)
    # so ELBO = -(nll + kl_mask + kl_comp): GENESIS's loss at beta = 1 (no GECO), no LDS.

    def posterior(self, batch: dict) -> GaussianPosterior:
        features = self.image_features(batch["image"])
        _, mask_mean, mask_std = self.mask_posterior(features)
        return GaussianPosterior(mask_mean, 2.0 * torch.log(mask_std), {"features": features})

    def _q(self, batch: dict, posterior: GaussianPosterior, num_samples: int,
           z: torch.Tensor | None = None, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z = [z^m, z^c] (S, N, K, D), log q(z | x) (S, N)): drawn from q, or the given z scored."""
        cfg, image = self.cfg, batch["image"]
        features = posterior.context.get("features")
        if features is None:
            features = self.image_features(image)
        n, k, s = image.shape[0], self.num_slots, num_samples
        features = features.unsqueeze(0).expand(s, *features.shape).reshape(s * n, -1)
        z_mask, z_comp = (None, None) if z is None else (
            t.reshape(s * n, k, -1) for t in z.split([cfg.mask_latent_dim, cfg.comp_latent_dim], -1))
        z_mask, mask_mean, mask_std = self.mask_posterior(features, z_mask, True, generator)
        log_masks = self.log_masks_of(z_mask)
        images = image.unsqueeze(0).expand(s, *image.shape).reshape(s * n, *image.shape[1:])
        comp_mean, comp_std = self.component_posterior(images, log_masks)
        if z_comp is None:
            noise = torch.randn(comp_mean.shape, generator=generator, device=comp_mean.device,
                                dtype=comp_mean.dtype)
            z_comp = comp_mean + comp_std * noise
        log_q = (normal_log_density(z_mask, mask_mean, mask_std)
                 + normal_log_density(z_comp, comp_mean, comp_std)).sum(-1)
        z = torch.cat([z_mask, z_comp], dim=-1).view(s, n, k, -1)
        posterior.context["decoded"] = (z, log_masks)      # log_joint reuses these masks
        return z, log_q.view(s, n)

    def sample_posterior(self, batch, posterior, num_samples, generator=None):
        return self._q(batch, posterior, num_samples, generator=generator)

    def log_q(self, posterior, z):
        """log q(z | x) needs the model (z^c's proposal depends on z^m): use log_q_at."""
        raise NotImplementedError("GENESIS's q depends on the batch: use log_q_at(batch, q, z)")

    def log_q_at(self, batch: dict, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        """log q(z | x) for given z = [z^m, z^c] (S, N, K, Dm + Dc): (S, N)."""
        return self._q(batch, posterior, z.shape[0], z)[1]

    def log_joint(self, batch: dict, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        image = batch["image"]
        s, n, k, _ = z.shape
        z_mask, z_comp = z.split([cfg.mask_latent_dim, cfg.comp_latent_dim], dim=-1)
        flat_mask = z_mask.reshape(s * n, k, cfg.mask_latent_dim)
        decoded = posterior.context.get("decoded")
        log_masks = decoded[1] if decoded is not None and decoded[0] is z else self.log_masks_of(flat_mask)
        prior_mean, prior_scale = self.mask_prior(flat_mask)
        log_p_mask = normal_log_density(flat_mask, prior_mean, prior_scale).sum(1)
        comp_prior_mean, comp_prior_std = self.component_prior(z_mask)
        log_p_comp = normal_log_density(z_comp, comp_prior_mean, comp_prior_std).sum(-1)
        appearance = self.appearance_of(z_comp.reshape(s * n, k, -1))
        images = image.unsqueeze(0).expand(s, *image.shape).reshape(s * n, *image.shape[1:])
        log_lik = self.log_likelihood(images, appearance, log_masks)
        return (log_lik + log_p_mask).view(s, n) + log_p_comp

    def _kl_weight(self, nll: torch.Tensor) -> torch.Tensor | float:
        """The KL weight of this step: GECO's beta (then updated, in training only) or cfg.beta.

        GECO as the original's utils/geco.py and train.py: err_ema <- alpha err_ema + (1 - alpha)
        err (err_ema = err at the first step); constraint = goal - err_ema with goal =
        geco_goal * 3 * H * W; beta <- beta exp(step * constraint), step = geco_step_size
        * 64^2 / (H W), times ``speedup`` while the constraint is satisfied (> 0), clamped to
        [beta_min, 1e10]. The loss uses beta from before the update. A non-finite NLL leaves the
        state alone (the NaN guard then stops the run).
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
                    step = cfg.geco_step_size * 64 ** 2 / (cfg.height * cfg.width)
                    step *= cfg.geco_speedup if constraint > 0 else 1.0
                    self.geco_err_ema.copy_(ema)
                    self.geco_beta.copy_((self.geco_beta * torch.exp(step * constraint))
                                         .clamp(cfg.geco_beta_min, 1e10))
        return beta
