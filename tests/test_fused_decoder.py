"""The fused CPU decoder trunk (lds/models/fused_decoder.py) computes the plain decoder's function.

Values, input and parameter gradients, FLOPs (no weight gradients where only input gradients
are asked for), gradient checkpointing (every activation goes through save_for_backward) and the
fallback to the plain layers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lds.models import build_model
from lds.models.base import SpatialBroadcastDecoder
from lds.models.fused_decoder import chunk_size, fused_trunk_supported
from lds.models.mulmon import MulMONConfig

pytestmark = pytest.mark.skipif(not fused_trunk_supported(torch.zeros(1)),
                                reason="the fused trunk needs oneDNN on the CPU")


class _SplitHead(torch.nn.Module):
    """The decoder as MulMON calls it: RGB and the mask logit as two tensors."""

    def __init__(self, decoder: SpatialBroadcastDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, z):
        return self.decoder(z, splits=(3, 1))


def _decoders(kind: str):
    torch.manual_seed(0)
    if kind == "mulmon":
        fused = _SplitHead(SpatialBroadcastDecoder(8, 12, 10, channels=(16, 16, 16), out_channels=4,
                                                   channels_last=True))
        plain = copy.deepcopy(fused)
        plain.decoder.fused_trunk = False
    else:
        fused = SpatialBroadcastDecoder(8, 12, 10, channels=(16, 16, 24, 24), out_channels=4,
                                        channels_last=True)
        plain = copy.deepcopy(fused)
        plain.fused_trunk = False
    return fused, plain


def _outputs(decoder, z):
    out = decoder(z)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("kind", ["mulmon", "spatial"])
def test_values_and_gradients_match_the_plain_layers(kind):
    fused, plain = _decoders(kind)
    n = 2 * chunk_size() + 3                                  # a ragged last chunk
    z = torch.randn(n, 8)
    results = []
    for decoder in (fused, plain):
        zz = z.clone().requires_grad_()
        outs = _outputs(decoder, zz)
        # a loss that weights every output pixel differently
        loss = sum((o * torch.linspace(-1, 2, o.numel()).view(o.shape)).sum() + o.pow(2).sum()
                   for o in outs)
        loss.backward()
        results.append(([o.detach() for o in outs], zz.grad,
                        [p.grad.clone() for p in decoder.parameters()]))
    (outs_f, gz_f, gp_f), (outs_p, gz_p, gp_p) = results
    assert [o.shape for o in outs_f] == [o.shape for o in outs_p]
    for a, b in zip(outs_f, outs_p):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gz_f, gz_p, rtol=1e-4, atol=1e-4)
    for a, b in zip(gp_f, gp_p):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_input_gradients_alone_do_not_compute_weight_gradients():
    """MulMON/IODINE refinement gradients ask for dL/dz only: the fused backward then does the
    same conv work as aten's (FLOPs equal) and leaves the parameters' .grad untouched."""
    fused, plain = _decoders("mulmon")
    z = torch.randn(chunk_size() + 1, 8)
    flops = []
    for decoder in (fused, plain):
        zz = z.clone().requires_grad_()
        means, logits = decoder(zz)
        counter = FlopCounterMode(display=False)
        with counter:
            (grad,) = torch.autograd.grad(means.sum() + logits.sum(), [zz])
        flops.append(counter.get_flop_counts()["Global"][torch.ops.aten.convolution_backward])
        assert all(p.grad is None for p in decoder.parameters())
    assert flops[0] == flops[1] > 0


def test_every_activation_is_saved_through_save_for_backward():
    """So torch.utils.checkpoint (MulMON's checkpoint_iterations, IODINE's grad_checkpoint) can
    drop and recompute them: nothing full-size may hide on the autograd context."""
    fused, _ = _decoders("mulmon")
    n = chunk_size() + 2
    packed: list[torch.Size] = []

    def pack(t):
        packed.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        means, logits = fused(torch.randn(n, 8, requires_grad=True))
    # (the coordinate grid, saved by the conv that makes the coordinate features, is not one)
    grid = fused.decoder.coords.shape
    activation_shapes = [s for s in packed if len(s) == 4 and s[-1] > 3 and s != grid]
    # every slot image's ReLU outputs: the broadcast layer and the 2 convs after it
    assert sum(s[0] for s in activation_shapes) == len(fused.decoder.convs) * n


def test_mulmon_training_step_is_the_same_with_and_without_the_fused_trunk():
    cfg = MulMONConfig(height=16, width=16, num_slots=3, latent_dim=4, num_iterations=2,
                       decoder_channels=(8, 8, 8, 8), refine_channels=(8, 8), refine_hidden=16,
                       refine_features=16, lstm_hidden=16, viewpoint="clevr-mv")
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    batch = {"image": torch.rand(2, 4, 3, 16, 16), "viewpoint": torch.randn(2, 4, 3)}
    results = []
    for fused in (True, False):
        torch.manual_seed(1)
        model = build_model(cfg).train()
        model.decoder.fused_trunk = fused
        torch.manual_seed(2)
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(batch, num_observed=2)
            loss, _ = training_objective(out, LDSConfig(enabled=True, weight=1.0))
            loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()],
                        counter.get_total_flops()))
    (loss_f, grads_f, flops_f), (loss_p, grads_p, flops_p) = results
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=1e-3)
    for a, b in zip(grads_f, grads_p):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert abs(flops_f - flops_p) <= 0.01 * flops_p


def test_falls_back_to_the_plain_layers_where_it_cannot_run():
    fused, plain = _decoders("spatial")
    z = torch.randn(5, 8)
    assert not fused_trunk_supported(z.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_trunk_supported(z)
        out = fused(z)
    assert out.dtype == torch.bfloat16                             # the plain layers ran
    torch.testing.assert_close(fused.double()(z.double()), plain.double()(z.double()))


def test_without_autograd_it_computes_the_same_values():
    fused, plain = _decoders("mulmon")
    z = torch.randn(chunk_size() + 3, 8)
    with torch.no_grad():
        for a, b in zip(fused(z), plain(z)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
