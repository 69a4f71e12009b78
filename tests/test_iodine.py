"""IODINE: output contract, LDS at every iteration (exactly), the analytic refinement gradients,
gradient checkpointing as the same function, the per-step NaN check, overfitting two images,
and `ldsrig train iodine` end to end on a tiny store (with resume)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lds.contract import ModelOutput
from lds.models import PAPER_TRAIN_SETTINGS, build_model
from lds.models.iodine import IODINE, IODINEConfig, standardize
from lds.prior import lds_prior
from lds.training import NonFiniteLossError, list_checkpoints, load_run, load_train_config, train
from lds.training.logging import read_metrics
from tests.test_monet import one_torch_thread, two_images  # noqa: F401 (fixture)
from tests.test_train import ImageList, make_store

TINY = dict(height=16, width=16, num_slots=3, latent_dim=4, num_iterations=3,
            decoder_channels=(16, 16), refine_channels=(8, 8), refine_hidden=16, lstm_hidden=16)
TINY_OVERRIDES = [
    "model.height=16", "model.width=16", "model.num_slots=3", "model.latent_dim=4",
    "model.num_iterations=3", "model.decoder_channels=[16,16]", "model.refine_channels=[8,8]",
    "model.refine_hidden=16", "model.lstm_hidden=16", "optim.batch_size=2",
]


def tiny_model(seed: int = 0, **changes) -> IODINE:
    torch.manual_seed(seed)
    return build_model("iodine", IODINEConfig(**{**TINY, **changes}))


def run(model: IODINE, images: torch.Tensor, seed: int = 1) -> ModelOutput:
    torch.manual_seed(seed)           # the same sampling noise for runs that are compared
    return model({"image": images})


def test_output_contract_loss_composition_and_eval_mode():
    from lds.prior import weighted_lds_prior

    model = tiny_model().train()
    images = torch.rand(2, 3, 16, 16)
    out = run(model, images).check(2, 3, 16, 16)
    assert set(out.loss_terms) == {"nll", "kl_z"}
    torch.testing.assert_close(out.masks, torch.softmax(out.mask_logits, dim=1))
    torch.testing.assert_close(out.reconstruction, (out.masks * out.appearance).sum(1))
    assert 0 <= out.appearance.min() and out.appearance.max() <= 1
    # T = 3 refinement updates, 4 decodes: loss = sum_t t/T [nll_t + beta kl_t - lambda lds_t]
    # (the original's linspace weights), and the terms are those sums.
    weights = out.lds_weights
    torch.testing.assert_close(weights, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    e = out.extras
    for term, per_iteration in (("nll", "nll_per_iteration"), ("kl_z", "kl_per_iteration")):
        torch.testing.assert_close(out.loss_terms[term], (weights * e[per_iteration]).sum())
    t = out.loss_terms
    torch.testing.assert_close(out.loss, t["nll"] + t["kl_z"])
    # One latent sample per decode for the prior; the reported latents are the last one.
    assert out.lds_latents.shape == (4, 2, 3, 4)
    _, per_step = weighted_lds_prior(out.lds_latents, weights)
    torch.testing.assert_close(per_step[-1], lds_prior(out.slot_latents).mean())
    # ... and the mean each was sampled around (lds.latents=mean): the last is the posterior's.
    assert out.lds_means.shape == (4, 2, 3, 4) and out.lds_means.requires_grad
    torch.testing.assert_close(out.lds_means[-1], out.posterior_mean)
    torch.testing.assert_close(out.lds_means[0], model.initial_posterior[:4].expand(2, 3, 4))
    assert not torch.equal(out.slot_latents, out.posterior_mean)
    # The refinement moved the posterior away from the shared initial one.
    assert not torch.allclose(out.posterior_mean, model.initial_posterior[:4].expand(2, 3, 4))
    # Evaluation under no_grad (as lds.evaluation runs it): autograd is used internally for
    # dL/dlambda, the outputs come back detached, and the last iteration decodes the mean.
    model.eval()
    with torch.no_grad():
        out_eval = run(model, images).check(2, 3, 16, 16)
    assert not out_eval.loss.requires_grad and not out_eval.masks.requires_grad
    torch.testing.assert_close(out_eval.slot_latents, out_eval.posterior_mean)
    assert math.isfinite(out_eval.loss.item())


def test_lds_changes_the_loss_by_exactly_the_weighted_prior_of_every_iteration():
    from lds.prior import weighted_lds_prior
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    images = torch.rand(2, 3, 16, 16)
    out = run(tiny_model(), images)
    off, _ = training_objective(out, LDSConfig(enabled=False))
    on, prior = training_objective(out, LDSConfig(enabled=True, weight=1.0))
    total, lds_t = weighted_lds_prior(out.lds_latents, out.lds_weights)
    assert lds_t.shape == (4,) and bool((lds_t != 0).all())   # T + 1 = 4 decodes
    expected = -(out.lds_weights * lds_t).sum()
    torch.testing.assert_close(on - off, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(prior, total)
    # ... and it changes the gradients of the parameters (LDS shapes training only: the
    # refinement trajectory is the model's own, the same with and without it).
    grads = []
    for enabled in (False, True):
        model = tiny_model()
        out = run(model, images)
        objective, _ = training_objective(out, LDSConfig(enabled=enabled, weight=1.0))
        objective.backward()
        grads.append(model.refine.head.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_analytic_refinement_gradients_match_autograd():
    """dNLL/d(mask logits) and dNLL/dmu fed to the refinement network equal autograd's."""
    model = tiny_model()
    image = torch.rand(2, 3, 16, 16)
    z = torch.randn(2, 3, 4)
    r = model._render(image, z)
    mask_logits = r["mask_logits"].detach().requires_grad_()
    means = r["appearance"].detach().requires_grad_()
    sigma = model.cfg.pixel_sigma
    density = torch.distributions.Normal(means, sigma).log_prob(image[:, None]).sum(2, keepdim=True).exp()
    nll = -torch.log((torch.softmax(mask_logits, 1) * density).sum(1)).sum()
    grad_logits, grad_means = torch.autograd.grad(nll, [mask_logits, means])
    responsibility = torch.exp(r["log_joint"] - r["log_pixel"]).detach()
    torch.testing.assert_close(r["log_masks"].exp().detach() - responsibility, grad_logits,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(-(responsibility / sigma**2) * r["diff"].detach(), grad_means,
                               rtol=1e-4, atol=1e-3)
    # The refinement inputs: 17 channels; the LN'd ones are standardised and carry no graph.
    posterior = torch.zeros(2, 3, 8, requires_grad=True)
    image_inputs, vector = model._refinement_inputs(image, r, posterior, torch.randn(2, 3, 8))
    assert image_inputs.shape == (6, 17, 16, 16) and vector.shape == (6, 16)
    ln = standardize(torch.randn(4, 3, 5, 5) * 7 + 3, (1, 2, 3))
    torch.testing.assert_close(ln.mean((1, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(ln.std((1, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


def test_refinement_inputs_follow_the_original_formulas():
    """The mask-gradient, mask-posterior, log p(x) and counterfactual channels, each against a
    direct computation in probability space (float64, slot by slot) on a tiny case."""
    model = tiny_model().double()
    image = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    r = model._render(image, torch.randn(2, 3, 4, dtype=torch.float64))
    posterior = torch.zeros(2, 3, 8, dtype=torch.float64)
    image_inputs, _ = model._refinement_inputs(image, r, posterior, torch.randn_like(posterior))
    channel = image_inputs.view(2, 3, 17, 16, 16)
    logits = r["mask_logits"].detach()                                    # (B, K, 1, H, W)
    density = torch.distributions.Normal(r["appearance"].detach(), model.cfg.pixel_sigma) \
        .log_prob(image[:, None]).sum(2, keepdim=True).exp()              # N_k, (B, K, 1, H, W)
    masks = torch.softmax(logits, 1)
    likelihood = (masks * density).sum(1, keepdim=True)                  # p(x), (B, 1, 1, H, W)

    def layer_norm(x):                      # biased variance, eps inside the root (snt.LayerNorm)
        mean = x.mean((2, 3, 4), keepdim=True)
        var = ((x - mean) ** 2).mean((2, 3, 4), keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5)

    # dNLL/d(mask logit_k) = m_k - r_k
    torch.testing.assert_close(channel[:, :, 11:12], layer_norm(masks - masks * density / likelihood))
    # mask posterior N_k / (sum_j N_j + 1e-6): likelihoods alone, no masks
    torch.testing.assert_close(channel[:, :, 12:13], density / (density.sum(1, keepdim=True) + 1e-6))
    # log p(x) of the mixture, standardised over the image, the same for every slot
    torch.testing.assert_close(channel[:, :, 13:14], layer_norm(likelihood.log()).expand(2, 3, 1, 16, 16))
    # counterfactual: log p(x) - log p_{-k}(x), the other slots' masks renormalised
    for k in range(3):
        others = [j for j in range(3) if j != k]
        masks_k = torch.softmax(logits[:, others], 1)
        likelihood_k = (masks_k * density[:, others]).sum(1, keepdim=True)
        torch.testing.assert_close(channel[:, k:k + 1, 14:15],
                                   layer_norm(likelihood.log() - likelihood_k.log()))


def test_posterior_is_mean_and_softplus_variance():
    """lambda = [mean, s] with variance softplus(s) (the original's latent_dist); lambda_0 = N(0, I)."""
    model = tiny_model()
    initial = model.initial_posterior.detach().view(1, 1, 8)
    assert float(model._kl(initial)) == pytest.approx(0.0, abs=1e-6)
    posterior = torch.randn(2, 3, 8)
    mean, var = posterior[..., :4], torch.nn.functional.softplus(posterior[..., 4:])
    q = torch.distributions.Normal(mean, var.sqrt())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum((1, 2))
    torch.testing.assert_close(model._kl(posterior), expected)
    noise = torch.randn(2, 3, 4)
    torch.testing.assert_close(model._sample(posterior, noise), mean + var.sqrt() * noise)


def test_gradient_checkpointing_is_the_same_function():
    images = torch.rand(2, 3, 16, 16)
    results = []
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    for flag in (False, True):
        model = tiny_model(grad_checkpoint=flag)
        out = run(model, images)
        loss, _ = training_objective(out, LDSConfig(enabled=True, weight=1.0))   # through z_t too
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def test_non_finite_refinement_is_caught_and_stops_training(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.refine.head.bias[0] = float("nan")     # the first update makes lambda NaN
    with pytest.warns(RuntimeWarning, match="refinement step 1"):
        out = run(model, torch.rand(2, 3, 16, 16))
    assert math.isnan(out.loss.item())
    # Through the shared loop: the NaN guard stops with the pre-failure state saved.
    cfg = load_train_config("iodine", overrides=TINY_OVERRIDES + [
        "optim.steps=3", "log.tensorboard=false", "model.pixel_sigma=1e-30"])
    data = ImageList(torch.rand(4, 3, 16, 16))
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        with pytest.warns(RuntimeWarning):
            train(cfg, tmp_path / "run", dataset=data, progress=False)
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == [0]


def test_overfits_two_images():
    model = tiny_model(seed=0).train()
    images = two_images()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, nlls = [], []
    for step in range(150):
        torch.manual_seed(step)
        out = model({"image": images})
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(out.loss.item())
        nlls.append(out.extras["nll_per_iteration"].detach())
    # The loss is a negative log-density (plus KL) summed over 16x16x3 values and weighted over
    # 4 decodes, so it is not scale-free: the untrained model (sigmoid(0) = 0.5 on a grey
    # background) starts near -2e2 and a fit within sigma = 0.1 reaches about -1.2e3. Require
    # a fall of 600 nats per image (the mean of the last ten steps against the first step).
    first, last = losses[0], sum(losses[-10:]) / 10
    assert last < first - 600, (first, last)
    # The learned refinement improves the fit from lambda_0 to the last posterior. Each iteration's
    # NLL is from one z sample and the refinement of this tiny model is still noisy after 60 steps
    # (on some seeds the last iteration is then worse than the first), so train 150 steps and
    # compare the means over the last twenty.
    nll = torch.stack(nlls[-20:]).mean(0)
    assert nll[-1] < nll[0], nll


def test_paper_settings_and_cli_train_with_resume(tmp_path):
    from cli import app

    assert PAPER_TRAIN_SETTINGS["iodine"]["optim"]["batch_size"] == 8
    cfg = load_train_config("iodine")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule, cfg.optim.grad_clip) == \
        ("adam", 1e-4, "gqn", 5.0)
    assert (cfg.model.num_slots, cfg.model.num_iterations, cfg.model.latent_dim) == (7, 5, 16)
    assert cfg.lds.weight == 1.0 and cfg.model.beta == 1.0

    store, run_dir = tmp_path / "tiny.zarr", tmp_path / "run"
    make_store(store)
    runner = CliRunner()
    args = ["train", "iodine", "--data", str(store), "--out", str(run_dir), "--steps", "2",
            "--lds", "--no-progress", *TINY_OVERRIDES, "log.every=1", "log.checkpoint_every=1",
            "log.tensorboard=false"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "to step 2" in result.output
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["name"] == "iodine" and saved["lds"]["enabled"] is True
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert {"loss", "nll", "kl_z", "lds", "grad_norm"} <= set(rows[0]) and rows[0]["lds"] < 0
    # the prior of each of the T + 1 = 4 decodes, logged beside the weighted total
    per_iteration = [rows[0][f"lds_iter{t}"] for t in range(4)]
    weights = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=torch.float64)
    assert float((weights * torch.tensor(per_iteration, dtype=torch.float64)).sum()) == \
        pytest.approx(rows[0]["lds"], rel=1e-4)
    assert "lds_iter4" not in rows[0]
    resumed = runner.invoke(app, ["train", "iodine", "--out", str(run_dir), "--resume",
                                  "--steps", "3", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert list_checkpoints(run_dir / "checkpoints")[-1] == 3
    # `ldsrig eval` works unchanged on the run (it runs the model under torch.no_grad()).
    evaluated = runner.invoke(app, ["eval", str(run_dir), "--data", str(store), "--batch-size", "3",
                                    "--figure", "2", "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    assert (run_dir / "eval" / "eval.json").is_file()
    model, cfg = load_run(run_dir)
    assert isinstance(model, IODINE) and cfg.model.num_iterations == 3


def test_evaluation_is_reproducible_and_the_inference_gap_interface_works():
    from lds.evaluation.gap import estimate_gap
    from lds.models.interface import standard_normal_log_density

    model = tiny_model().eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a, b = model({"image": images}), model({"image": images})
    torch.testing.assert_close(a.posterior_mean, b.posterior_mean)   # seeded eval noise
    torch.testing.assert_close(a.reconstruction, b.reconstruction)
    # log p~(x, z) is the mixture likelihood plus the standard normal prior.
    posterior = model.posterior({"image": images})
    torch.testing.assert_close(posterior.mean, a.posterior_mean)
    z = torch.randn(3, 2, 3, 4)
    with torch.no_grad():
        got = model.log_joint({"image": images}, posterior, z)
        expected = torch.stack([-model._render(images, z[i])["log_pixel"].flatten(1).sum(1).neg()
                                for i in range(3)]) + standard_normal_log_density(z)
    torch.testing.assert_close(got, expected)
    gap = estimate_gap(model, {"image": images}, num_samples=16, chunk=8,
                       generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(gap["log_px"]).all()) and bool((gap["gap"] >= 0).all())


def test_evaluation_does_not_depend_on_the_batch():
    """An image's posterior, metrics and gap are the same alone, in a batch of 3, at another
    position, or under another batch size: its eval noise is seeded by its image index."""
    model = tiny_model().eval()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    index = torch.tensor([40, 41, 42])
    together = model({"image": images, "image_index": index})
    alone = model({"image": images[1:2], "image_index": index[1:2]})
    swapped = model({"image": images[[2, 1]], "image_index": index[[2, 1]]})
    for a, b in ((together.posterior_mean[1], alone.posterior_mean[0]),
                 (together.posterior_mean[1], swapped.posterior_mean[1]),
                 (together.reconstruction[1], alone.reconstruction[0])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class IndexedImages(ImageList):
    """ImageList with the store's image index, which seeds IODINE's eval noise per image."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        return {"image": item["image"], "label_map": item["label_map"], "image_index": torch.tensor(100 + i)}


def test_eval_reports_sim_at_each_refinement_iteration_whatever_the_batch():
    """eval.json's meta carries Sim of the posterior means at each of the T + 1 decodes
    (issue 14: does inference pull the slots apart as it refines?), computed from the model's
    lds_means, and the same for any batch size; the per-image records stay scalar."""
    from lds.evaluation.evaluate import evaluate
    from lds.evaluation.metrics import slot_similarity

    model = tiny_model().eval()
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    results = [evaluate(model, IndexedImages(images), batch_size=size, progress=False)
               for size in (5, 2)]
    with torch.no_grad():
        out = model({"image": images, "image_index": torch.arange(100, 105)})
    expected = torch.stack([slot_similarity(m) for m in out.lds_means]).mean(1)   # (T + 1,)
    for result in results:
        by_iteration = result.meta["sim_by_iteration"]
        assert by_iteration["n"] == [5] * 4
        torch.testing.assert_close(torch.tensor(by_iteration["mean"], dtype=torch.float32),
                                   expected.float(), rtol=1e-4, atol=1e-5)
        assert all(not isinstance(v, list) for r in result.records for v in r.values())
    assert results[0].meta["sim_by_iteration"]["mean"] == pytest.approx(
        results[1].meta["sim_by_iteration"]["mean"], abs=1e-5)
    # The last iteration's mean is the posterior the metrics score: its Sim is the "sim" metric.
    assert results[0].meta["sim_by_iteration"]["mean"][-1] == pytest.approx(
        results[0].mean("sim"), abs=1e-5)
