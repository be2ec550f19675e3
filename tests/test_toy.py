"""The analytic toy (tests/toy.py) is what it claims: its ODE carries N(0, I) to N(mu, s^2 I), its velocity is the
exact conditional expectation, and its reward peaks at the target."""

import pytest
import torch

from toy import DATA_STD, TOY_PROMPTS, TargetReward, ToyPolicy, exact_velocity, toy_target
from vgpo.math import ode_step
from vgpo.sampling import rollout


def toy_with_means(seed: int = 0) -> ToyPolicy:
    policy = ToyPolicy()
    with torch.no_grad():
        policy.model.means.copy_(torch.randn(policy.model.means.shape, generator=torch.Generator().manual_seed(seed)))
    return policy


def euler_ode(policy: ToyPolicy, noise: torch.Tensor, cond: dict, num_steps: int) -> torch.Tensor:
    """The Euler ODE from sigma = 1 to 0 in float64."""
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    x = noise.double()
    for step in range(num_steps):
        sigma = torch.full((x.shape[0],), float(sigmas[step]), dtype=torch.float64)
        x = ode_step(x, policy.velocity(x, sigma, cond), float(sigmas[step]), float(sigmas[step + 1]))
    return x


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_the_ode_from_zero_noise_ends_exactly_at_the_mean(num_steps):
    # the velocity is affine in x, so Euler keeps the mean exactly: at x = (1 - sigma) mu the velocity is -mu
    # (K / V times 0), and x + (sigma_next - sigma)(-mu) = (1 - sigma_next) mu; from x1 = 0 (the noise's mean) the
    # ODE ends at mu for any number of steps
    policy = toy_with_means()
    cond = policy.encode_prompts(TOY_PROMPTS)
    final = euler_ode(policy, torch.zeros(6, 3, 2, 2), cond, num_steps)
    torch.testing.assert_close(final, policy.model.means.detach().double(), rtol=0, atol=1e-12)


def test_the_ode_carries_the_noise_to_the_data_distribution():
    # deviations from the mean scale by prod_t (1 + dt_t K_t / V_t) (the ODE's slope in x is K / V), which tends
    # to sqrt(V(0) / V(1)) = s / 1 as the steps shrink; with 200 steps and 4000 samples the sample mean is mu within
    # 4 s / sqrt(4000) and the sample std is s within 6 per cent (its relative standard error is 1 / sqrt(8000))
    policy = toy_with_means()
    cond = policy.encode_prompts([TOY_PROMPTS[2]] * 4000)
    noise = torch.randn(4000, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    final = euler_ode(policy, noise, cond, 200)
    mean = policy.model.means.detach()[2].double()
    torch.testing.assert_close(final.mean(dim=0), mean, rtol=0, atol=4 * DATA_STD / 4000**0.5)
    torch.testing.assert_close(final.std(dim=0), torch.full_like(mean, DATA_STD), rtol=0.06, atol=0)
    # the deterministic map's slope itself (no sampling error): within 1 per cent of s after 200 steps
    slope = euler_ode(policy, torch.ones(1, 3, 2, 2), {"index": cond["index"][:1]}, 200)
    torch.testing.assert_close(slope[0] - mean, torch.full_like(mean, DATA_STD), rtol=0.01, atol=0)


def test_the_float32_rollout_ode_ends_at_the_mean():
    policy = toy_with_means()
    cond = policy.encode_prompts(TOY_PROMPTS)
    result = rollout(policy, cond, 5, initial_noise=torch.zeros(6, 3, 2, 2), sde=False)
    torch.testing.assert_close(result.final, policy.model.means.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("sigma", "point"), [(0.9, -1.0), (0.5, 1.5), (0.3, 0.3)])
def test_the_velocity_is_a_monte_carlo_conditional_expectation(sigma, point):
    # E[x1 - x0 | x_sigma = x] by importance sampling, per element: draw x1 ~ N(0, 1); then x_sigma = x fixes
    # x0 = (x - sigma x1) / (1 - sigma), and the weight of the draw is the density of that x0 under N(mu, s^2)
    mu, s, draws = 0.4, DATA_STD, 100_000
    generator = torch.Generator().manual_seed(2)
    x1 = torch.randn(draws, generator=generator, dtype=torch.float64)
    x0 = (point - sigma * x1) / (1 - sigma)
    weights = torch.distributions.Normal(torch.tensor(mu, dtype=torch.float64), s).log_prob(x0).softmax(dim=0)
    estimate = float((weights * (x1 - x0)).sum())
    exact = exact_velocity(
        torch.tensor([[[[point]]]], dtype=torch.float64),
        torch.tensor([sigma]),
        torch.tensor([[[[mu]]]], dtype=torch.float64),
        s,
    )
    assert float(exact) == pytest.approx(estimate, abs=0.02)


def test_the_reward_peaks_at_the_target_and_reads_the_latents_back():
    reward = TargetReward(width=12.0)
    target = toy_target(3)
    policy = ToyPolicy()
    # at the target exp(0) = 1; one unit off in each of the 12 elements: exp(-12 / 12) = exp(-1)
    scores = reward(policy.decode(torch.stack([target, target + 1.0])), [TOY_PROMPTS[3]] * 2, [{}, {}])
    torch.testing.assert_close(scores, torch.tensor([1.0, torch.e**-1]), rtol=1e-5, atol=0)
    assert not torch.equal(toy_target(0), toy_target(1))
