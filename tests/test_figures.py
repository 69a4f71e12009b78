"""Figure 2: the supplement's component rendering and the PNG layout for one or two runs."""

import numpy as np
import torch
from PIL import Image

from lds.contract import ModelOutput
from lds.evaluation.figures import PALETTE, figure2, render_components_alone, segmentation_rgb
from lds.models.monet import MONet, MONetConfig


def make_output(b=2, k=3, h=8, w=8) -> ModelOutput:
    torch.manual_seed(0)
    logits = torch.full((b, k, 1, h, w), -30.0)
    logits[:, 0] = 30.0                                  # slot 0 everywhere
    logits[:, 1, :, :4, :4] = 30.0                       # slot 1 only in the top-left block
    appearance = torch.rand(b, k, 3, h, w)
    masks = logits.softmax(dim=1)
    latents = torch.randn(b, k, 4)
    zero = torch.zeros(())
    return ModelOutput(zero, {"nll": zero}, latents, latents, latents, logits, masks, appearance,
                       (masks * appearance).sum(1))


def test_components_alone_use_sigmoid_over_the_background():
    out = make_output()
    white = render_components_alone(out, "white")
    black = render_components_alone(out, "black")
    assert torch.allclose(white[:, 0], out.appearance[:, 0])              # sigmoid(30) ~ 1
    assert torch.allclose(white[:, 1, :, :4, :4], out.appearance[:, 1, :, :4, :4])
    assert torch.allclose(white[:, 1, :, 4:, :], torch.ones(2, 3, 4, 8))    # empty -> white
    assert torch.allclose(black[:, 2], torch.zeros(2, 3, 8, 8))             # empty -> black
    # sigmoid, not softmax: slot 1 is drawn alone even where slot 0 also claims the pixel
    assert torch.allclose(white[:, 1, :, 0, 0], out.appearance[:, 1, :, 0, 0])
    # masks that only partition the image (GENESIS): each component alone is pi_k * x_k
    out.masks_partition = True
    assert torch.allclose(render_components_alone(out, "black"), out.masks * out.appearance)


def test_segmentation_uses_the_fixed_palette():
    seg = segmentation_rgb(make_output().masks)
    assert seg.shape == (2, 8, 8, 3)
    assert np.allclose(seg[0, 0, 0], PALETTE[0])     # tie at 30 vs 30 -> first slot


def test_figure_one_run_and_two_runs_stacked(tmp_path):
    images = torch.rand(2, 3, 8, 8)
    out = make_output()
    one = Image.open(figure2(out, images, tmp_path / "one.png"))
    two = Image.open(figure2({"MONet0": out, "MONet+": make_output()}, images, tmp_path / "two.png"))
    assert one.size[0] == two.size[0]                   # same columns: Obs, Rec, 3 slots, Seg
    assert two.size[1] == 2 * one.size[1]               # twice the rows
    assert one.size[0] > 2.5 * one.size[1]              # 6 columns x 2 rows
    assert np.asarray(one.convert("L")).std() > 10      # something was drawn


def test_figure_from_a_model(tmp_path):
    cfg = MONetConfig(height=16, width=16, num_slots=4, latent_dim=4, unet_channels=(8, 8, 8),
                      unet_mlp_hidden=16, encoder_channels=(8, 8), encoder_hidden=16,
                      decoder_channels=(8, 8))
    path = figure2([MONet(cfg), MONet(cfg)], torch.rand(3, 3, 16, 16), tmp_path / "m.png")
    width, height = Image.open(path).size
    assert abs(width / height - 7 / 6) < 0.1              # 7 columns (Obs, Rec, 4, Seg) x 6 rows
