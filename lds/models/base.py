"""Building blocks shared by the multi-object VAEs (MONet now; IODINE, MulMON, GENESIS later).

- :class:`SpatialBroadcastDecoder`: z -> (RGB logits, mask logit) per slot, run on all B*K slots
  in one batched call.
- :class:`ComponentEncoder`: strided conv stack -> MLP -> (mean, logvar), batched over slots.
- :func:`mixture_log_likelihood`, :func:`gaussian_kl_standard_normal`, :func:`reparameterize`.

Every block takes plain tensors; none of them knows about batches-as-dicts or the training loop.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lds.models.fused_decoder import broadcast_decoder_trunk, fused_trunk_supported

LOG_2PI = math.log(2.0 * math.pi)


def conv_output_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Spatial size after one convolution (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


def check_image_batch(image: torch.Tensor, model: str, height: int, width: int,
                      views: bool = False) -> None:
    """Refuse an image batch of the wrong shape in one line, naming what was expected.

    ``views``: the batch has a view axis, (scenes, views, 3, H, W), as MulMON's does."""
    layout = "(scenes, views, 3, H, W)" if views else "(B, 3, H, W)"
    if image.dim() != (5 if views else 4) or image.shape[-3] != 3:
        raise ValueError(f"batch['image'] must be {layout}, got {tuple(image.shape)}")
    if tuple(image.shape[-2:]) != (height, width):
        raise ValueError(f"{model} was built for {height}x{width} images, "
                         f"got {image.shape[-2]}x{image.shape[-1]}")


def coordinate_grid(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """(1, 2, H, W): x then y, each spanning [-1, 1] (the spatial broadcast decoder's coordinates)."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None]


def pointwise_conv(x: torch.Tensor, conv: nn.Conv2d, splits: Sequence[int] | None = None):
    """A 1x1 ``conv`` applied to ``x``; for channels-last input it is one matmul over pixels.

    oneDNN's 1x1 convolution with few output channels (MONet's 64 -> 4 head, the U-Net's 32 -> 2)
    is pathologically slow, its backward above all; on NHWC memory the same map is a
    (pixels x C_in) @ (C_in x C_out) matmul on a view, and the result is again NHWC memory.
    ``splits`` (e.g. (3, 1)) returns one tensor per group of output channels instead: on NHWC
    memory one matmul per group, because slicing one output would make its backward zero-fill
    and copy a full-size gradient per slice.
    """
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        out = conv(x)
        return out if splits is None else tuple(out.split(tuple(splits), dim=1))
    n, c, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(-1, c)                      # NHWC rows: a view
    weight = conv.weight.flatten(1)                                    # (C_out, C_in)
    if splits is None:
        return torch.addmm(conv.bias, pixels, weight.t()).view(n, h, w, -1).permute(0, 3, 1, 2)
    outs, start = [], 0
    for size in splits:
        part = torch.addmm(conv.bias[start: start + size], pixels, weight[start: start + size].t())
        outs.append(part.view(n, h, w, size).permute(0, 3, 1, 2))
        start += size
    return tuple(outs)


class _BroadcastAddReLU(torch.autograd.Function):
    """relu(shared + per_item[:, :, None, None]): (N, C) and (1, C, H, W) -> (N, C, H, W).

    The backward reduces the gradient over space (for ``per_item``) and over the batch (for
    ``shared``) on a (N, H*W, C) view of channels-last memory: autograd's own reduction of a
    channels-last tensor over the batch dimension is ~40x slower (0.4 s per MONet step).
    """

    @staticmethod
    def forward(ctx, per_item: torch.Tensor, shared: torch.Tensor, channels_last: bool) -> torch.Tensor:
        n, c = per_item.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty((n, c, *shared.shape[-2:]), dtype=shared.dtype, device=shared.device,
                          memory_format=fmt)
        torch.add(shared, per_item[:, :, None, None], out=out)
        out.relu_()
        ctx.save_for_backward(out)
        ctx.channels_last = channels_last
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        n, c, h, w = out.shape
        if ctx.channels_last:
            grad = grad.contiguous(memory_format=torch.channels_last)
            g = torch.ops.aten.threshold_backward(grad, out, 0.0)
            rows = g.permute(0, 2, 3, 1).reshape(n, h * w, c)        # a view, no copy
            grad_item = rows.sum(1)
            grad_shared = rows.sum(0).view(1, h, w, c).permute(0, 3, 1, 2)
        else:
            g = torch.ops.aten.threshold_backward(grad.contiguous(), out, 0.0)
            grad_item = g.sum((2, 3))
            grad_shared = g.sum(0, keepdim=True)
        return grad_item, grad_shared, None


class SpatialBroadcastDecoder(nn.Module):
    """Watters et al.'s spatial broadcast decoder, as MONet uses it.

    z (N, D) is tiled to (H+8) x (W+8), two coordinate channels are appended, then unpadded 3x3
    convs (32, 32, 64, 64 by default, ReLU) shrink it to H x W and a 1x1 conv gives 4 channels:
    3 RGB logits and 1 mask logit.

    ``fused_broadcast=True`` computes the first conv without materialising the tiled input. The
    tiled z is constant over space and the conv is unpadded, so every output pixel sees the same
    3x3 patch of z: its contribution is ``z @ W_z.sum(kernel)``, one small matmul, and only the
    coordinate channels (identical for every slot) need a real conv, done once. This is the same
    function with the same parameters (checkpoints are interchangeable); it only skips work.
    """

    def __init__(self, latent_dim: int, height: int, width: int,
                 channels: Sequence[int] = (32, 32, 64, 64), out_channels: int = 4,
                 fused_broadcast: bool = True, channels_last: bool = False, fused_trunk: bool = True,
                 activation: str = "relu"):
        super().__init__()
        if activation not in ("relu", "elu"):
            raise ValueError(f"activation must be relu or elu, got {activation!r}")
        # ELU (GENESIS's decoders) has none of ReLU's fused paths below: plain ops.
        self.elu = activation == "elu"
        self.channels_last = channels_last
        # With fused_broadcast and channels_last, on the CPU the conv trunk runs as one chunked,
        # ReLU-fused op (lds/models/fused_decoder.py): same function, same parameters.
        self.fused_trunk = fused_trunk
        if len(channels) < 1:
            raise ValueError("the decoder needs at least one conv layer")
        self.latent_dim = latent_dim
        self.height, self.width = height, width
        self.fused_broadcast = fused_broadcast
        # Each unpadded 3x3 conv trims one pixel per side; the broadcast grid is padded to match.
        self.pad = len(channels)
        self.convs = nn.ModuleList()
        in_ch = latent_dim + 2
        for out_ch in channels:
            self.convs.append(nn.Conv2d(in_ch, out_ch, 3))
            in_ch = out_ch
        self.head = nn.Conv2d(in_ch, out_channels, 1)
        grid = coordinate_grid(height + 2 * self.pad, width + 2 * self.pad)
        self.register_buffer("coords", grid, persistent=False)

    def coordinate_features(self) -> torch.Tensor:
        """The first conv's coordinate channels plus its bias, (1, C1, H+2L-2, W+2L-2).

        The same for every slot image; a caller that decodes several times with unchanged
        weights (MulMON: every refinement iteration and view) computes it once and passes it to
        :meth:`forward`. Used only with ``fused_broadcast``.
        """
        first = self.convs[0]
        return F.conv2d(self.coords, first.weight[:, self.latent_dim:], first.bias)

    def forward(self, z: torch.Tensor, coordinate_features: torch.Tensor | None = None,
                splits: Sequence[int] | None = None):
        """(N, D) latents -> (N, out_channels, H, W) raw outputs.

        ``splits`` (e.g. (3, 1) for RGB and a mask logit) returns one tensor per group of output
        channels instead, computed apart rather than sliced (see :func:`pointwise_conv`).
        """
        n = z.shape[0]
        first = self.convs[0]
        if self.fused_broadcast:
            weight_z = first.weight[:, : self.latent_dim].sum(dim=(2, 3))      # (C1, D)
            coord_part = (self.coordinate_features() if coordinate_features is None
                          else coordinate_features)
            per_item = z @ weight_z.t()
            if self.elu:
                h = per_item[:, :, None, None] + coord_part
                if self.channels_last:
                    h = h.contiguous(memory_format=torch.channels_last)
                h = F.elu(h, inplace=True)
            elif self.fused_trunk and self.channels_last and fused_trunk_supported(per_item):
                outs = broadcast_decoder_trunk(per_item, coord_part, self.convs[1:], self.head,
                                               splits or (self.head.out_channels,))
                return outs if splits else outs[0]
            else:
                h = _BroadcastAddReLU.apply(per_item, coord_part, self.channels_last)
        else:
            tiled = z[:, :, None, None].expand(-1, -1, *self.coords.shape[-2:])
            inputs = torch.cat([tiled, self.coords.expand(n, -1, -1, -1)], dim=1)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            h = F.elu(first(inputs)) if self.elu else F.relu(first(inputs))
        for conv in self.convs[1:]:
            # In place: a conv's backward needs its input, not its output; ReLU's (and ELU's)
            # needs only its output, so overwriting the conv output saves one full-size tensor.
            h = F.elu(conv(h), inplace=True) if self.elu else F.relu_(conv(h))
        return pointwise_conv(h, self.head, splits)


class ComponentEncoder(nn.Module):
    """Strided 3x3 convs (no padding, ReLU) -> MLP -> 2 x latent_dim (mean, log-variance)."""

    def __init__(self, in_channels: int, latent_dim: int, height: int, width: int,
                 channels: Sequence[int] = (32, 32, 64, 64), hidden: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        h, w, in_ch = height, width, in_channels
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2), nn.ReLU(inplace=True)]
            h, w, in_ch = conv_output_size(h, 3, 2), conv_output_size(w, 3, 2), out_ch
        if h < 1 or w < 1:
            raise ValueError(f"image {height}x{width} is too small for {len(channels)} stride-2 convs")
        self.convs = nn.Sequential(*layers)
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(in_ch * h * w, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 2 * latent_dim),
        )
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.mlp(self.convs(x))
        return params[:, : self.latent_dim], params[:, self.latent_dim:]


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, sample: bool) -> torch.Tensor:
    """z = mean + exp(logvar / 2) * eps when sampling, else the mean (deterministic evaluation)."""
    if not sample:
        return mean
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def gaussian_kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) elementwise (sum it over the dims you need)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, sigma^2) elementwise; ``sigma`` broadcasts (e.g. one value per slot)."""
    return -0.5 * ((x - mean) / sigma).pow(2) - torch.log(sigma) - 0.5 * LOG_2PI


def mixture_log_likelihood(image: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor,
                           sigma: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """log p(x) of the spatial Gaussian mixture (Eq. 1), one value per image: (B,).

    image (B, C, H, W); means (B, K, C, H, W); log_weights (B, K, 1, H, W) log mixing
    probabilities; sigma (K,) or broadcastable to (1, K, 1, 1, 1).

    ``per_channel=False`` (default, Eq. 1 of the paper): each pixel's RGB vector is one draw from
    the mixture, log p = sum_pixels logsumexp_k [log w_k + sum_c log N(x_c; mu_kc, sigma_k)].
    ``per_channel=True`` does the logsumexp per colour channel as addtt's MONet and MulMON do.
    """
    if sigma.dim() == 1:
        sigma = sigma.view(1, -1, 1, 1, 1)
    log_comp = gaussian_log_density(image.unsqueeze(1), means, sigma)       # (B, K, C, H, W)
    if not per_channel:
        log_comp = log_comp.sum(dim=2, keepdim=True)
    return torch.logsumexp(log_weights + log_comp, dim=1).flatten(1).sum(1)
