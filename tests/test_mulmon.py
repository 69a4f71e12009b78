"""MulMON on the shared stack: contract, observed/query split, LDS at every iteration, overfitting,
the NaN check, and `ldsrig train mulmon` + `ldsrig eval` on a tiny multi-view store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lds.models import PAPER_TRAIN_SETTINGS, MulMONConfig, build_model
from lds.models.mulmon import _normalised_linear_weights
from lds.prior import lds_prior
from lds.training.config import load_train_config

H = W = 32


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared, loaded 2-core machine OpenMP's second thread mostly spins
    (a 6-view step took 2-16 s with 2 threads, 0.6 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(**overrides) -> torch.nn.Module:
    settings = dict(height=H, width=W, num_slots=3, num_iterations=3, viewpoint="clevr-mv",
                    view_hidden=16, projector_hidden=32, refine_hidden=32, refine_features=32,
                    lstm_hidden=32)
    settings.update(overrides)
    torch.manual_seed(0)
    return build_model(MulMONConfig(**settings))


def scenes_batch(scenes: int = 2, views: int = 7, seed: int = 0) -> dict:
    """Scenes of a coloured square on grey, seen from views around a circle (CLE-MV vectors)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.full((scenes, views, 3, H, W), 0.5)
    for s in range(scenes):
        colour = torch.rand(3, generator=gen)
        for v in range(views):
            x0 = 4 + (3 * v + 5 * s) % 16
            image[s, v, :, 8:18, x0:x0 + 10] = colour[:, None, None]
    angles = torch.linspace(0, 2 * np.pi, views + 1)[:views]
    viewpoint = torch.stack([torch.cos(angles) - 1, torch.sin(angles), torch.zeros(views)], -1)
    return {"image": image, "viewpoint": viewpoint.expand(scenes, views, 3).clone()}


@pytest.mark.parametrize("num_observed", [1, 6])
def test_contract_with_1_and_6_observed_views(num_observed):
    model = tiny_model().train()
    batch = scenes_batch(scenes=2, views=7)
    out = model(batch, num_observed=num_observed)
    out.check(2 * 7, 3, H, W)
    assert model.output_rows(batch) == 14
    # each observed view runs the T = 3 iterations: per-iteration values average the views
    assert out.lds_iterations.tolist() == [0, 1, 2] * num_observed
    per_step = torch.arange(3.0 * num_observed)
    assert out.per_iteration(per_step).tolist() == [
        float(per_step[t::3].mean()) for t in range(3)]
    query = out.query_rows.view(2, 7)
    assert query.sum(1).tolist() == [7 - num_observed] * 2       # observed first, then queries
    assert not query[:, :num_observed].any()
    assert torch.allclose(out.masks.sum(1), torch.ones(14, 1, H, W), atol=1e-5)
    assert torch.allclose(out.reconstruction, (out.masks * out.appearance).sum(1))
    # a query view's latents are the final posterior, shared by every query view of a scene
    latents = out.posterior_mean.view(2, 7, 3, -1)
    assert torch.equal(latents[:, -1], latents[:, num_observed])
    terms = {k: float(v.detach()) for k, v in out.loss_terms.items()}
    assert set(terms) == {"nll", "kl", "query_nll"}        # the trainer adds "lds"
    assert all(np.isfinite(list(terms.values())))
    assert terms["query_nll"] > 0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # every part learns: the refinement network, the viewpoint encoder and the initial posterior
    for part in ("refine.lstm.weight_ih", "view_encoder.0.weight", "initial_posterior",
                 "projector.2.weight", "decoder.convs.1.weight"):
        assert float(dict(model.named_parameters())[part].grad.abs().sum()) > 0, part


def test_training_draws_1_to_6_observed_views_and_evaluation_uses_5_plus_queries():
    model = tiny_model(num_iterations=1).train()
    batch = scenes_batch(scenes=1, views=10)
    counts = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = model(batch)
        counts.add(int((~out.query_rows).sum()))
    assert counts <= set(range(1, 7)) and len(counts) >= 3
    model.eval()
    with torch.no_grad():
        first = model(batch)
        second = model(batch)
    assert int((~first.query_rows).sum()) == 5                    # MulMON's eval: 5 + 5
    assert not first.loss.requires_grad and not first.masks.requires_grad
    assert torch.equal(first.reconstruction, second.reconstruction)  # deterministic (seeded)


def test_one_view_per_scene_is_the_single_view_limit_without_query_views():
    """num_views = 1 (a diagnostic setting): one observed view per scene, no query term, in
    training and in evaluation, and it still learns through every refinement part."""
    model = tiny_model(num_views=1).train()
    assert model.cfg.observed_range(1) == (1, 1)
    batch = scenes_batch(scenes=2, views=1)
    out = model(batch)
    out.check(2, 3, H, W)
    assert not out.query_rows.any()
    assert float(out.loss_terms["query_nll"]) == 0.0
    out.loss.backward()
    assert float(model.refine.lstm.weight_ih.grad.abs().sum()) > 0
    model.eval()
    with torch.no_grad():
        assert not model(batch).query_rows.any()


def test_the_per_pixel_mixture_is_one_mixture_over_each_pixels_colour():
    """model.likelihood=pixel scores sum_i log sum_k m_ki prod_c N(x_ic; mu_kic, sigma^2), by hand;
    the default (MulMON's code) mixes each channel on its own, a different number."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 3, H, W, generator=gen)
    means = torch.rand(2, 1, 3, 3, H, W, generator=gen)
    log_masks = torch.log_softmax(torch.randn(2, 1, 3, 1, H, W, generator=gen), dim=2)
    per_channel, per_pixel = (tiny_model(likelihood=m) for m in ("channel", "pixel"))
    log_comp = per_pixel._log_components(image, means)
    sigma = per_pixel.cfg.pixel_sigma
    density = torch.exp(-0.5 * ((image[:, :, None] - means) / sigma) ** 2) / (
        sigma * (2 * np.pi) ** 0.5)
    by_hand = -torch.log((log_masks.exp() * density.prod(3, keepdim=True)).sum(2)).sum((2, 3, 4))
    assert torch.allclose(per_pixel._nll(log_comp, log_masks), by_hand, rtol=1e-5)
    assert not torch.allclose(per_channel._nll(log_comp, log_masks), by_hand, rtol=1e-3)
    with pytest.raises(Exception, match="model.likelihood"):
        MulMONConfig(likelihood="slot")
    model = tiny_model(likelihood="pixel").train()
    out = model(scenes_batch(scenes=2, views=3), num_observed=2)
    out.loss.backward()
    assert torch.isfinite(out.loss) and float(model.refine.lstm.weight_ih.grad.abs().sum()) > 0


def test_the_refinement_reads_the_likelihood_the_loss_scores():
    """The pixel-likelihood input (channel 13 of the 17) is the standardised exp of the mixture
    log-likelihood that model.likelihood scores: per channel as MulMON's code, per pixel the RGB
    product mixed once (what MulMON's code feeds when its Gaussian_ll mixes per pixel)."""
    from lds.models.mulmon import _standardize
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, H, W, generator=gen)
    means = torch.rand(2, 3, 3, H, W, generator=gen)
    log_masks = torch.log_softmax(torch.randn(2, 3, 1, H, W, generator=gen), dim=1)
    zeros = torch.zeros(2, 3, 1, H, W)
    channels = {}
    for mixture in ("channel", "pixel"):
        model = tiny_model(likelihood=mixture)
        log_comp = model._log_components(image[:, None], means[:, None])[:, 0]
        aux = model._refinement_inputs(image, means, log_masks, log_masks, log_comp,
                                       torch.zeros_like(means), zeros).view(2, 3, 17, H, W)
        density = log_comp.exp()                                      # N(x_c; mu_kc, sigma)
        if mixture == "pixel":   # sum_k m_k prod_c N
            by_hand = (log_masks.exp() * density.prod(2, keepdim=True)).sum(1)
        else:                    # prod_c sum_k m_k N_c
            by_hand = (log_masks.exp() * density).sum(1).prod(1, keepdim=True)
        expected = _standardize(by_hand.double(), 1).float()
        assert torch.allclose(aux[:, 0, 13:14], expected, atol=1e-5)
        assert torch.equal(aux[:, 0, 13], aux[:, 2, 13])               # the same for every slot
        channels[mixture] = aux[:, 0, 13]
    assert not torch.allclose(channels["channel"], channels["pixel"], atol=1e-3)


def test_evaluation_breaks_the_slot_symmetry_and_does_not_depend_on_the_batch():
    """Every slot starts from the one learned lambda_0: decoded at the mean throughout, the K
    slots would stay identical and segment nothing. Evaluation samples the refinement's z from
    generators seeded per scene, so slots differ, and a scene's outputs are the same alone, in a
    batch, at another position (keyed by its first image index)."""
    model = tiny_model().eval()
    batch = scenes_batch(scenes=3, views=6)
    batch["image_index"] = torch.arange(18).view(3, 6) + 100
    with torch.no_grad():
        together = model(batch)
        alone = model({k: v[2:3] for k, v in batch.items()})
        swapped = model({k: v[[2, 0]] for k, v in batch.items()})
    masks = together.masks.view(3, 6, 3, 1, 32, 32)
    assert (masks[:, :, 0] - masks[:, :, 1]).abs().max() > 1e-5     # slots are not copies
    # ... where without the noise (z = the mean throughout) they are exact copies.
    model._eval_noise = lambda image_index, view, t, like: torch.zeros_like(like)
    with torch.no_grad():
        flat = model(batch).masks.view(3, 6, 3, 1, 32, 32)
    assert torch.equal(flat[:, :, 0], flat[:, :, 1]) and torch.equal(flat[:, :, 1], flat[:, :, 2])
    del model._eval_noise
    third = together.masks.view(3, 6, -1)[2]
    torch.testing.assert_close(alone.masks.view(6, -1), third)
    torch.testing.assert_close(swapped.masks.view(2, 6, -1)[0], third)
    # (batch size changes the convolutions' summation order, which refinement amplifies a little)
    third_mean = together.posterior_mean.view(3, 6, 3, -1)[2]
    torch.testing.assert_close(alone.posterior_mean.view(6, 3, -1), third_mean, atol=1e-4, rtol=1e-4)
    reindexed = model({**{k: v[2:3] for k, v in batch.items()},
                       "image_index": batch["image_index"][:1]})   # another scene's noise
    assert (reindexed.posterior_mean.view(6, 3, -1) - third_mean).abs().max() > 1e-2


def test_lds_is_applied_at_every_iteration_and_changes_the_loss_by_exactly_the_prior():
    from lds.prior import weighted_lds_prior
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    model = tiny_model(num_iterations=4).train()
    batch = scenes_batch(scenes=2, views=6)
    torch.manual_seed(3)
    out = model(batch, num_observed=3)
    off, none = training_objective(out, LDSConfig(enabled=False))
    on, lds = training_objective(out, LDSConfig(enabled=True, weight=1.0))
    half, _ = training_objective(out, LDSConfig(enabled=True, weight=0.5))
    assert off is out.loss and float(none) == 0.0 and float(lds.detach()) < 0
    # (the losses are ~6e4 in float32, whose spacing there is ~0.004)
    assert torch.allclose(off - on, lds, rtol=1e-5, atol=0.02)
    assert torch.allclose(off - half, 0.5 * lds, rtol=1e-5, atol=0.02)
    # one prior per refinement iteration per observed view, weighted (t+1)/T and (v+1)/V
    latents = out.lds_latents
    assert latents.shape == (12, 2, 3, 16) and latents.requires_grad
    # the means they were sampled around (lds.latents=mean); the last is the final posterior's
    assert out.lds_means.shape == latents.shape and out.lds_means.requires_grad
    final_mean = out.posterior_mean[out.query_rows].view(2, 3, 3, 16)[:, 0]   # a query view's
    torch.testing.assert_close(out.lds_means[-1], final_mean)
    _, per_iteration = weighted_lds_prior(latents, out.lds_weights)
    recomputed = torch.stack([lds_prior(z, sigma=0.1).mean() for z in latents])
    assert torch.allclose(per_iteration, recomputed)
    weights = torch.tensor([wv * wt for wv in _normalised_linear_weights(3)
                            for wt in _normalised_linear_weights(4)])
    assert torch.allclose(out.lds_weights, weights)
    assert torch.allclose((weights * recomputed).sum(), lds, rtol=1e-5)
    # refinement moves the latents, so each iteration's prior is its own value
    assert len({round(float(x), 3) for x in per_iteration.detach()}) > 6


def test_lds_from_iteration_leaves_out_every_view_s_earlier_iterations():
    from common.errors import ConfigError
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    model = tiny_model(num_iterations=4).train()
    torch.manual_seed(3)
    out = model(scenes_batch(scenes=2, views=6), num_observed=3)
    _, every = training_objective(out, LDSConfig(enabled=True, weight=1.0))
    _, later = training_objective(out, LDSConfig(enabled=True, weight=1.0, from_iteration=1))
    per_step = torch.stack([lds_prior(z, sigma=0.1).mean() for z in out.lds_latents])
    first = out.lds_iterations == 0                       # iteration 0 of each observed view
    assert int(first.sum()) == 3
    torch.testing.assert_close(later, (out.lds_weights * per_step)[~first].sum())
    torch.testing.assert_close(every - later, (out.lds_weights * per_step)[first].sum())
    # the iteration-0 latents get no gradient from the prior any more, the later ones do
    (grad,) = torch.autograd.grad(later, out.lds_latents, retain_graph=True)
    assert float(grad[first].abs().max()) == 0.0
    assert bool((grad[~first].flatten(1).abs().sum(1) > 0).all())
    # a model whose iterations all fall before from_iteration is refused, not trained without LDS
    with pytest.raises(ConfigError, match="from_iteration=4"):
        training_objective(out, LDSConfig(enabled=True, weight=1.0, from_iteration=4))
    with pytest.raises(ConfigError, match="from_iteration"):
        LDSConfig(from_iteration=-1)


def test_fused_decoder_equals_the_plain_broadcast_decoder():
    """The decoder skips the tiled grid and splits the head; it must be the same function."""
    from torch.nn import functional as F

    from lds.models.base import coordinate_grid

    model = tiny_model()
    decoder = model.decoder
    z = torch.randn(5, 16, requires_grad=True)
    means, logits = decoder(z, splits=(3, 1))
    pad = decoder.pad
    grid = coordinate_grid(H + 2 * pad, W + 2 * pad)
    h = torch.cat([z[:, :, None, None].expand(-1, -1, H + 2 * pad, W + 2 * pad),
                   grid.expand(5, -1, -1, -1)], dim=1)
    for conv in decoder.convs:
        h = F.relu(conv(h))
    plain = decoder.head(h)
    assert torch.allclose(means, plain[:, :3], atol=1e-5)
    assert torch.allclose(logits, plain[:, 3:], atol=1e-5)
    grads = torch.autograd.grad((means.sin().sum() + logits.cos().sum()), [z, decoder.convs[0].weight])
    plain_grads = torch.autograd.grad(plain[:, :3].sin().sum() + plain[:, 3:].cos().sum(),
                                      [z, decoder.convs[0].weight])
    for a, b in zip(grads, plain_grads):
        # sums over thousands of pixels in float32: compare relative to the gradient's scale
        assert float((a - b).abs().max()) <= 1e-3 * float(b.abs().max())


def test_checkpointed_iterations_give_the_same_loss_and_gradients():
    batch = scenes_batch(scenes=2, views=5)
    results = []
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    for flag in (False, True):
        model = tiny_model(checkpoint_iterations=flag).train()
        torch.manual_seed(5)
        out = model(batch, num_observed=2)
        loss, _ = training_objective(out, LDSConfig(enabled=True, weight=1.0))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-4), name


def test_iteration_and_view_weights_are_linear_and_normalised():
    for n in (1, 3, 5, 6):
        w = _normalised_linear_weights(n)
        assert abs(sum(w) - 1.0) < 1e-12
        assert np.allclose(np.array(w) / w[0], np.arange(1, n + 1))


def test_overfits_two_scenes():
    model = tiny_model(num_iterations=2, num_slots=3).train()
    batch = scenes_batch(scenes=2, views=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(40):
        torch.manual_seed(step)
        optimizer.zero_grad()
        out = model(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(float(out.loss.detach()))
    start, end = np.mean(losses[:3]), np.mean(losses[-5:])
    assert np.isfinite(losses).all()
    assert end < 0.3 * start, (start, end)


def test_a_non_finite_posterior_is_caught_after_the_refinement_step():
    model = tiny_model(num_iterations=3).train()
    with torch.no_grad():
        model.refine.head.bias.fill_(float("nan"))
    out = model(scenes_batch(scenes=1, views=3), num_observed=2)
    assert not torch.isfinite(out.loss)
    assert float(out.loss_terms["nonfinite_refinement_step"]) == 1.0   # first view, first step
    assert model.last_nonfinite == (0, 0)


def test_paper_settings_and_viewpoint_sizes():
    cfg = load_train_config("mulmon")
    assert PAPER_TRAIN_SETTINGS["mulmon"]["optim"]["lr"] == 2e-4
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.grad_clip,
            cfg.optim.schedule) == ("adam", 2e-4, 8, 5.0, "gqn")
    assert (cfg.lds.weight, cfg.model.num_slots, cfg.model.latent_dim, cfg.model.num_iterations,
            cfg.model.pixel_sigma) == (1.0, 7, 16, 5, 0.1)
    assert MulMONConfig(viewpoint="clevr-mv").viewpoint_size == 3
    assert MulMONConfig(viewpoint="pose").viewpoint_size == 9
    assert MulMONConfig(num_views=10).observed_range(10) == (1, 6)
    assert MulMONConfig().observed_range(3) == (1, 2)              # always >= 1 query view


def make_views_store(path, scenes: int = 2, views: int = 4) -> None:
    from datasets.store import SceneStore

    rng = np.random.default_rng(0)
    with SceneStore.create(path, height=H, width=W, ground_truth=True, max_objects=3,
                           attrs={"source": "test"}) as store:
        for s in range(scenes):
            scene_id = f"scene_{s}"
            store.add_scene(scene_id, {"source": "test", "objects": [{"shape": "cube"}]})
            label_map = np.zeros((views, H, W), np.uint8)
            for v in range(views):
                label_map[v, 8:18, 4 + 3 * v + s: 14 + 3 * v + s] = 1
            rgb = np.full((views, H, W, 3), 128, np.uint8)
            rgb[label_map == 1] = rng.integers(0, 255, size=3, dtype=np.uint8)
            pose = np.repeat(np.eye(4)[None], views, axis=0)
            pose[:, 0, 3] = np.cos(np.arange(views))              # cameras at different places
            pose[:, 1, 3] = np.sin(np.arange(views))
            intrinsics = np.repeat(np.array([[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]])[None], views, 0)
            store.append_images(scene_id, rgb, pose, intrinsics, label_map=label_map,
                                amodal_masks=(label_map == 1)[:, None])
            store.set_scene_state(scene_id, "complete")


def test_cli_train_and_eval_mulmon_on_a_tiny_multi_view_store(tmp_path):
    from cli import app

    store, run = tmp_path / "views.zarr", tmp_path / "run"
    make_views_store(store)
    runner = CliRunner()
    result = runner.invoke(app, [
        "train", "mulmon", "--data", str(store), "--out", str(run), "--steps", "2", "--lds",
        "--no-progress", "model.height=32", "model.width=32", "model.num_slots=3",
        "model.num_iterations=2", "model.num_views=4", "optim.batch_size=2", "log.every=1",
        "log.checkpoint_every=2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "to step 2" in result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["viewpoint"] == "pose"      # "auto" resolved from the store: 9-D pose
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "nll", "kl", "query_nll", "lds", "grad_norm"} <= set(rows[0])
    assert rows[0]["lds"] < 0
    # the prior per refinement iteration (2), averaged over however many views were observed
    assert {"lds_iter0", "lds_iter1"} <= set(rows[0]) and "lds_iter2" not in rows[0]

    resumed = runner.invoke(app, ["train", "mulmon", "--out", str(run), "--resume", "--steps", "3",
                                  "--no-progress"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert "to step 3" in resumed.output

    evaluated = runner.invoke(app, ["eval", str(run), "--data", str(store), "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    assert "MSE, query views" in evaluated.output   # the table has the query-view rows
    data = json.loads((run / "eval" / "eval.json").read_text())
    # 4 views per scene: 3 observed (at most eval_observed = 5, leaving one query) + 1 query
    assert data["meta"]["views"] == {"observed": 6, "query": 2, "scenes": 2}
    for name in ("mse", "miou", "ari", "sim"):
        assert data["aggregates"][name]["n"] == 6
        assert data["aggregates"][f"query_{name}"]["n"] == 2
    assert sum(r["query_view"] for r in data["records"]) == 2
    # Sim per refinement iteration, over the observed views' rows (each repeats its scene's)
    by_iteration = data["meta"]["sim_by_iteration"]
    assert by_iteration["n"] == [6, 6] and all(-1 <= s <= 1 for s in by_iteration["mean"])
    # Query views against the number observed (issue 14): observe 1 view, predict 3 per scene.
    one = runner.invoke(app, ["eval", str(run), "--data", str(store), "--no-progress",
                              "--observed-views", "1", "--out", str(run / "eval" / "obs1.json")])
    assert one.exit_code == 0, one.output + repr(one.exception)
    data_one = json.loads((run / "eval" / "obs1.json").read_text())
    assert data_one["meta"]["observed_views"] == 1
    assert data_one["meta"]["views"] == {"observed": 2, "query": 6, "scenes": 2}
    assert data_one["aggregates"]["query_mse"]["n"] == 6
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["eval_observed"] == 5
    with_figure = runner.invoke(app, ["eval", str(run), "--data", str(store), "--figure", "1",
                                    "--no-progress", "--overwrite"])
    assert with_figure.exit_code == 0 and (run / "eval" / "figure2.png").is_file()

    too_few = runner.invoke(app, [
        "train", "mulmon", "--data", str(store), "--out", str(tmp_path / "r2"), "--steps", "1",
        "--no-progress", "model.height=32", "model.width=32", "model.num_views=10"])
    assert too_few.exit_code != 0 and "10 views" in str(too_few.exception)


def test_a_one_view_model_is_tested_on_every_view_and_validated_on_the_first(tmp_path):
    """num_views = 1: each view is an image of its own to the model, so the test set is every
    view of every scene (8 here), while training draws one view per scene and validation keeps
    the first view of each (2), as the curves of earlier runs did."""
    from cli import app
    from lds.data import open_eval_dataset, open_store_dataset

    store, run = tmp_path / "views.zarr", tmp_path / "run"
    make_views_store(store, scenes=2, views=4)
    cfg = tiny_model(num_views=1).cfg
    test = open_eval_dataset(store, cfg)
    assert len(test) == 8
    assert sorted(int(test[i]["image_index"][0]) for i in range(8)) == list(range(8))
    assert len(open_store_dataset(store, cfg, training=False)) == 2     # validation
    assert len(open_store_dataset(store, cfg)) == 2                     # training
    assert len(open_eval_dataset(store, tiny_model(num_views=2).cfg)) == 2
    result = CliRunner().invoke(app, [
        "train", "mulmon", "--data", str(store), "--out", str(run), "--steps", "1",
        "--no-progress", "model.height=32", "model.width=32", "model.num_slots=3",
        "model.num_iterations=2", "model.num_views=1", "optim.batch_size=2", "log.every=1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    evaluated = CliRunner().invoke(app, ["eval", str(run), "--data", str(store), "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    data = json.loads((run / "eval" / "eval.json").read_text())
    assert data["meta"]["views"] == {"observed": 8, "query": 0, "scenes": 2}
    assert data["aggregates"]["fg_ari"]["n"] == 8


def test_resume_replays_the_same_views_and_continues_exactly(tmp_path):
    """2 steps + resume to 4 == 4 straight steps, bit for bit: the views each scene shows are
    drawn from a seed tied to (seed, step, position), not from whatever the RNG held."""
    from lds.training.checkpoint import load_checkpoint
    from lds.training.config import load_train_config
    from lds.training.loop import train
    from lds.training.runs import read_run_config

    store = tmp_path / "views.zarr"
    make_views_store(store)
    overrides = ["model.height=32", "model.width=32", "model.num_slots=3", "model.num_iterations=2",
                 "model.num_views=3", "optim.batch_size=2", "log.every=1", "log.checkpoint_every=100",
                 "lds.enabled=true"]
    straight = load_train_config("mulmon", None, overrides + ["optim.steps=4"])
    straight.data = str(store)
    train(straight, tmp_path / "straight", progress=False)
    first = load_train_config("mulmon", None, overrides + ["optim.steps=2"])
    first.data = str(store)
    train(first, tmp_path / "split", progress=False)
    train(read_run_config(tmp_path / "split", ["optim.steps=4"]), tmp_path / "split", resume=True,
          progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints")
    b = load_checkpoint(tmp_path / "split" / "checkpoints")
    assert a.step == b.step == 4
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key
