"""Eq. 11 (discounted values), Eq. 12 (value weights), Eq. 4/13 (GRPO) and Eq. 14 (ADAE) on hand-worked values."""

import pytest
import torch

from vgpo import adae_advantages, discounted_values, grpo_advantages, value_weights
from vgpo.math import calibrated_instant_rewards, calibration_slopes

pytestmark = pytest.mark.usefixtures("float64_default")


def loop_discounted_values(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 11 as the plain double loop: Q[i, t] = sum_{j >= t} gamma^(j - t) R[i, j]."""
    n, steps = rewards.shape
    values = torch.zeros(n, steps)
    for i in range(n):
        for t in range(steps):
            values[i, t] = sum(gamma ** (j - t) * rewards[i, j] for j in range(t, steps))
    return values


def test_discounted_values_hand_worked():
    # R = [1, 2, 3], gamma = 0.5: Q2 = 3; Q1 = 2 + 0.5 * 3 = 3.5; Q0 = 1 + 0.5 * 3.5 = 2.75
    values = discounted_values(torch.tensor([[1.0, 2.0, 3.0]]), 0.5)
    torch.testing.assert_close(values, torch.tensor([[2.75, 3.5, 3.0]]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.9, 0.999])
def test_discounted_values_equal_the_plain_loop(gamma):
    rewards = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(discounted_values(rewards, gamma), loop_discounted_values(rewards, gamma))


def test_gamma_zero_gives_the_instant_rewards_and_the_last_value_is_the_final_reward():
    rewards = torch.rand(3, 5)
    torch.testing.assert_close(discounted_values(rewards, 0.0), rewards)
    torch.testing.assert_close(discounted_values(rewards, 0.8)[:, -1], rewards[:, -1])


@pytest.mark.parametrize("gamma", [-0.1, 1.0, 1.5])
def test_gamma_outside_unit_interval_is_rejected(gamma):
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\)"):
        discounted_values(torch.ones(2, 3), gamma)


def test_value_weights_hand_worked():
    # Q = [1, 2, 3]: mean 2 -> omega = [0.5, 1, 1.5]
    torch.testing.assert_close(value_weights(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[0.5, 1.0, 1.5]]))


def test_value_weights_on_zero_and_negative_means_fall_back_to_uniform_and_stay_finite():
    values = torch.tensor(
        [
            [1.0, -1.0, 0.0],  # mean 0 -> uniform
            [-1.0, -2.0, -3.0],  # mean -2 -> uniform
            [1e-12, 0.0, 0.0],  # mean ~3e-13, below min_mean -> uniform
            [-1.0, 1.0, 3.0],  # mean 1 > 0: omega = [-1, 1, 3] with the negative one clamped to 0
        ]
    )
    weights = value_weights(values)
    torch.testing.assert_close(weights[:3], torch.ones(3, 3))
    torch.testing.assert_close(weights[3], torch.tensor([0.0, 1.0, 3.0]))
    assert torch.isfinite(weights).all()


def test_grpo_advantages_hand_worked_and_per_group():
    # group 0: [1, 2, 3]: mean 2, population std sqrt(2/3) -> [-1.2247, 0, 1.2247]
    # group 1: [5, 5]: all equal -> exactly 0
    rewards = torch.tensor([1.0, 5.0, 2.0, 5.0, 3.0])
    groups = torch.tensor([0, 1, 0, 1, 0])
    advantages = grpo_advantages(rewards, groups, eps=0.0)
    root = (3 / 2) ** 0.5
    torch.testing.assert_close(advantages, torch.tensor([-root, 0.0, 0.0, 0.0, root]))
    assert torch.equal(advantages[[1, 3]], torch.zeros(2))


def test_grpo_equal_float32_rewards_give_exact_zero_not_an_ulp_residue():
    # the mean of three 0.1f is not bit-equal to 0.1f; dividing that residue by a tiny std would give ~±1
    rewards = torch.full((3,), 0.1, dtype=torch.float32)
    advantages = grpo_advantages(rewards, torch.zeros(3, dtype=torch.long), eps=0.0)
    assert torch.equal(advantages, torch.zeros(3, dtype=torch.float32))


def test_grpo_global_std_centres_per_group_and_divides_by_the_batch_std():
    rewards = torch.tensor([0.0, 2.0, 10.0, 14.0])
    groups = torch.tensor([0, 0, 1, 1])
    std = rewards.std(unbiased=False)
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / std
    torch.testing.assert_close(grpo_advantages(rewards, groups, std_scope="global", eps=0.0), expected)


def test_grpo_per_step_matrix_equals_columnwise_vectors():
    values = torch.randn(8, 4)
    groups = torch.arange(8) // 4
    matrix = grpo_advantages(values, groups)
    for t in range(4):
        torch.testing.assert_close(matrix[:, t], grpo_advantages(values[:, t], groups))


def test_adae_hand_worked_against_the_literal_equation():
    # one group, one step, Q = [1, 3]: mean 2, std 1; k = 0.1 -> alpha = 0.1 * 1 = 0.1
    # literal Eq. 14: ((1 + 0.1) * 1 - 2) / 1 = -0.9 and ((1 + 0.1) * 3 - 2) / 1 = 1.3
    advantages = adae_advantages(torch.tensor([[1.0], [3.0]]), torch.tensor([0, 0]), k=0.1, eps=0.0)
    torch.testing.assert_close(advantages, torch.tensor([[-0.9], [1.3]]))


def test_adae_equals_the_literal_equation_on_random_groups():
    values = torch.rand(12, 5)
    groups = torch.arange(12) // 4
    weights = value_weights(values)
    k = 0.7
    literal = torch.empty_like(values)
    for g in range(3):
        rows = groups == g
        q = values[rows]
        mean, std = q.mean(0), q.std(0, unbiased=False)
        alpha = k * std
        literal[rows] = weights[rows] * ((1 + alpha) * q - mean) / std
    torch.testing.assert_close(adae_advantages(values, groups, k, weights=weights, eps=0.0), literal)


def test_adae_equal_values_limit_is_omega_k_q_not_zero():
    # Appendix B: as the group's std -> 0 the advantage tends to omega * k * Q.
    values = torch.tensor([[0.7, 0.4], [0.7, 0.4], [0.7, 0.4]])
    weights = torch.tensor([[1.2, 0.8], [1.2, 0.8], [1.2, 0.8]])
    advantages = adae_advantages(values, torch.zeros(3, dtype=torch.long), k=0.5, weights=weights)
    torch.testing.assert_close(advantages, weights * 0.5 * values, rtol=0, atol=1e-15)
    # and it is the limit of the literal formula: a group with a tiny spread approaches it
    spread = torch.tensor([[0.7 - 1e-9], [0.7], [0.7 + 1e-9]])
    near = adae_advantages(spread, torch.zeros(3, dtype=torch.long), k=0.5, eps=0.0)
    literal = ((1 + 0.5 * spread.std(unbiased=False)) * spread - spread.mean()) / spread.std(unbiased=False)
    torch.testing.assert_close(near, literal, rtol=1e-6, atol=1e-6)


def test_adae_with_k_zero_and_no_weights_is_grpo_per_step():
    values = torch.randn(8, 6)
    groups = torch.arange(8) // 2
    torch.testing.assert_close(adae_advantages(values, groups, k=0.0), grpo_advantages(values, groups))


def test_adae_absolute_term_only_on_the_first_steps():
    values = torch.full((2, 4), 0.5)  # one group, all equal: only the absolute term survives
    advantages = adae_advantages(values, torch.zeros(2, dtype=torch.long), k=2.0, absolute_steps=2)
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2))


def test_group_ids_shape_is_checked():
    with pytest.raises(ValueError, match="group_ids must be"):
        grpo_advantages(torch.ones(4), torch.zeros(3, dtype=torch.long))


# ---- calibrated instant rewards (an option, not the paper's): each step's score -> its fitted final reward


def test_calibration_hand_worked():
    # One group of 3. Final rewards R_T = [0, 1, 2] (mean 1). Step 0 scores [5, 5.5, 6]: centred [-0.5, 0, 0.5],
    # slope = (0.5 * 1 + 0.5 * 1) / (0.25 + 0.25) = 2, so R~_0 = 1 + 2 * centred = [0, 1, 2].
    # Step 1 scores [3, 1, 2]: centred [1, -1, 0], covariance with [-1, 0, 1] = -1 < 0 -> slope 0 -> the mean 1.
    rewards = torch.tensor([[5.0, 3.0, 0.0], [5.5, 1.0, 1.0], [6.0, 2.0, 2.0]])
    calibrated = calibrated_instant_rewards(rewards, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(calibrated, torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [2.0, 1.0, 2.0]]))
    torch.testing.assert_close(calibration_slopes(rewards, torch.zeros(3, dtype=torch.long)), torch.tensor([2.0, 0, 1]))


def test_calibration_undoes_an_affine_leniency_per_group_and_keeps_the_final_column():
    # An early score that is a lenient affine function of the final reward (plus a per-prompt offset) is
    # mapped back onto the final reward exactly: the value estimate loses the checker's leniency.
    generator = torch.Generator().manual_seed(3)
    final = torch.rand(12, generator=generator)
    group_ids = torch.arange(3).repeat_interleave(4)
    offsets = torch.tensor([0.3, -0.2, 0.5])[group_ids]
    rewards = torch.stack([0.5 * final + 0.4 + offsets, 2.0 * final + offsets, final], dim=1)
    calibrated = calibrated_instant_rewards(rewards, group_ids)
    torch.testing.assert_close(calibrated, final[:, None].expand(-1, 3))
    assert torch.equal(calibrated[:, -1], rewards[:, -1])


def test_calibration_of_an_uninformative_step_is_the_group_mean_final_reward():
    # Step 0 is uncorrelated with the final reward within every group (covariance exactly 0), and step 1 has no
    # within-group spread at all: both carry no information, so both become the group's mean final reward.
    rewards = torch.tensor([[1.0, 7.0, 0.0], [0.0, 7.0, 1.0], [0.0, 7.0, 0.0], [1.0, 7.0, 1.0]])
    calibrated = calibrated_instant_rewards(rewards, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(calibrated[:, :2], torch.full((4, 2), 0.5))


def test_calibrated_variant_changes_only_the_tcrm_variants():
    from vgpo.config import AlgorithmConfig
    from vgpo.methods.credit import Rewards
    from vgpo.methods.registry import build_method

    def compute_advantages(rewards, group_ids, algorithm):
        credit = build_method(algorithm, rewards.shape[1]).credit
        given = Rewards(rewards[:, -1], rewards if credit.needs_step_rewards else None)
        return credit(given, group_ids, torch.linspace(1, 0, rewards.shape[1] + 1))

    generator = torch.Generator().manual_seed(4)
    rewards = torch.rand(8, 5, generator=generator)
    group_ids = torch.arange(2).repeat_interleave(4)
    for variant in ("vgpo", "tcrm_only", "flow_grpo", "adae_only"):
        raw = compute_advantages(rewards, group_ids, AlgorithmConfig(method=variant))
        fitted = compute_advantages(rewards, group_ids, AlgorithmConfig(method=variant, instant_reward="calibrated"))
        expected_values = discounted_values(calibrated_instant_rewards(rewards, group_ids), 0.9)
        if variant in ("vgpo", "tcrm_only"):
            torch.testing.assert_close(fitted.values, expected_values)
            assert not torch.allclose(fitted.advantages, raw.advantages)
        else:
            assert torch.equal(fitted.advantages, raw.advantages)
