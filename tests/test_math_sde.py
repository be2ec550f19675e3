"""Eq. 7 (SDE step + log-prob) and Eq. 10 (one-step projection) against hand-worked values and known limits."""

import math

import pytest
import torch

from vgpo import ode_step, project_x0, sde_step

pytestmark = pytest.mark.usefixtures("float64_default")


def test_sde_step_hand_worked_values():
    # x = 1, v = 2, sigma = 0.5 -> 0.25, a = 0.5:
    #   std_t = 0.5 * sqrt(0.5 / 0.5) = 0.5, dt = -0.25
    #   mean = 1 * (1 + 0.25 / (2 * 0.5) * -0.25) + 2 * (1 + 0.25 * 0.5 / (2 * 0.5)) * -0.25
    #        = 0.9375 - 0.5625 = 0.375
    #   std  = 0.5 * sqrt(0.25) = 0.25
    # scoring x_next = 0.625: z = (0.625 - 0.375) / 0.25 = 1
    #   log p = -1/2 - log(0.25) - log(sqrt(2 pi)) = -0.0326450...
    x = torch.ones(1, 1, 1, 1)
    v = torch.full((1, 1, 1, 1), 2.0)
    step = sde_step(x, v, 0.5, 0.25, 0.5, prev_sample=torch.full((1, 1, 1, 1), 0.625))
    assert step.mean.item() == pytest.approx(0.375, abs=1e-15)
    assert step.std.item() == pytest.approx(0.25, abs=1e-15)
    expected = -0.5 - math.log(0.25) - 0.5 * math.log(2 * math.pi)
    assert step.log_prob.item() == pytest.approx(expected, abs=1e-12)


def test_log_prob_equals_torch_normal_with_mean_and_sum_reductions():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=generator)
    v = torch.randn(5, 3, 4, 4, generator=generator)
    sigma = torch.tensor([1.0, 0.9, 0.6, 0.3, 0.1])
    sigma_next = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.0])
    step = sde_step(x, v, sigma, sigma_next, 0.7, generator=generator)
    normal = torch.distributions.Normal(step.mean, step.std.reshape(5, 1, 1, 1))
    elementwise = normal.log_prob(step.next_sample)
    torch.testing.assert_close(step.log_prob, elementwise.mean(dim=(1, 2, 3)), rtol=0, atol=1e-12)
    summed = sde_step(x, v, sigma, sigma_next, 0.7, prev_sample=step.next_sample, reduction="sum")
    torch.testing.assert_close(summed.log_prob, elementwise.sum(dim=(1, 2, 3)), rtol=0, atol=1e-10)
    none = sde_step(x, v, sigma, sigma_next, 0.7, prev_sample=step.next_sample, reduction="none")
    torch.testing.assert_close(none.log_prob, elementwise, rtol=0, atol=1e-12)


def test_first_step_at_sigma_one_is_finite_and_uses_sigma_next_in_the_std():
    # sigma = 1 -> 0.8, a = 0.7: (1 - sigma) is replaced by (1 - 0.8), so std_t = 0.7 * sqrt(1 / 0.2)
    # and the transition std is std_t * sqrt(0.2) = 0.7 exactly.
    x = torch.randn(2, 3, 4, 4)
    v = torch.randn(2, 3, 4, 4)
    step = sde_step(x, v, 1.0, 0.8, 0.7)
    assert torch.isfinite(step.log_prob).all() and torch.isfinite(step.next_sample).all()
    torch.testing.assert_close(step.std, torch.full((2,), 0.7))
    # mean = x * (1 + std_t^2 / 2 * dt) + v * dt (the (1 - sigma) factor of v's correction is 0 at sigma = 1)
    std_t_squared = 0.49 / 0.2
    torch.testing.assert_close(step.mean, x * (1 + std_t_squared / 2 * -0.2) + v * -0.2)


def test_vanishing_noise_level_gives_the_euler_step():
    x = torch.randn(3, 2, 4, 4)
    v = torch.randn(3, 2, 4, 4)
    step = sde_step(x, v, 0.7, 0.6, 1e-9)
    euler = ode_step(x, v, 0.7, 0.6)
    torch.testing.assert_close(euler, x - 0.1 * v)
    torch.testing.assert_close(step.mean, euler, rtol=0, atol=1e-12)
    # the noise term is std * eps with std = 1e-9 * sqrt(0.7 / 0.3) * sqrt(0.1) ~ 5e-10
    torch.testing.assert_close(step.next_sample, euler, rtol=0, atol=1e-8)


def test_rescoring_a_stored_transition_gives_ratio_exactly_one():
    x = torch.randn(4, 3, 8, 8, dtype=torch.float32)
    v = torch.randn(4, 3, 8, 8, dtype=torch.float32)
    drawn = sde_step(x, v, 0.8, 0.7, 0.7, generator=torch.Generator().manual_seed(3))
    rescored = sde_step(x, v, 0.8, 0.7, 0.7, prev_sample=drawn.next_sample)
    assert torch.equal(torch.exp(rescored.log_prob - drawn.log_prob), torch.ones(4, dtype=torch.float32))


def test_batched_sigmas_equal_a_loop_over_samples():
    x = torch.randn(3, 2, 4, 4)
    v = torch.randn(3, 2, 4, 4)
    nxt = torch.randn(3, 2, 4, 4)
    sigmas = [(1.0, 0.75), (0.5, 0.4), (0.2, 0.0)]
    batched = sde_step(
        x, v, torch.tensor([s for s, _ in sigmas]), torch.tensor([n for _, n in sigmas]), 0.7, prev_sample=nxt
    )
    for i, (sigma, sigma_next) in enumerate(sigmas):
        single = sde_step(x[i : i + 1], v[i : i + 1], sigma, sigma_next, 0.7, prev_sample=nxt[i : i + 1])
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob, rtol=0, atol=1e-14)
        torch.testing.assert_close(batched.mean[i : i + 1], single.mean, rtol=0, atol=1e-14)


def test_bfloat16_inputs_are_computed_in_float32():
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    v = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    step = sde_step(x, v, 1.0, 0.9, 0.7)
    assert step.next_sample.dtype == torch.float32 and step.log_prob.dtype == torch.float32
    assert torch.isfinite(step.log_prob).all()


def test_gradient_flows_to_the_velocity_but_not_through_the_sample():
    x = torch.randn(2, 1, 2, 2)
    v = torch.randn(2, 1, 2, 2, requires_grad=True)
    nxt = torch.randn(2, 1, 2, 2, requires_grad=True)
    step = sde_step(x, v, 0.5, 0.4, 0.7, prev_sample=nxt)
    step.log_prob.sum().backward()
    assert v.grad is not None and torch.count_nonzero(v.grad) > 0
    assert nxt.grad is None


@pytest.mark.parametrize(
    ("sigma", "sigma_next", "noise_level", "message"),
    [(0.5, 0.6, 0.7, "sigma_next < sigma"), (1.2, 0.5, 0.7, "sigma <= 1"), (0.5, 0.4, 0.0, "ode_step")],
)
def test_bad_arguments_are_rejected_with_a_clear_message(sigma, sigma_next, noise_level, message):
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=message):
        sde_step(x, x, sigma, sigma_next, noise_level)


def test_projection_of_a_straight_path_returns_x0():
    x0 = torch.randn(4, 3, 8, 8)
    x1 = torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([1.0, 0.7, 0.3, 0.0])
    s = sigma.reshape(4, 1, 1, 1)
    x_sigma = (1 - s) * x0 + s * x1
    torch.testing.assert_close(project_x0(x_sigma, x1 - x0, sigma), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(project_x0(x_sigma[:1], (x1 - x0)[:1], 1.0), x0[:1], rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_sde_step_on_gpu_matches_cpu():
    x = torch.randn(2, 3, 4, 4)
    v = torch.randn(2, 3, 4, 4)
    nxt = torch.randn(2, 3, 4, 4)
    cpu = sde_step(x, v, 0.6, 0.5, 0.7, prev_sample=nxt)
    gpu = sde_step(x.cuda(), v.cuda(), 0.6, 0.5, 0.7, prev_sample=nxt.cuda())
    torch.testing.assert_close(gpu.log_prob.cpu(), cpu.log_prob)
