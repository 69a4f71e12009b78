"""MONet (Burgess et al. 2019), as the LDS paper trained it (Table 1 of its supplement).

The attention network (a U-Net) splits the image into K soft masks by a scope recursion in log
space; a component VAE encodes (image, log mask) of each slot into z_k ~ N(mean, exp(logvar));
a spatial broadcast decoder turns each z_k into RGB means and a mask logit. The loss is

    -log sum_k m_k N(x; x_k, sigma_k^2)                     (m_k: attention masks; sigma_0 = bg)
    + beta  * sum_k KL(q(z_k | x) || N(0, I))
    + gamma * KL(attention masks || softmax of decoded mask logits)   (masks clamped >= 1e-5)


each summed over pixels/slots/dims and averaged over the batch; the trainer subtracts
lambda * L_LDS(z) (Eq. 3) when LDS is on (lds.training.objective).

Output contract (lds.contract): ``mask_logits`` are the decoder's m_k^lg, ``masks`` their softmax
over slots and ``reconstruction = sum_k masks * appearance`` - the supplement's rendering
(section B: softmax for the scene, sigmoid for each component alone, i.e. ``appearance``). The
attention network's masks, which MONet's likelihood mixes with, are ``segmentation_masks``: MONet
segments with them, as MONet's paper and the public MONet code do (the decoded masks learn
later, through the mask KL; docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from common.errors import ConfigError
from lds.contract import ModelOutput
from lds.models.interface import GaussianPosterior, MultiObjectVAE, standard_normal_log_density
from lds.models.base import (
    ComponentEncoder,
    check_image_batch,
    SpatialBroadcastDecoder,
    pointwise_conv,
    gaussian_kl_standard_normal,
    mixture_log_likelihood,
    reparameterize,
)


def unet_channels_for(size: int) -> tuple[int, ...]:
    """MONet's attention U-Net for ``size`` x ``size`` images: one block per halving down to
    4x4, 32 channels in the first two blocks and 64 after (5 blocks at 64x64)."""
    blocks = 1
    while size // (2 ** (blocks - 1)) > 4:
        blocks += 1
    return tuple([32, 32] + [64] * (blocks - 2))[:max(blocks, 2)]


@dataclass
class MONetConfig:
    """MONet's architecture and loss weights. Defaults: 64x64 images, the LDS paper's settings."""

    name: Literal["monet"] = "monet"
    height: int = 64
    width: int = 64
    num_slots: int = 7                                  # K
    latent_dim: int = 16                                # D
    # Attention U-Net: one entry per block. Empty: MONet's rule for the image size, one block
    # per halving down to 4x4 (32, 32, 64, 64, 64 at 64x64; 32, 32, 64, 64 at 32x32).
    unet_channels: tuple[int, ...] = ()
    unet_mlp_hidden: int = 128                          # bottleneck MLP (two hidden layers)
    encoder_channels: tuple[int, ...] = (32, 32, 64, 64)
    encoder_hidden: int = 256
    decoder_channels: tuple[int, ...] = (32, 32, 64, 64)
    # Pixel standard deviations: slot 0 (background) and the others. MONet's paper: 0.09 / 0.11;
    # addtt's object-centric library config uses 0.06 / 0.1.
    sigma_bg: float = 0.09
    sigma_fg: float = 0.11
    beta: float = 0.5                                   # KL(q(z|x) || p(z)) weight
    gamma: float = 0.5                                  # mask KL weight
    mask_clamp: float = 1e-5                            # masks clamped below in the mask KL
    # "pixel": Eq. 1 (each pixel's RGB vector is one mixture draw); "channel": logsumexp per
    # colour channel, as addtt's MONet and MulMON compute it.
    likelihood: Literal["pixel", "channel"] = "pixel"
    # Speed only (same function, same parameters): NHWC tensors for the convs, and the
    # decoder's first conv computed without materialising the broadcast grid.
    channels_last: bool = True
    fused_broadcast: bool = True
    # CPU: the decoder's conv trunk as one chunked, ReLU-fused op (lds/models/fused_decoder.py).
    fused_decoder: bool = True

    @property
    def attention_channels(self) -> tuple[int, ...]:
        """The U-Net's blocks as built: ``unet_channels``, or MONet's rule for the image size."""
        return self.unet_channels or unet_channels_for(min(self.height, self.width))

    def __post_init__(self) -> None:
        self.unet_channels = tuple(self.unet_channels)
        self.encoder_channels = tuple(self.encoder_channels)
        self.decoder_channels = tuple(self.decoder_channels)
        if self.num_slots < 2:
            raise ConfigError(f"model.num_slots must be at least 2, got {self.num_slots}")
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be positive, got {self.latent_dim}")
        if len(self.attention_channels) < 2:
            raise ConfigError("model.unet_channels needs at least two blocks")
        factor = 2 ** (len(self.attention_channels) - 1)
        if self.height % factor or self.width % factor:
            raise ConfigError(
                f"a {len(self.attention_channels)}-block U-Net needs image sides divisible by {factor}, "
                f"got {self.height}x{self.width}; change model.unet_channels (5 blocks at 64x64)"
            )
        side = min(self.height, self.width)
        for _ in self.encoder_channels:             # 3x3, stride 2, no padding
            side = (side - 3) // 2 + 1
        if side < 1:
            raise ConfigError(
                f"{self.height}x{self.width} images are too small for {len(self.encoder_channels)} "
                f"stride-2 encoder convs; use fewer model.encoder_channels")
        if min(self.sigma_bg, self.sigma_fg) <= 0:
            raise ConfigError("model.sigma_bg and model.sigma_fg must be positive")


class _ConvNormReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),  # the affine norm has the bias
            # GroupNorm with one group per channel *is* InstanceNorm2d(affine=True) (same
            # statistics, eps, parameters and state-dict names) and has a channels-last kernel.
            nn.GroupNorm(out_ch, out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, relu = self
        # The norm in fp32 (a no-op cast in fp32 runs): under CPU bf16 autocast its bf16 kernels
        # took 4x the fp32 time and most of the step (docs/training.md, mixed precision).
        return relu(norm(conv(x).float()))


class AttentionUNet(nn.Module):
    """MONet's attention network: (image, log scope) -> 2 logits (log alpha, log(1 - alpha)).

    Blocks are conv3x3 + InstanceNorm(affine) + ReLU; nearest-neighbour halving between down
    blocks and doubling between up blocks; at the bottom an MLP (hidden, hidden) on the
    flattened feature map; skip connections concatenate; a final 1x1 conv gives 2 channels.
    """

    def __init__(self, in_channels: int, height: int, width: int,
                 channels: tuple[int, ...] = (32, 32, 64, 64, 64), mlp_hidden: int = 128,
                 channels_last: bool = False):
        super().__init__()
        n = len(channels)
        self.channels_last = channels_last
        self.down = nn.ModuleList()
        prev = in_channels
        for out_ch in channels:
            self.down.append(_ConvNormReLU(prev, out_ch))
            prev = out_ch
        self.bottom_hw = (height // 2 ** (n - 1), width // 2 ** (n - 1))
        self.bottom_channels = channels[-1]
        flat = channels[-1] * self.bottom_hw[0] * self.bottom_hw[1]
        self.mlp = nn.Sequential(
            nn.Linear(flat, mlp_hidden), nn.ReLU(inplace=True),
            nn.Linear(mlp_hidden, mlp_hidden), nn.ReLU(inplace=True),
            nn.Linear(mlp_hidden, flat), nn.ReLU(inplace=True),
        )
        # Up block i runs at the resolution of down block n-1-i; its input is the previous up
        # output concatenated with that skip; its output width mirrors the down path.
        self.up = nn.ModuleList()
        prev = channels[-1]
        for i in range(n):
            out_ch = channels[max(n - 2 - i, 0)]
            self.up.append(_ConvNormReLU(prev + channels[n - 1 - i], out_ch))
            prev = out_ch
        self.final = nn.Conv2d(prev, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h)
            skips.append(h)
            if i < len(self.down) - 1:
                # Nearest-neighbour halving picks pixel 2i: exactly a stride-2 slice, no copy.
                h = h[:, :, ::2, ::2]
        b = h.shape[0]
        h = self.mlp(h.flatten(1)).view(b, self.bottom_channels, *self.bottom_hw)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips[-1 - i]], dim=1))
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return pointwise_conv(h, self.final)


class MONet(MultiObjectVAE):
    """MONet. ``model(batch) -> ModelOutput``; uses ``batch["image"]``."""

    def __init__(self, cfg: MONetConfig):
        super().__init__()
        self.cfg = cfg
        self.num_slots = cfg.num_slots
        self.attention = AttentionUNet(4, cfg.height, cfg.width, cfg.attention_channels,
                                       cfg.unet_mlp_hidden, cfg.channels_last)
        self.encoder = ComponentEncoder(4, cfg.latent_dim, cfg.height, cfg.width,
                                        cfg.encoder_channels, cfg.encoder_hidden)
        self.decoder = SpatialBroadcastDecoder(cfg.latent_dim, cfg.height, cfg.width,
                                               cfg.decoder_channels, 4, cfg.fused_broadcast,
                                               cfg.channels_last, cfg.fused_decoder)
        sigma = torch.full((cfg.num_slots,), cfg.sigma_fg)
        sigma[0] = cfg.sigma_bg
        self.register_buffer("pixel_sigma", sigma, persistent=False)

    def _memory_format(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else t

    def attention_log_masks(self, image: torch.Tensor) -> torch.Tensor:
        """The scope recursion in log space -> log attention masks (B, K, 1, H, W).

        log m_k = log s_{k-1} + log alpha_k,  log s_k = log s_{k-1} + log(1 - alpha_k),
        s_0 = 1, and the last slot takes the remaining scope: log m_K = log s_{K-1}.
        """
        b, _, h, w = image.shape
        log_scope = image.new_zeros(b, 1, h, w)
        log_masks = []
        for _ in range(self.num_slots - 1):
            inputs = self._memory_format(torch.cat([image, log_scope], dim=1))
            log_alpha = F.log_softmax(self.attention(inputs).float(), dim=1)   # fp32 under autocast
            log_masks.append(log_scope + log_alpha[:, :1])
            log_scope = log_scope + log_alpha[:, 1:]
        log_masks.append(log_scope)
        return torch.stack(log_masks, dim=1)

    # ---- the named steps of MONet's forward pass (the gap's joint reuses them) ------------
    def encode(self, image: torch.Tensor, log_att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Component VAE encoder on (x, log m_k) of every slot -> mean, logvar (B, K, D), fp32."""
        b, c, h, w = image.shape
        k = self.num_slots
        enc_in = torch.cat([image.unsqueeze(1).expand(b, k, c, h, w), log_att], dim=2)
        mean, logvar = self.encoder(self._memory_format(enc_in.flatten(0, 1)))
        # KL and LDS in fp32 under autocast (no-op casts in fp32 runs)
        return mean.float().view(b, k, -1), logvar.float().view(b, k, -1)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (N, K, D) -> appearance (N, K, 3, H, W) in [0, 1] and mask logits (N, K, 1, H, W)."""
        n, k, d = z.shape
        decoded = self.decoder(z.reshape(n * k, d)).float().view(n, k, 4, self.cfg.height, self.cfg.width)
        return torch.sigmoid(decoded[:, :, :3]), decoded[:, :, 3:]

    def log_likelihood(self, image: torch.Tensor, appearance: torch.Tensor,
                       log_att: torch.Tensor) -> torch.Tensor:
        """log p(x | z): the pixel mixture with the attention masks' weights (Eq. 1) -> (N,)."""
        return mixture_log_likelihood(image, appearance, log_att, self.pixel_sigma,
                                      per_channel=self.cfg.likelihood == "channel")

    def mask_kl(self, log_att: torch.Tensor, log_decoded: torch.Tensor) -> torch.Tensor:
        """KL(attention masks || decoded masks) per image, both clamped below -> (N,)."""
        q = log_att.exp().clamp_min(self.cfg.mask_clamp)
        p = log_decoded.exp().clamp_min(self.cfg.mask_clamp)
        return (q * (q.log() - p.log())).flatten(1).sum(1)

    def forward(self, batch: dict) -> ModelOutput:
        cfg = self.cfg
        image = batch["image"]
        check_image_batch(image, "MONet", cfg.height, cfg.width)
        b, c, h, w = image.shape

        log_att = self.attention_log_masks(image)                           # (B, K, 1, H, W)
        mean, logvar = self.encode(image, log_att)                          # (B, K, D)
        z = reparameterize(mean, logvar, sample=self.training)
        appearance, mask_logits = self.decode(z)
        log_dec = F.log_softmax(mask_logits, dim=1)
        masks = log_dec.exp()
        reconstruction = (masks * appearance).sum(dim=1)

        # Loss terms (each summed over pixels / slots / dims, averaged over the batch).
        nll = -self.log_likelihood(image, appearance, log_att).mean()
        kl_z = gaussian_kl_standard_normal(mean, logvar).sum(dim=2).sum(1).mean()
        kl_mask = self.mask_kl(log_att, log_dec).mean()
        loss = nll + cfg.beta * kl_z + cfg.gamma * kl_mask

        return ModelOutput(
            loss=loss,
            loss_terms={"nll": nll, "kl_z": kl_z, "kl_mask": kl_mask},
            slot_latents=z,
            posterior_mean=mean,
            posterior_logvar=logvar,
            mask_logits=mask_logits,
            masks=masks,
            appearance=appearance,
            reconstruction=reconstruction,
            segmentation_masks=log_att.exp(),
            segmentation_source="attention masks",
        )

    # ---- the probabilistic interface (lds.models.interface) -------------------------------
    def posterior(self, batch: dict) -> GaussianPosterior:
        """q(z | x): the component VAE's Gaussian; the attention masks are deterministic given
        x and part of q's amortisation (they are not sampled and have no density)."""
        image = batch["image"]
        log_att = self.attention_log_masks(image)
        mean, logvar = self.encode(image, log_att)
        return GaussianPosterior(mean, logvar, {"log_attention": log_att})

    def log_joint(self, batch: dict, posterior: GaussianPosterior, z: torch.Tensor) -> torch.Tensor:
        """log p~(x, z) = log sum_k m_k N(x; x_k(z_k), sigma_k^2) + sum_k log N(z_k; 0, I)
        - KL(m || softmax(m^lg(z))): MONet's objective at unit weights (beta = gamma = 1, no LDS),
        so the ELBO of the gap is -(MONet loss) at those weights."""
        image = batch["image"]
        s, n, k, d = z.shape
        appearance, mask_logits = self.decode(z.reshape(s * n, k, d))
        log_dec = F.log_softmax(mask_logits, dim=1)
        log_att = posterior.context["log_attention"]
        log_att = log_att.unsqueeze(0).expand(s, *log_att.shape).reshape(s * n, *log_att.shape[1:])
        images = image.unsqueeze(0).expand(s, *image.shape).reshape(s * n, *image.shape[1:])
        joint = self.log_likelihood(images, appearance, log_att) - self.mask_kl(log_att, log_dec)
        return joint.view(s, n) + standard_normal_log_density(z)
