"""The inference-gap interface of MulMON and GENESIS: each model's ELBO at unit weights is the
model's own loss terms recombined with unit weights, G >= 0, the estimate is finite and stable
across chunk sizes, and `ldsrig gap` runs on tiny trained runs of both models."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from lds.evaluation.gap import estimate_gap, gap_from_log_weights, importance_weights


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_estimates(model, batch, num_samples=60):
    """G >= 0 per item, finite, and the same estimate (up to Monte-Carlo error) for two chunk
    sizes under one generator seed."""
    runs = [estimate_gap(model, batch, num_samples, chunk=chunk,
                         generator=torch.Generator().manual_seed(3)) for chunk in (7, num_samples)]
    for out in runs:
        for key in ("log_px", "elbo", "gap", "ess"):
            assert torch.isfinite(out[key]).all(), key
        assert (out["gap"] >= 0).all()
        assert (out["ess"] >= 1).all() and (out["ess"] <= num_samples + 1e-9).all()
    # Different chunking gives a different sample set; the estimates must agree to well within
    # the spread of the log weights (a few nats on ~1e3-nat values).
    spread = importance_weights(model, batch, num_samples, chunk=num_samples,
                                generator=torch.Generator().manual_seed(3)).std(0)
    for key in ("log_px", "elbo"):
        difference = (runs[0][key] - runs[1][key]).abs()
        assert (difference <= 2 * spread / math.sqrt(num_samples) * 3 + 1e-6).all(), (key, difference, spread)
    # Same chunking, same seed: bit-identical (the generator drives every draw).
    again = estimate_gap(model, batch, num_samples, chunk=7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again["gap"], runs[0]["gap"])
    return runs[0]


# ---- MulMON --------------------------------------------------------------------------------

def _tiny_mulmon():
    from tests.test_mulmon import tiny_model
    return tiny_model().eval()


def test_mulmon_log_weight_at_the_mean_is_its_elbo_terms_at_unit_weights():
    """log w(z = posterior mean) = -(sum over observed views of MulMON's per-view NLL + its KL
    against lambda_0), each computed by MulMON's own refinement iteration (``_iteration``) on
    the final posterior: the views' and iterations' weights set to 1."""
    from tests.test_mulmon import scenes_batch

    model = _tiny_mulmon()
    batch = scenes_batch(scenes=2, views=4)
    observed = model.gap_observed_views(4)
    assert observed == 3                                  # eval split: one query view left out
    with torch.no_grad():
        posterior = model.posterior(batch)
        z = posterior.mean.unsqueeze(0)
        log_w = model.log_joint(batch, posterior, z) - model.log_q(posterior, z)
    # The final posterior is the one MulMON's eval forward predicts the query views from.
    out = model(batch)
    assert torch.allclose(posterior.mean, out.posterior_mean.view(2, 4, 3, -1)[:, -1])
    for scene in range(2):
        lam = torch.cat([posterior.mean[scene:scene + 1], posterior.logvar[scene:scene + 1]], -1)
        lam = lam.requires_grad_()
        prior = model.initial_posterior.expand_as(lam)
        view_embedding = model.view_encoder(batch["viewpoint"][scene:scene + 1])
        nll_sum, kls = 0.0, []
        for view in range(observed):
            nll, kl = model._iteration(batch["image"][scene:scene + 1, view],
                                       view_embedding[:, view: view + 1],
                                       model.decoder.coordinate_features(), lam, prior, None,
                                       None)[:2]
            nll_sum += float(nll.detach())
            kls.append(float(kl.detach()))
        assert kls[0] == pytest.approx(kls[-1])          # the KL does not depend on the view
        expected = -(nll_sum + kls[0])
        assert float(log_w[0, scene]) == pytest.approx(expected, rel=1e-5, abs=1e-2)


def test_mulmon_estimate_is_finite_non_negative_and_chunk_stable():
    from tests.test_mulmon import scenes_batch

    model = _tiny_mulmon()
    out = _check_estimates(model, scenes_batch(scenes=2, views=3), num_samples=40)
    assert out["gap"].shape == (2,)
    # One view: it is the only observed view (no query to leave out).
    one = estimate_gap(model, scenes_batch(scenes=1, views=1), 8, chunk=4,
                       generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(one["gap"]).all() and (one["gap"] >= 0).all()


# ---- GENESIS -------------------------------------------------------------------------------

def _tiny_genesis():
    from tests.test_genesis import tiny_model
    return tiny_model().eval()


def test_genesis_log_weight_at_the_mean_is_its_loss_at_unit_weights():
    """At z = GENESIS's eval latents ([mask mean, component mean given the mean's masks]) the
    model's log p~(x, z) - log q(z | x) equals -(nll + kl_mask + kl_comp) of GENESIS's own
    forward: its loss at beta = 1 and lambda = 0."""
    model = _tiny_genesis()
    image = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        posterior = model.posterior({"image": image})
        for i in range(3):
            batch = {"image": image[i:i + 1]}
            out = model(batch)
            z = out.posterior_mean.unsqueeze(0)                        # (1, 1, K, Dm + Dc)
            one = model.posterior(batch)
            log_w = model.log_joint(batch, one, z) - model.log_q_at(batch, one, z)
            terms = out.loss_terms
            expected = -(terms["nll"] + terms["kl_mask"] + terms["kl_comp"])
            assert float(log_w[0, 0]) == pytest.approx(float(expected), rel=1e-5, abs=1e-2)
            assert torch.allclose(one.mean[0], posterior.mean[i], atol=1e-6)


def test_genesis_sample_draws_the_sequential_proposal_and_scores_it():
    """sample_posterior() returns z^c drawn from q(z^c | x, pi(z^m)) for *its own* z^m: the returned log q
    equals log_q_at on the same z, and z^c's spread follows the component posterior."""
    model = _tiny_genesis()
    batch = {"image": torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        posterior = model.posterior(batch)
        z, log_q = model.sample_posterior(batch, posterior, 5, torch.Generator().manual_seed(0))
        assert z.shape == (5, 2, 3, 6 + 4) and log_q.shape == (5, 2)
        assert torch.allclose(log_q, model.log_q_at(batch, posterior, z), atol=1e-4)
        # The joint with and without the cached masks agrees (the cache is only a speed-up).
        cached = model.log_joint(batch, posterior, z)
        posterior.context.clear()
        assert torch.allclose(cached, model.log_joint(batch, posterior, z.clone()), atol=1e-4)


def test_genesis_estimate_is_finite_non_negative_and_chunk_stable():
    model = _tiny_genesis()
    batch = {"image": torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))}
    out = _check_estimates(model, batch, num_samples=60)
    assert out["gap"].shape == (3,)
    log_w = importance_weights(model, batch, 60, chunk=25, generator=torch.Generator().manual_seed(4))
    assert (gap_from_log_weights(log_w)["gap"] >= 0).all()


# ---- `ldsrig gap` on tiny trained runs -----------------------------------------------------

def _check_gap_file(run, samples, count):
    data = json.loads((run / "gap" / "gap.json").read_text())
    assert data["meta"]["num_images"] == count and data["meta"]["samples"] == samples
    assert len({r["image_index"] for r in data["records"]}) == count
    for record in data["records"]:
        assert record["gap"] >= 0 and math.isfinite(record["log_px"])
        assert record["log_px"] == pytest.approx(record["elbo"] + record["gap"])
        assert 1 <= record["ess"] <= samples + 1e-9
    return data


def test_gap_command_on_a_tiny_genesis_run(tmp_path):
    from cli import app
    from lds.training.config import load_train_config
    from lds.training.loop import train
    from tests.test_genesis import TINY_OVERRIDES
    from tests.test_train import make_store

    store = tmp_path / "store"
    make_store(store)
    cfg = load_train_config("genesis", None, TINY_OVERRIDES + [
        f"data={store}", "optim.steps=2", "log.every=1", "log.checkpoint_every=2",
        "log.tensorboard=false"])
    train(cfg, tmp_path / "run", progress=False)
    result = CliRunner().invoke(app, ["gap", str(tmp_path / "run"), "--data", str(store),
                                      "--samples", "20", "--max-images", "3", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = _check_gap_file(tmp_path / "run", 20, 3)
    assert data["meta"]["model"] == "genesis"


def test_gap_command_on_a_tiny_mulmon_run(tmp_path):
    from cli import app
    from tests.test_mulmon import make_views_store

    store, run = tmp_path / "views.zarr", tmp_path / "run"
    make_views_store(store, scenes=2, views=4)
    runner = CliRunner()
    result = runner.invoke(app, [
        "train", "mulmon", "--data", str(store), "--out", str(run), "--steps", "1",
        "--no-progress", "model.height=32", "model.width=32", "model.num_slots=3",
        "model.num_iterations=2", "model.num_views=4", "model.view_hidden=16",
        "model.projector_hidden=32", "model.refine_hidden=32", "model.refine_features=32",
        "model.lstm_hidden=32", "optim.batch_size=2", "log.every=1", "log.checkpoint_every=1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(app, ["gap", str(run), "--data", str(store), "--samples", "20",
                                 "--chunk", "10", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = _check_gap_file(run, 20, 2)                   # one record per scene
    assert data["meta"]["model"] == "mulmon"
    for record in data["records"]:
        assert len(record["observed_image_indices"]) == 3  # 4 views: 3 observed, 1 query
        assert record["image_index"] == record["observed_image_indices"][0]
