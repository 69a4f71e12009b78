"""MONet: the output contract, the loss terms against direct formulas, the speed-only variants
computing the same function, and a tiny MONet overfitting two images."""

from __future__ import annotations

import math

import pytest
import torch

from common.errors import ConfigError
from lds.contract import ModelOutput
from lds.models import MODEL_CONFIGS, build_model
from lds.models.base import (SpatialBroadcastDecoder, gaussian_kl_standard_normal,
                             mixture_log_likelihood)
from lds.models.monet import MONet, MONetConfig
from lds.prior import lds_prior

TINY = dict(height=16, width=16, num_slots=3, latent_dim=4, unet_channels=(8, 8, 8),
            unet_mlp_hidden=16, encoder_channels=(8, 8), encoder_hidden=16,
            decoder_channels=(16, 16))
TINY_OVERRIDES = [
    "model.height=16", "model.width=16", "model.num_slots=3", "model.latent_dim=4",
    "model.unet_channels=[8,8,8]", "model.unet_mlp_hidden=16", "model.encoder_channels=[8,8]",
    "model.encoder_hidden=16", "model.decoder_channels=[16,16]", "optim.batch_size=2",
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared, oversubscribed machine
    OpenMP's spinning barriers can make a 2-thread run of tiny ops many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def two_images() -> torch.Tensor:
    """Two 16x16 scenes: a grey background with a red block, or a blue block."""
    images = torch.full((2, 3, 16, 16), 0.5)
    images[0, :, 2:8, 3:10] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    images[1, :, 9:14, 6:13] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]
    return images


def tiny_model(seed: int = 0, **changes) -> MONet:
    torch.manual_seed(seed)
    return build_model("monet", MONetConfig(**{**TINY, **changes}))


def lds_on(weight: float = 0.5):
    from lds.training.config import LDSConfig

    return LDSConfig(enabled=True, weight=weight, sigma=0.1)


def test_output_contract_and_rendering():
    from lds.training.objective import training_objective

    model = tiny_model().train()
    images = torch.rand(2, 3, 16, 16)
    out = model({"image": images, "camera_pose_world": torch.eye(4).repeat(2, 1, 1)})
    assert isinstance(out, ModelOutput)
    out.check(2, 3, 16, 16)
    assert set(out.loss_terms) == {"nll", "kl_z", "kl_mask"}
    # Scene rendering: softmax of the decoded mask logits; components: sigmoid RGB in [0, 1].
    torch.testing.assert_close(out.masks, torch.softmax(out.mask_logits, dim=1))
    torch.testing.assert_close(out.masks.sum(1), torch.ones(2, 1, 16, 16))
    torch.testing.assert_close(out.reconstruction, (out.masks * out.appearance).sum(1))
    assert out.appearance.min() >= 0 and out.appearance.max() <= 1
    attention = out.segmentation_masks
    assert attention.shape == (2, 3, 1, 16, 16)
    torch.testing.assert_close(attention.sum(1), torch.ones(2, 1, 16, 16))
    # The loss is exactly the documented combination of its terms; the trainer's objective
    # subtracts the LDS prior of the sampled latents.
    t = out.loss_terms
    torch.testing.assert_close(out.loss, t["nll"] + 0.5 * t["kl_z"] + 0.5 * t["kl_mask"])
    objective, prior = training_objective(out, lds_on(0.5))
    torch.testing.assert_close(prior, lds_prior(out.slot_latents, 0.1).mean())
    torch.testing.assert_close(objective, out.loss - 0.5 * prior)
    # Training samples z; eval mode decodes the posterior mean.
    assert not torch.equal(out.slot_latents, out.posterior_mean)
    model.eval()
    with torch.no_grad():
        out_eval = model({"image": images})
    torch.testing.assert_close(out_eval.slot_latents, out_eval.posterior_mean)


def test_lds_term_is_zero_when_off_and_changes_gradients_when_on():
    images = torch.rand(2, 3, 16, 16)
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    grads = []
    for weight in (0.0, 1.0):
        model = tiny_model()
        torch.manual_seed(5)
        out = model({"image": images})
        objective, prior = training_objective(out, LDSConfig(enabled=weight > 0, weight=weight))
        if weight == 0:
            assert prior.item() == 0.0 and objective is out.loss
        objective.backward()
        grads.append(model.encoder.mlp[-1].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_loss_terms_match_direct_formulas():
    model = tiny_model().train()
    images = torch.rand(2, 3, 16, 16)
    out = model({"image": images})
    att = out.segmentation_masks
    sigma = torch.tensor([0.09, 0.11, 0.11])
    # NLL: per pixel, log sum_k m_k prod_c N(x_c; mu_kc, sigma_k^2) (Eq. 1), summed, batch mean.
    dens = torch.distributions.Normal(out.appearance, sigma.view(1, 3, 1, 1, 1)).log_prob(images[:, None])
    nll = -torch.log((att * dens.sum(2, keepdim=True).exp()).sum(1)).sum((1, 2, 3)).mean()
    torch.testing.assert_close(out.loss_terms["nll"], nll, rtol=1e-4, atol=1e-2)
    # KL(q(z|x) || N(0, I)) summed over slots and dims.
    q = torch.distributions.Normal(out.posterior_mean, (0.5 * out.posterior_logvar).exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum((1, 2)).mean()
    torch.testing.assert_close(out.loss_terms["kl_z"], kl, rtol=1e-5, atol=1e-5)
    # Mask KL: KL(attention || decoded) with both clamped at 1e-5.
    a, d = att.clamp_min(1e-5), out.masks.clamp_min(1e-5)
    kl_mask = (a * (a.log() - d.log())).sum((1, 2, 3, 4)).mean()
    torch.testing.assert_close(out.loss_terms["kl_mask"], kl_mask, rtol=1e-5, atol=1e-3)


def test_mixture_likelihood_per_channel_variant():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 2, 2)
    means = torch.rand(1, 2, 3, 2, 2)
    weights = torch.softmax(torch.randn(1, 2, 1, 2, 2), dim=1)
    sigma = torch.tensor([0.2, 0.3])
    got = mixture_log_likelihood(image, means, weights.log(), sigma, per_channel=True)
    total = 0.0
    for c in range(3):
        for i in range(2):
            for j in range(2):
                p = sum(weights[0, k, 0, i, j] * math.exp(
                    -0.5 * ((image[0, c, i, j] - means[0, k, c, i, j]) / sigma[k]) ** 2)
                    / (sigma[k] * math.sqrt(2 * math.pi)) for k in range(2))
                total += math.log(p)
    assert got.item() == pytest.approx(total, rel=1e-5)
    assert gaussian_kl_standard_normal(torch.zeros(3), torch.zeros(3)).sum().item() == 0.0


def test_speed_variants_compute_the_same_function():
    """channels_last and the fused broadcast conv are speed options only: same parameters,
    same outputs and same gradients as the plain NCHW, materialised-grid version."""
    images = torch.rand(2, 3, 16, 16)
    results = []
    for channels_last, fused in ((False, False), (True, True)):
        model = tiny_model(channels_last=channels_last, fused_broadcast=fused)
        torch.manual_seed(3)
        out = model({"image": images})
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(a.reconstruction, b.reconstruction, rtol=1e-4, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-3, msg=name)


def test_broadcast_decoder_geometry():
    decoder = SpatialBroadcastDecoder(latent_dim=16, height=64, width=64)
    assert decoder.coords.shape == (1, 2, 72, 72)            # broadcast to (H + 8)^2
    assert [c.out_channels for c in decoder.convs] == [32, 32, 64, 64]
    assert all(c.padding == (0, 0) and c.kernel_size == (3, 3) for c in decoder.convs)
    assert decoder.head.out_channels == 4
    assert decoder(torch.zeros(5, 16)).shape == (5, 4, 64, 64)


def test_paper_architecture_at_64x64():
    cfg = MONetConfig()
    assert (cfg.num_slots, cfg.latent_dim, cfg.beta, cfg.gamma) == (7, 16, 0.5, 0.5)
    assert (cfg.sigma_bg, cfg.sigma_fg) == (0.09, 0.11)
    model = build_model(cfg)
    unet = model.attention
    assert [b[0].out_channels for b in unet.down] == [32, 32, 64, 64, 64]
    assert [b[0].out_channels for b in unet.up] == [64, 64, 32, 32, 32]
    assert unet.bottom_hw == (4, 4)
    assert [m.out_features for m in unet.mlp if isinstance(m, torch.nn.Linear)] == [128, 128, 1024]
    assert model.encoder.mlp[1].in_features == 64 * 3 * 3 and model.encoder.mlp[-1].out_features == 32
    with torch.no_grad():
        out = model.eval()({"image": torch.rand(1, 3, 64, 64)})
    out.check(1, 7, 64, 64)
    assert MODEL_CONFIGS["monet"] is MONetConfig


def test_config_errors_are_user_errors():
    with pytest.raises(ConfigError, match="divisible by 16"):
        MONetConfig(height=40, width=40)
    with pytest.raises(ConfigError, match="num_slots"):
        MONetConfig(num_slots=1)
    with pytest.raises(ConfigError, match="encoder_channels"):
        MONetConfig(height=16, width=16, unet_channels=(8, 8, 8))
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("slot-attention")


def test_tiny_monet_overfits_two_images(tmp_path):
    from lds.training import load_train_config, train
    from lds.training.logging import read_metrics

    images = two_images()
    dataset = [{"image": img} for img in images]
    cfg = load_train_config("monet", overrides=TINY_OVERRIDES + [
        "optim.steps=300", "optim.lr=1e-3", "log.every=25", "log.checkpoint_every=300",
        "log.tensorboard=false"])
    train(cfg, tmp_path / "run", dataset=dataset, progress=False)
    rows = read_metrics(tmp_path / "run")
    first, last = rows[0], rows[-1]
    assert last["step"] == 300
    assert last["loss"] < first["loss"] - 400, (first, last)
    assert last["nll"] < first["nll"] - 400, (first, last)
    from lds.training import load_run

    def reconstruction_mse(model):
        """MSE of the likelihood's mixture (attention masks) and of the rendered scene."""
        with torch.no_grad():
            out = model.eval()({"image": images})
        mixture = (out.segmentation_masks * out.appearance).sum(1)
        return ((mixture - images).pow(2).mean().item(),
                (out.reconstruction - images).pow(2).mean().item())

    trained, _ = load_run(tmp_path / "run")
    untrained = tiny_model(seed=cfg.seed)
    (mix_before, render_before), (mix_after, render_after) = map(reconstruction_mse, (untrained, trained))
    assert mix_after < 0.002 and mix_after < 0.1 * mix_before, (mix_before, mix_after)
    # The decoded masks follow the attention masks through the (gamma-weighted) mask KL, later.
    assert render_after < render_before, (render_before, render_after)


@pytest.mark.parametrize("name, views", [("monet", False), ("iodine", False), ("genesis", False),
                                         ("mulmon", True)])
def test_every_model_refuses_a_wrong_image_shape_in_one_line_naming_what_it_expects(name, views):
    """One shape check (lds.models.base.check_image_batch) serves all four models: a batch
    without the colour axis or of another size is refused before any layer runs."""
    model = build_model(name, MODEL_CONFIGS[name](height=32, width=32))
    lead = (1, 2) if views else (2,)
    batch = {"viewpoint": torch.zeros(1, 2, model.cfg.viewpoint_size)} if views else {}
    with pytest.raises(ValueError, match=r"must be \((scenes, views|B), 3, H, W\)"):
        model({**batch, "image": torch.rand(*lead, 32, 32)})
    with pytest.raises(ValueError, match=f"{model.__class__.__name__} was built for 32x32 images, got 16x16"):
        model({**batch, "image": torch.rand(*lead, 3, 16, 16)})
