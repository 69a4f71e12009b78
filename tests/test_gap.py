"""The inference-gap estimator: exact on a linear Gaussian model, converging as B grows; the
MONet's ELBO for the gap is its own objective at unit weights; `ldsrig gap` on a trained run."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lds.evaluation.gap import estimate_gap, gap_from_log_weights, importance_weights
from lds.models.interface import GaussianPosterior, MultiObjectVAE, standard_normal_log_density


class LinearGaussian(MultiObjectVAE):
    """z ~ N(0, I_d), x = W z + b + N(0, s^2 I_m): log p(x) = log N(x; b, W W^T + s^2 I).

    Its q is the exact posterior, or (``offset`` / ``inflate``) a deliberately wrong one: a
    model with the gap's interface whose log p(x) is known exactly."""

    def __init__(self, m: int = 6, d: int = 3, s: float = 0.5, seed: int = 0,
                 offset: float = 0.0, inflate: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # Orthogonal columns (scaled) make the true posterior covariance diagonal, so a diagonal
        # Gaussian q can be exact.
        q, _ = torch.linalg.qr(torch.randn(m, d, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)[:d]
        self.b = torch.randn(m, generator=g, dtype=torch.float64)
        self.s = s
        self.offset, self.inflate = offset, inflate

    def forward(self, batch):                   # not needed by the gap
        raise NotImplementedError

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precision = torch.eye(self.W.shape[1], dtype=torch.float64) + self.W.T @ self.W / self.s ** 2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W @ cov / self.s ** 2
        return mean, torch.diagonal(cov).log().expand_as(mean)

    def posterior(self, batch):
        mean, logvar = self.exact_posterior(batch["x"])
        return GaussianPosterior(mean + self.offset, logvar + math.log(self.inflate))

    def log_joint(self, batch, posterior, z):
        x = batch["x"]
        residual = x.unsqueeze(0) - z @ self.W.T - self.b
        log_lik = (-0.5 * (residual / self.s) ** 2 - math.log(self.s)
                   - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_lik + standard_normal_log_density(z)


def _data(model, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.W.shape[1], generator=g, dtype=torch.float64)
    return {"x": z @ model.W.T + model.b + model.s * torch.randn(n, model.W.shape[0], generator=g,
                                                                 dtype=torch.float64)}


def test_exact_posterior_gives_exact_log_px_and_zero_gap():
    model = LinearGaussian()
    batch = _data(model)
    out = estimate_gap(model, batch, num_samples=3)
    truth = model.exact_log_px(batch["x"])
    assert torch.allclose(out["log_px"], truth, atol=1e-9)
    assert torch.allclose(out["elbo"], truth, atol=1e-9)
    assert torch.allclose(out["gap"], torch.zeros_like(truth), atol=1e-9)


def test_estimate_converges_to_the_true_log_px_as_samples_grow():
    model = LinearGaussian(offset=0.4, inflate=1.8)
    batch = _data(model)
    truth = model.exact_log_px(batch["x"])
    errors, gaps = {}, {}
    for num_samples in (1, 10, 100, 1000, 20000):
        runs = [estimate_gap(model, batch, num_samples, chunk=4099,
                             generator=torch.Generator().manual_seed(rep))
                for rep in range(6)]
        est = torch.stack([r["log_px"] for r in runs])
        errors[num_samples] = float((est - truth).abs().mean())
        gaps[num_samples] = float(torch.stack([r["gap"] for r in runs]).mean())
        # a stochastic lower bound: on average it does not overshoot the truth
        assert float((est - truth).mean()) < 0.02
    assert errors[1] > errors[10] > errors[100] > errors[1000] > errors[20000]
    assert errors[20000] < 0.02
    assert errors[1] > 0.3                     # the wrong q really does leave a gap
    # G >= 0 for every draw (same sample set), growing with B toward log p(x) - ELBO
    assert gaps[1] == pytest.approx(0.0, abs=1e-12)
    assert 0 < gaps[10] < gaps[100] < gaps[1000] < gaps[20000]


def test_elbo_matches_the_closed_form_elbo():
    model = LinearGaussian(offset=0.3, inflate=2.0)
    batch = _data(model, n=3)
    out = estimate_gap(model, batch, num_samples=20000, chunk=5000,
                       generator=torch.Generator().manual_seed(0))
    # Closed form: ELBO = log p(x) - KL(q || p(z | x)) between two diagonal Gaussians.
    mean_q, logvar_q = model.posterior(batch).mean, model.posterior(batch).logvar
    mean_p, logvar_p = model.exact_posterior(batch["x"])
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p) ** 2) / logvar_p.exp()
                - 1).sum(-1)
    assert torch.allclose(out["elbo"], model.exact_log_px(batch["x"]) - kl, atol=0.05)


def test_log_sum_exp_is_stable_for_huge_log_weights():
    log_w = torch.tensor([[-1e5, 2e4], [-1e5 + 1.0, 2e4 - 3.0]], dtype=torch.float64)
    out = gap_from_log_weights(log_w)
    assert torch.isfinite(out["log_px"]).all()
    assert float(out["log_px"][0]) == pytest.approx(-1e5 + math.log((1 + math.e) / 2))
    assert float(out["ess"][0]) == pytest.approx(1 / ((1 / (1 + math.e)) ** 2 + (math.e / (1 + math.e)) ** 2))


TINY_MONET = ["model.height=16", "model.width=16", "model.num_slots=4", "model.latent_dim=4",
              "model.unet_channels=[8,8,8]", "model.unet_mlp_hidden=16",
              "model.encoder_channels=[8,8]", "model.encoder_hidden=16",
              "model.decoder_channels=[8,8]", "optim.batch_size=4", "optim.steps=3",
              "log.every=1", "log.checkpoint_every=3", "log.tensorboard=false"]


def test_monet_log_joint_is_its_objective_at_unit_weights():
    """At z = the posterior mean (what MONet's eval-mode forward decodes), MONet's
    log p~(x, z) equals -(nll + kl_mask) of MONet's own forward plus log N(z; 0, I): the gap's
    joint is MONet's objective with beta = gamma = 1 and no LDS term."""
    from lds.models import MONetConfig, build_model

    torch.manual_seed(0)
    model = build_model("monet", MONetConfig(height=16, width=16, num_slots=3, latent_dim=4,
                                             unet_channels=(8, 8, 8), unet_mlp_hidden=16,
                                             encoder_channels=(8, 8), encoder_hidden=16,
                                             decoder_channels=(8, 8))).eval()
    image = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        posterior = model.posterior({"image": image})
        log_joint = model.log_joint({"image": image}, posterior, posterior.mean[None])
        for i in range(2):
            terms = model({"image": image[i:i + 1]}).loss_terms
            expected = -(terms["nll"] + terms["kl_mask"]) + standard_normal_log_density(
                posterior.mean[None, i:i + 1])[0, 0]
            assert float(log_joint[0, i]) == pytest.approx(float(expected), rel=1e-5, abs=1e-3)
        log_w = importance_weights(model, {"image": image}, num_samples=64, chunk=20,
                                   generator=torch.Generator().manual_seed(1))
    assert log_w.shape == (64, 2)
    assert (gap_from_log_weights(log_w)["gap"] >= 0).all()


def _tiny_monet():
    from lds.models import MONetConfig, build_model

    torch.manual_seed(0)
    return build_model("monet", MONetConfig(height=16, width=16, num_slots=3, latent_dim=4,
                                            unet_channels=(8, 8, 8), unet_mlp_hidden=16,
                                            encoder_channels=(8, 8), encoder_hidden=16,
                                            decoder_channels=(8, 8))).eval()


def test_bf16_joint_changes_the_log_weights_only_by_the_decoders_rounding():
    """amp=bf16 runs the joint's decoder passes in bf16; q, its samples and log q stay fp32, so
    the same generator seed gives the same samples and log weights within bf16 rounding of the
    decoder output (relative 2^-8) carried through the fp32 likelihood."""
    from lds.training import loop

    if not loop.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (the gap's --amp bf16 is refused here)")
    model = _tiny_monet()
    image = torch.rand(2, 3, 16, 16)
    fp32 = importance_weights(model, {"image": image}, 32, 16, torch.Generator().manual_seed(1))
    bf16 = importance_weights(model, {"image": image}, 32, 16, torch.Generator().manual_seed(1),
                              amp="bf16")
    assert bf16.dtype == torch.float64 and not torch.equal(fp32, bf16)   # bf16 did run
    # 768 pixel values, each off by ~0.4% of its decoded mean: well under a nat per image
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().mean()


def test_gap_amp_bf16_is_refused_in_one_line_where_the_cpu_would_emulate_it(tmp_path, monkeypatch):
    from cli import app
    from lds.training import loop

    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(Exception, match="native bfloat16"):
        importance_weights(_tiny_monet(), {"image": torch.rand(1, 3, 16, 16)}, 4, amp="bf16")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["gap", str(run), "--data", str(tmp_path), "--amp", "bf16"])
    assert result.exit_code != 0


def test_gap_command_on_a_trained_run(tmp_path):
    from cli import app
    from lds.training.config import load_train_config
    from lds.training.loop import train
    from tests.test_eval_cli import make_store

    store = tmp_path / "store"
    make_store(store, scenes=2)
    cfg = load_train_config("monet", None, TINY_MONET + [f"data={store}"])
    train(cfg, tmp_path / "run", progress=False)
    result = CliRunner().invoke(app, ["gap", str(tmp_path / "run"), "--data", str(store),
                                      "--samples", "40", "--chunk", "16", "--max-images", "3",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "run" / "gap" / "gap.json").read_text())
    assert data["meta"]["num_images"] == 3 and data["meta"]["samples"] == 40
    assert data["meta"]["checkpoint_step"] == 3 and data["meta"]["amp"] == "off"
    for record in data["records"]:
        assert record["gap"] >= 0 and math.isfinite(record["log_px"])
        assert record["log_px"] == pytest.approx(record["elbo"] + record["gap"])
        assert 1 <= record["ess"] <= 40
    # an image's estimate does not depend on the batch it is estimated in
    from lds.evaluation.gap import gap_for_run

    one = gap_for_run(tmp_path / "run", store, num_samples=40, chunk=16, max_images=3,
                      batch_size=1, progress=False, out=tmp_path / "g1.json")
    three = gap_for_run(tmp_path / "run", store, num_samples=40, chunk=16, max_images=3,
                        batch_size=3, progress=False, out=tmp_path / "g3.json")
    for a, b, c in zip(one["records"], three["records"], data["records"]):
        assert a["image_index"] == b["image_index"] == c["image_index"]
        assert a["gap"] == pytest.approx(b["gap"], rel=1e-6) and a["gap"] == pytest.approx(c["gap"], rel=1e-6)
    missing = CliRunner().invoke(app, ["gap", str(tmp_path / "nope"), "--data", str(store)])
    assert missing.exit_code != 0

    # `ldsrig compare` adds Table 2 once both runs have gap.json.
    cfg = load_train_config("monet", None, TINY_MONET + [f"data={store}"])
    cfg.lds.enabled = True
    train(cfg, tmp_path / "lds", progress=False)
    assert CliRunner().invoke(app, ["gap", str(tmp_path / "lds"), "--data", str(store), "--samples",
                                    "40", "--max-images", "3", "--no-progress"]).exit_code == 0
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "run"), str(tmp_path / "lds"),
                                      "--data", str(store), "--out", str(tmp_path / "cmp.json")],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "inference gap (Table 2): 3 images" in result.output
    table2 = json.loads((tmp_path / "cmp.json").read_text())["gap"]
    assert table2["n"] == 3 and len(table2["dG"]) == len(table2["dMSE"]) == 3
    lds_gap = json.loads((tmp_path / "lds" / "gap" / "gap.json").read_text())
    assert table2["dG"][0] == pytest.approx(data["records"][0]["gap"] - lds_gap["records"][0]["gap"])


def test_gap_difference_joins_on_image_index_and_correlates():
    from lds.evaluation.gap import gap_difference

    control = {"records": [{"image_index": i, "gap": 10.0 + i} for i in range(6)]}
    lds = {"records": [{"image_index": i, "gap": 10.0} for i in (5, 4, 3, 2, 1, 0)]}
    control_eval = [{"image_index": i, "mse": 0.02 + 0.001 * i, "miou": 0.5} for i in range(6)]
    lds_eval = [{"image_index": i, "mse": 0.02, "miou": 0.5 + 0.01 * (i % 2)} for i in range(6)]
    diff = gap_difference(control, lds, control_eval, lds_eval)
    assert diff["image_index"] == list(range(6)) and diff["dG"] == [0, 1, 2, 3, 4, 5]
    assert diff["mean_dG"] == pytest.approx(2.5)
    assert diff["dMSE"] == pytest.approx([0.001 * i for i in range(6)])
    assert diff["pearson_dG_dMSE"] == pytest.approx(1.0)       # dMSE grows exactly with dG
    assert -1 < diff["pearson_dG_dmIoU"] < 1
