"""The LDS prior (Eq. 3): against a direct double loop, safety at zero latents, gradients."""

import math

import torch

from lds.prior import cosine_similarity_matrix, lds_prior, off_diagonal_mean


def _double_loop_prior(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 3 written literally: one log-density per ordered pair of distinct slots."""
    out = []
    for image in z:
        total = 0.0
        for h in range(image.shape[0]):
            for j in range(image.shape[0]):
                if h == j:
                    continue
                cos = torch.dot(image[h], image[j]) / (image[h].norm() * image[j].norm())
                total += -0.5 * (cos.item() / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_matches_double_loop():
    torch.manual_seed(0)
    z = torch.randn(4, 7, 16, dtype=torch.float64)
    for sigma in (0.1, 0.3, 1.0):
        expected = _double_loop_prior(z, sigma)
        assert torch.allclose(lds_prior(z, sigma=sigma), expected, rtol=1e-9, atol=1e-6)


def test_orthogonal_latents_reach_the_maximum_and_duplicates_are_penalised():
    sigma = 0.1
    orthogonal = torch.eye(4, dtype=torch.float64).unsqueeze(0) * 3.0  # K=4 orthogonal slots
    best = -12 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))   # K(K-1)=12 pairs at Sigma=0
    assert math.isclose(lds_prior(orthogonal, sigma).item(), best, rel_tol=1e-12)
    duplicated = orthogonal.clone()
    duplicated[0, 1] = duplicated[0, 0] * 0.5          # slot 1 points where slot 0 does
    # one unordered pair with cos = 1 -> two ordered pairs, each -1/(2 sigma^2) = -50
    # (eps in the norms shifts cos by ~eps/|z|^2, hence the 1e-6 tolerance)
    assert math.isclose(lds_prior(duplicated, sigma).item(), best - 100.0, rel_tol=1e-6)


def test_zero_latent_gives_no_nan_and_finite_gradients():
    z = torch.randn(2, 5, 8)
    z[0, 2] = 0.0
    z[1] = 0.0
    z.requires_grad_(True)
    value = lds_prior(z)
    value.sum().backward()
    assert torch.isfinite(value).all()
    assert torch.isfinite(z.grad).all()
    sim = cosine_similarity_matrix(z.detach())
    assert torch.all(sim[0, 2] == 0.0)


def test_gradcheck_float64():
    torch.manual_seed(1)
    z = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lds_prior(t, sigma=0.1), (z,))
    assert torch.autograd.gradgradcheck(lambda t: lds_prior(t, sigma=0.2), (z,))


def test_cosine_matrix_is_symmetric_with_unit_diagonal_and_scale_invariant():
    torch.manual_seed(2)
    z = torch.randn(2, 6, 4, dtype=torch.float64)
    sim = cosine_similarity_matrix(z)
    assert torch.allclose(sim, sim.transpose(1, 2))
    assert torch.allclose(torch.diagonal(sim, dim1=1, dim2=2), torch.ones(2, 6, dtype=torch.float64))
    assert torch.allclose(cosine_similarity_matrix(z * 7.5), sim)


def test_off_diagonal_mean():
    m = torch.tensor([[[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]]])
    assert torch.allclose(off_diagonal_mean(m), torch.tensor([0.4]))
    assert off_diagonal_mean(torch.ones(2, 1, 1)).tolist() == [0.0, 0.0]


def _collapsed_output(batch: int = 4, slots: int = 5, dim: int = 16):
    """A ModelOutput of a posterior-collapsed model: every slot has the same mean, and the
    sampled latents are that mean plus unit noise (q close to N(0, I))."""
    from lds.contract import ModelOutput

    torch.manual_seed(0)
    mean = torch.full((batch, slots, dim), 0.01)
    sample = mean + torch.randn(batch, slots, dim)
    image = torch.zeros(batch, slots, 1, 8, 8)
    return ModelOutput(loss=torch.tensor(0.0), loss_terms={"nll": torch.tensor(0.0)},
                       slot_latents=sample, posterior_mean=mean,
                       posterior_logvar=torch.zeros_like(mean), mask_logits=image,
                       masks=image.softmax(1), appearance=image.expand(-1, -1, 3, -1, -1),
                       reconstruction=torch.zeros(batch, 3, 8, 8)).check(batch, slots, 8, 8)


def test_lds_on_means_sees_the_duplicates_that_samples_of_a_collapsed_posterior_hide():
    from lds.training.config import LDSConfig
    from lds.training.objective import training_objective

    out = _collapsed_output()
    _, on_samples = training_objective(out, LDSConfig(enabled=True, latents="sample"))
    _, on_means = training_objective(out, LDSConfig(enabled=True, latents="mean"))
    best = float(lds_prior(torch.eye(5, 16)[None]))       # orthogonal slots: the maximum
    worst = float(lds_prior(torch.ones(1, 5, 16)))        # identical slots: the minimum
    # Samples of N(0, I) in 16 dimensions are nearly orthogonal (E cos^2 = 1/16): the prior on
    # them is close to its maximum although every slot's mean is the same ...
    assert best - float(on_samples) < 0.1 * (best - worst)
    # ... while on the means it is at its minimum: all 20 ordered pairs have cosine 1.
    assert math.isclose(float(on_means), worst, rel_tol=1e-4)   # (eps in the norms)


def test_lds_latents_must_be_sample_or_mean():
    import pytest

    from common.errors import ConfigError
    from lds.training.config import LDSConfig

    with pytest.raises(ConfigError, match="lds.latents must be one of sample, mean"):
        LDSConfig(latents="posterior")
