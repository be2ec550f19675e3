"""Eq. 5-6 (PPO-clipped surrogate) and the Gaussian KL term on hand-worked values, gradients included."""

import math

import pytest
import torch

from vgpo import clipped_policy_loss, gaussian_mean_kl

pytestmark = pytest.mark.usefixtures("float64_default")


def test_ratio_one_gives_minus_mean_advantage():
    log_prob = torch.tensor([-1.0, -2.0, -3.0])
    loss, stats = clipped_policy_loss(log_prob, log_prob.clone(), torch.tensor([1.0, -2.0, 4.0]), 1e-4)
    assert loss.item() == pytest.approx(-1.0)  # -(1 - 2 + 4) / 3
    assert stats.ratio_mean.item() == 1.0 and stats.clip_fraction.item() == 0.0 and stats.approx_kl.item() == 0.0


def test_clipping_on_hand_values_with_gradients():
    # ratios r = [1.5, 0.5, 1.1, 0.5], advantages A = [1, -2, 1, 1], clip 0.2:
    #   A=1,  r=1.5: max(-1.5, -1.2) = -1.2 (clipped: no gradient)
    #   A=-2, r=0.5: max( 1.0,  1.6) =  1.6 (clipped: no gradient)
    #   A=1,  r=1.1: max(-1.1, -1.1) = -1.1 (inside: d/dlogp = -A r / 4 = -0.275)
    #   A=1,  r=0.5: max(-0.5, -0.8) = -0.5 (pessimistic unclipped: d/dlogp = -A r / 4 = -0.125)
    # loss = (-1.2 + 1.6 - 1.1 - 0.5) / 4 = -0.3
    old = torch.zeros(4)
    log_prob = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5])).requires_grad_()
    advantages = torch.tensor([1.0, -2.0, 1.0, 1.0])
    loss, stats = clipped_policy_loss(log_prob, old, advantages, clip_range=0.2)
    assert loss.item() == pytest.approx(-0.3)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, 0.0, -0.275, -0.125]))
    assert stats.clip_fraction.item() == pytest.approx(0.75)  # 1.5, 0.5, 0.5 lie outside [0.8, 1.2]
    logs = [math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.5)]
    assert stats.approx_kl.item() == pytest.approx(0.5 * sum(x * x for x in logs) / 4)
    assert stats.ratio_mean.item() == pytest.approx((1.5 + 0.5 + 1.1 + 0.5) / 4)


def test_advantages_are_clipped_like_the_baseline():
    zeros = torch.zeros(2)
    loss, _ = clipped_policy_loss(zeros, zeros, torch.tensor([10.0, -1.0]), 0.2, advantage_clip=5.0)
    assert loss.item() == pytest.approx(-(5.0 - 1.0) / 2)
    loss, _ = clipped_policy_loss(zeros, zeros, torch.tensor([10.0, -1.0]), 0.2, advantage_clip=None)
    assert loss.item() == pytest.approx(-(10.0 - 1.0) / 2)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="must have one shape"):
        clipped_policy_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), 0.2)


def test_gaussian_mean_kl_hand_worked_and_against_torch():
    # ||[1, 1] - [0, 0]||^2 averaged over 2 elements = 1; / (2 * 0.5^2) = 2
    kl = gaussian_mean_kl(torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([0.5]))
    assert kl.item() == pytest.approx(2.0)
    mean = torch.randn(3, 2, 4, 4)
    ref = torch.randn(3, 2, 4, 4)
    std = torch.tensor([0.3, 0.7, 1.1])
    s = std.reshape(3, 1, 1, 1).expand_as(mean)
    exact = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, s), torch.distributions.Normal(ref, s)
    ).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_mean_kl(mean, ref, std), exact)
