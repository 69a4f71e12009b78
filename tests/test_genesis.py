"""GENESIS: output contract, stick breaking, the loss terms against direct formulas, LDS on the
concatenated slot latents, the rules taken from applied-ai-lab/genesis (GECO on hand-computed
numbers, the prior scales, the autoregressive posterior, the per-channel mixture, the network
sizes), GECO's resume state, overfitting two images, and `ldsrig train genesis` end to end on a
tiny store."""

from __future__ import annotations

import math

import torch
import yaml
from typer.testing import CliRunner

from lds.models import PAPER_TRAIN_SETTINGS, build_model
from lds.models.genesis import GENESIS, GENESISConfig
from lds.prior import lds_prior
from lds.training import list_checkpoints, load_run, load_train_config
from lds.training.logging import read_metrics
from tests.test_monet import one_torch_thread, two_images  # noqa: F401 (fixture)
from tests.test_train import make_store

TINY = dict(height=16, width=16, num_slots=3, mask_latent_dim=6, comp_latent_dim=4,
            mask_encoder_channels=(8, 8), mask_strides=(1, 2), mask_encoder_hidden=16,
            mask_decoder_channels=(8, 8, 8), prior_lstm_hidden=16, comp_encoder_channels=(8, 8),
            comp_encoder_hidden=16, comp_decoder_channels=(16, 16), comp_prior_hidden=16)
TINY_OVERRIDES = [
    "model.height=16", "model.width=16", "model.num_slots=3", "model.mask_latent_dim=6",
    "model.comp_latent_dim=4", "model.mask_encoder_channels=[8,8]", "model.mask_strides=[1,2]",
    "model.mask_encoder_hidden=16", "model.mask_decoder_channels=[8,8,8]",
    "model.prior_lstm_hidden=16", "model.comp_encoder_channels=[8,8]",
    "model.comp_encoder_hidden=16", "model.comp_decoder_channels=[16,16]",
    "model.comp_prior_hidden=16", "optim.batch_size=2",
]


def tiny_model(seed: int = 0, **changes) -> GENESIS:
    torch.manual_seed(seed)
    return build_model("genesis", GENESISConfig(**{**TINY, **changes}))


def test_stick_breaking_masks_sum_to_one_and_follow_the_recursion():
    alpha = torch.randn(2, 4, 1, 3, 3)
    log_pi = GENESIS.stick_breaking(alpha)
    torch.testing.assert_close(log_pi.exp().sum(1), torch.ones(2, 1, 3, 3))
    a = torch.sigmoid(alpha)
    scope = torch.ones_like(a[:, 0])
    for k in range(3):
        torch.testing.assert_close(log_pi[:, k].exp(), scope * a[:, k])
        scope = scope * (1 - a[:, k])
    torch.testing.assert_close(log_pi[:, 3].exp(), scope)
    # Saturated logits stay finite in log space.
    assert torch.isfinite(GENESIS.stick_breaking(torch.full((1, 3, 1, 1, 1), 80.0))).all()


def test_output_contract_and_loss_terms_match_direct_formulas():
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    model = tiny_model(geco=False, beta=0.7, pixel_std=0.2).train()
    images = torch.rand(2, 3, 16, 16)
    out = model({"image": images}).check(2, 3, 16, 16)
    assert out.slot_latents.shape[-1] == 6 + 4                # [z^m, z^c]
    assert set(out.loss_terms) == {"nll", "kl_mask", "kl_comp"}
    torch.testing.assert_close(out.masks, torch.softmax(out.mask_logits, dim=1))
    torch.testing.assert_close(out.reconstruction, (out.masks * out.appearance).sum(1))
    # Stick-breaking masks have no logit of a component's own: metrics count duplicates on the
    # argmax segments and Figure 2 draws each component alone as pi_k * x_k.
    assert out.masks_partition and out.detached().masks_partition
    from lds.evaluation.figures import render_components_alone
    alone = render_components_alone(out.detached(), "black")
    torch.testing.assert_close(alone, out.masks.detach() * out.appearance.detach().clamp(0, 1))
    # The original's mixture: each pixel's each colour channel is its own draw.
    dens = torch.distributions.Normal(out.appearance, 0.2).log_prob(images[:, None])
    nll = -torch.log((out.masks * dens.exp()).sum(1)).sum((1, 2, 3)).mean()
    torch.testing.assert_close(out.loss_terms["nll"], nll, rtol=1e-4, atol=1e-2)
    t = out.loss_terms
    torch.testing.assert_close(out.loss, t["nll"] + 0.7 * (t["kl_mask"] + t["kl_comp"]))
    objective, prior = training_objective(out, LDSConfig(enabled=True, weight=0.5))
    torch.testing.assert_close(prior, lds_prior(out.slot_latents, 0.1).mean())   # on [z^m, z^c]
    torch.testing.assert_close(objective, out.loss - 0.5 * prior)
    # The first mask latent's prior is N(0, I): its KL share has the closed-form expectation
    # structure; here check the sampled latents differ from the means in training, not in eval.
    assert not torch.equal(out.slot_latents, out.posterior_mean)
    model.eval()
    with torch.no_grad():
        out_eval = model({"image": images}).check(2, 3, 16, 16)
    torch.testing.assert_close(out_eval.slot_latents, out_eval.posterior_mean)
    # model.likelihood=pixel: each pixel's RGB vector is one draw (the LDS paper's Eq. 1)
    per_pixel = tiny_model(geco=False, beta=0.7, pixel_std=0.2, likelihood="pixel").train()
    torch.manual_seed(0)
    out = per_pixel({"image": images})
    dens = torch.distributions.Normal(out.appearance, 0.2).log_prob(images[:, None]).sum(2)
    nll = -torch.log((out.masks[:, :, 0] * dens.exp()).sum(1)).sum((1, 2)).mean()
    torch.testing.assert_close(out.loss_terms["nll"], nll, rtol=1e-4, atol=1e-2)


def test_lds_changes_the_loss_by_exactly_the_weighted_prior():
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    images = torch.rand(2, 3, 16, 16)
    torch.manual_seed(3)
    out = tiny_model(geco=False)({"image": images})
    off, zero = training_objective(out, LDSConfig(enabled=False))
    on, _ = training_objective(out, LDSConfig(enabled=True, weight=1.0))
    assert zero.item() == 0.0
    torch.testing.assert_close(on - off, -lds_prior(out.slot_latents).mean(), rtol=1e-5, atol=1e-3)


def test_geco_updates_beta_in_training_only_and_keeps_it_in_the_state_dict():
    model = tiny_model(geco=True, geco_step_size=1e-3).train()
    images = torch.rand(2, 3, 16, 16)
    assert model.geco_beta.item() == 1.0 and math.isnan(model.geco_err_ema.item())
    out = model({"image": images})
    # The first step uses beta_init; the NLL is far above the goal, so beta then decreases.
    assert out.extras["kl_weight"].item() == 1.0
    goal = 0.5655 * 3 * 16 * 16
    err = out.loss_terms["nll"].item()
    assert err > goal
    assert model.geco_err_ema.item() == err
    # The step size is scaled by 64^2 / (16 * 16) = 16 at this resolution.
    assert model.geco_beta.item() == pytest_approx(math.exp(16e-3 * (goal - err)))
    assert {"geco_beta", "geco_err_ema"} <= set(model.state_dict())
    before = model.geco_beta.clone()
    model.eval()
    with torch.no_grad():
        model({"image": images})
    assert torch.equal(model.geco_beta, before)


def test_geco_rule_on_hand_computed_numbers():
    """applied-ai-lab/genesis utils/geco.py and train.py at 16x16: goal = 0.5655 * 3 * 16 * 16
    = 434.304, step = 1e-5 * 64^2 / 16^2 = 1.6e-4, err_ema = err at the first step, x10 while
    the goal is met, beta clamped to [1e-10, 1e10], the loss using beta before the update."""
    model = tiny_model(geco=True).train()
    assert model._kl_weight(torch.tensor(500.0)).item() == 1.0
    assert model.geco_err_ema.item() == 500.0
    # constraint = 434.304 - 500 = -65.696; beta = exp(1.6e-4 * -65.696) = exp(-0.01051136)
    assert model.geco_beta.item() == pytest_approx(math.exp(-0.01051136))
    # err_ema = 0.99 * 500 + 0.01 * 300 = 498; constraint = -63.696; exponent -0.01019136
    assert model._kl_weight(torch.tensor(300.0)).item() == pytest_approx(math.exp(-0.01051136))
    assert model.geco_err_ema.item() == pytest_approx(498.0)
    assert model.geco_beta.item() == pytest_approx(math.exp(-0.01051136 - 0.01019136))

    met = tiny_model(geco=True).train()
    met._kl_weight(torch.tensor(400.0))       # constraint +34.304, sped up: 10 * 1.6e-4 * 34.304
    assert met.geco_beta.item() == pytest_approx(math.exp(0.0548864))
    met.geco_beta.fill_(1e10)
    met._kl_weight(torch.tensor(0.0))
    assert met.geco_beta.item() == pytest_approx(1e10)
    met.geco_beta.fill_(1e-10)
    met._kl_weight(torch.tensor(1e6))
    assert met.geco_beta.item() == pytest_approx(1e-10)
    # Not in training, or without gradients: no update.
    with torch.no_grad():
        met._kl_weight(torch.tensor(1.0))
    assert met.geco_beta.item() == pytest_approx(1e-10)


def test_priors_and_posteriors_use_the_original_parametrisation():
    """Learned priors: mean tanh(.), std sigmoid(. + 4) + 1e-4, p(z^m_1) = N(0, I); posteriors:
    std softplus(. + 0.5) + 1e-8 (applied-ai-lab/genesis models/genesis_config.py,
    modules/blocks.py)."""
    model = tiny_model().eval()
    z = 5 * torch.randn(2, 3, 6)
    with torch.no_grad():
        mean, std = model.mask_prior(z)
        raw = model.prior_head(model.prior_lstm(z[:, :-1])[0])
        comp_mean, comp_std = model.component_prior(z)
        comp_raw = model.comp_prior(z)
        features = model.image_features(torch.rand(2, 3, 16, 16))
        _, q_mean, q_std = model.mask_posterior(features)
        first = model.posterior_first(features)
    assert torch.equal(mean[:, 0], torch.zeros(2, 6)) and torch.equal(std[:, 0], torch.ones(2, 6))
    torch.testing.assert_close(mean[:, 1:], torch.tanh(raw[..., :6]))
    torch.testing.assert_close(std[:, 1:], torch.sigmoid(raw[..., 6:] + 4) + 1e-4)
    torch.testing.assert_close(comp_mean, torch.tanh(comp_raw[..., :4]))
    torch.testing.assert_close(comp_std, torch.sigmoid(comp_raw[..., 4:] + 4) + 1e-4)
    torch.testing.assert_close(q_mean[:, 0], first[:, :6])
    torch.testing.assert_close(q_std[:, 0], torch.nn.functional.softplus(first[:, 6:] + 0.5) + 1e-8)


def test_mask_posterior_is_autoregressive_on_the_sampled_latents():
    """q(z^m_k | x, z^m_{k-1}): step k's conditional follows the *sampled* z^m_{k-1} (the
    original's LatentSBP); scoring given latents reproduces the draw's conditionals."""
    model = tiny_model().eval()
    with torch.no_grad():
        features = model.image_features(torch.rand(2, 3, 16, 16))
        z, mean, std = model.mask_posterior(features, sample=True,
                                            generator=torch.Generator().manual_seed(0))
        _, mean_again, std_again = model.mask_posterior(features, z_mask=z)
        moved = z.clone()
        moved[:, 0] += 1.0
        _, mean_moved, _ = model.mask_posterior(features, z_mask=moved)
        z_eval, mean_eval, _ = model.mask_posterior(features)
    torch.testing.assert_close(mean_again, mean)
    torch.testing.assert_close(std_again, std)
    torch.testing.assert_close(mean_moved[:, 0], mean[:, 0])
    assert not torch.allclose(mean_moved[:, 1], mean[:, 1])
    assert torch.equal(z_eval, mean_eval)                  # evaluation follows the mean path


def test_network_sizes_match_the_original():
    """Parameter counts of applied-ai-lab/genesis's Genesis (9abf202, K-independent), counted
    by building it with its defaults: 12,620,548 at 64x64 and 4,559,620 at 32x32; the mask VAE
    has ten batch norms (five gated convs, five gated deconvs)."""
    for size, count in ((64, 12_620_548), (32, 4_559_620)):
        model = build_model("genesis", GENESISConfig(height=size, width=size))
        assert sum(p.numel() for p in model.parameters()) == count
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 10
    with torch.no_grad():
        model.eval()
        features = model.image_features(torch.rand(2, 3, 32, 32))
        assert features.shape == (2, 256)
        assert model.mask_decoder(torch.randn(2, 64)).shape == (2, 1, 32, 32)


def test_elu_broadcast_decoder_fused_first_conv_is_the_same_function():
    from lds.models.base import SpatialBroadcastDecoder

    torch.manual_seed(0)
    decoder = SpatialBroadcastDecoder(4, 8, 6, (8, 8), 3, fused_broadcast=True, fused_trunk=False,
                                      activation="elu")
    z = torch.randn(5, 4, requires_grad=True)
    fused = decoder(z)
    (grad_fused,) = torch.autograd.grad(fused.square().sum(), z)
    decoder.fused_broadcast = False
    plain = decoder(z)
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), z)
    assert fused.shape == (5, 3, 8, 6)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_fused, grad_plain, rtol=1e-4, atol=1e-4)


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, rel=1e-5)


def test_overfits_two_images():
    model = tiny_model(seed=0, geco=False, pixel_std=0.1).train()
    images = two_images()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        mse_before = (model({"image": images}).reconstruction - images).pow(2).mean().item()
    model.train()
    losses = []
    for step in range(120):
        torch.manual_seed(step)
        out = model({"image": images})
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(out.loss.item())
    # Summed over 16x16x3 values, the loss is not scale-free (see tests/test_iodine.py); the
    # single-sample loss is noisy, so compare the mean of the last ten steps with the first:
    # require a fall of 300 nats per image and a lower reconstruction error of the mean.
    first, last = losses[0], sum(losses[-10:]) / 10
    assert last < first - 300, (first, last)
    model.eval()
    with torch.no_grad():
        mse_after = (model({"image": images}).reconstruction - images).pow(2).mean().item()
    assert mse_after < 0.8 * mse_before, (mse_before, mse_after)


def test_paper_settings_and_cli_train_with_resume(tmp_path):
    from cli import app

    assert PAPER_TRAIN_SETTINGS["genesis"]["optim"]["batch_size"] == 32
    cfg = load_train_config("genesis")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.steps) == ("adam", 1e-4, 500_000)
    assert cfg.optim.grad_clip == 0 and cfg.optim.schedule == "constant"   # train.py: no clip
    assert cfg.model.geco and cfg.model.pixel_std == 0.7 and cfg.model.beta == 0.5

    store, run_dir = tmp_path / "tiny.zarr", tmp_path / "run"
    make_store(store)
    runner = CliRunner()
    args = ["train", "genesis", "--data", str(store), "--out", str(run_dir), "--steps", "2",
            "--lds", "--no-progress", *TINY_OVERRIDES, "log.every=1", "log.checkpoint_every=1",
            "log.tensorboard=false"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["name"] == "genesis" and saved["lds"]["enabled"] is True
    rows = read_metrics(run_dir)
    assert {"loss", "nll", "kl_mask", "kl_comp", "lds"} <= set(rows[0]) and rows[0]["lds"] < 0
    resumed = runner.invoke(app, ["train", "genesis", "--out", str(run_dir), "--resume",
                                  "--steps", "3", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert list_checkpoints(run_dir / "checkpoints")[-1] == 3
    # `ldsrig eval` works unchanged on the run (it runs the model under torch.no_grad()).
    evaluated = runner.invoke(app, ["eval", str(run_dir), "--data", str(store), "--batch-size", "3",
                                    "--figure", "2", "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    assert (run_dir / "eval" / "eval.json").is_file()
    model, cfg = load_run(run_dir)
    assert isinstance(model, GENESIS)
    # GECO's state came back with the checkpoint (two steps, then one more after resume).
    assert model.geco_beta.item() < 1.0 and math.isfinite(model.geco_err_ema.item())
