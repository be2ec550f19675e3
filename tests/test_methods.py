"""The methods of issue 21 against known answers: their SDE steps, plans, trained steps, credits and weights, the
first PPO ratio of every SDE form, the combinations refused at start, and every method learning on the analytic
toy (tests/toy.py)."""

import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

from toy import DATA_STD, TargetReward, ToyPolicy, ToyTask, expected_reward
from vgpo.config import METHODS, config_from_dict, load_config
from vgpo.errors import ConfigError
from vgpo.experiments.toy_gym import TOY_CONFIG
from vgpo.math import grpo_advantages, normalised_log_ratio, ode_step
from vgpo.math.advantages import DEFAULT_STD_EPS
from vgpo.math.sde import SDE_FORMS, constant_noise_sde_step, cps_step, sde_step
from vgpo.methods.credit import Rewards, StepwiseGains, step_gains
from vgpo.methods.objectives import StepModel, UpdateBatch, trained_step_slots
from vgpo.methods.objectives.ppo import ClippedPolicyObjective
from vgpo.methods.registry import build_method, required_settings
from vgpo.methods.samplers import (
    FullSDESampler,
    ODESampler,
    RandomWindowSampler,
    SlidingWindowSampler,
    StepPlan,
)
from vgpo.sampling import Rollout, rollout
from vgpo.trainer import Trainer

F64 = torch.float64


def toy_config(method: str, **sections: dict) -> dict:
    data: dict = {  # the toy gym's settings (lr 0.05 here), short runs without evaluation
        "sampling": dict(TOY_CONFIG["sampling"]),
        "algorithm": {"method": method, "clip_range": 0.2},
        "optim": dict(TOY_CONFIG["optim"]),
        "run": {"iterations": 5, "eval_every": 0, "progress": False, "tensorboard": False},
    }
    for key, value in required_settings(method).items():  # e.g. the ODE-sampled methods' own noise per sample
        section, name = key.split(".")
        data[section][name] = value
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def toy_trainer(tmp_path: Path, method: str, **sections: dict) -> Trainer:
    config = config_from_dict(toy_config(method, **sections))
    return Trainer(config, tmp_path, policy=ToyPolicy(), task=ToyTask(), reward=TargetReward())


# -- every method learns on the toy ---------------------------------------------------------------------------


def test_the_expected_reward_is_the_monte_carlo_mean():
    policy = ToyPolicy()
    x0 = DATA_STD * torch.randn(40000, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    prompts = ["toy prompt 1"] * 40000
    sampled = TargetReward()(policy.decode(x0), prompts, [{}] * 40000).double().mean()
    # the reward lies in [0, 1]: its mean's standard error is below 0.5 / sqrt(40000) = 0.0025
    assert float(sampled) == pytest.approx(expected_reward(policy, range(1, 2)), abs=0.01)


@pytest.mark.filterwarnings("ignore:sampling.noise_level=0.7 with DanceGRPO")  # the toy's noise, on purpose
@pytest.mark.parametrize("method", METHODS)
def test_each_method_raises_the_reward_on_the_toy(tmp_path, method):
    trainer = toy_trainer(tmp_path, method)
    before = expected_reward(trainer.policy)
    records = [trainer.train_iteration(iteration) for iteration in range(1, 6)]
    after = expected_reward(trainer.policy)
    print(method, "expected reward", round(before, 3), "->", round(after, 3))  # pytest -s shows the figures
    # seen (5 iterations, lr 0.05): 0.554 -> between 0.61 (vgpo_mix) and 0.72 (stepwise_grpo); a method that did not
    # learn stays at 0.554 (the means start at 0), one that learned backwards falls below it
    assert after > before + 0.03, (before, after)
    # the batches' own terminal rewards go up too (noisier: the first and last two iterations' means)
    first = sum(r["reward_mean"] for r in records[:2]) / 2
    last = sum(r["reward_mean"] for r in records[-2:]) / 2
    assert last > first, [r["reward_mean"] for r in records]


# -- SDE steps: known answers ---------------------------------------------------------------------------------

X = torch.tensor([[1.0, -2.0]], dtype=F64)  # one sample of two elements
V = torch.tensor([[0.5, 1.0]], dtype=F64)
NEXT = torch.tensor([[0.9, -2.0]], dtype=F64)


def test_constant_noise_step_by_hand():
    # sigma = 0.5, sigma_next = 0.25: dt = -0.25; eta = 0.4 is std_t itself; std_t^2 / (2 sigma) = 0.16
    # mean = x + [v + 0.16 (x + (1 - sigma) v)] dt:
    #   element 1: x + 0.5 v = 1.25;  v + 0.16 * 1.25 = 0.7;   1 + 0.7 * -0.25 = 0.825
    #   element 2: x + 0.5 v = -1.5;  v + 0.16 * -1.5 = 0.76;  -2 + 0.76 * -0.25 = -2.19
    # std = eta sqrt(-dt) = 0.4 * 0.5 = 0.2
    step = constant_noise_sde_step(X, V, 0.5, 0.25, 0.4, prev_sample=NEXT)
    torch.testing.assert_close(step.mean, torch.tensor([[0.825, -2.19]], dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(step.std, torch.tensor([0.2], dtype=F64), rtol=0, atol=1e-15)
    expected = Normal(torch.tensor([[0.825, -2.19]], dtype=F64), 0.2).log_prob(NEXT).mean(dim=1)
    torch.testing.assert_close(step.log_prob, expected, rtol=0, atol=1e-14)
    # at sigma = 0.5, Eq. 7's std_t = a sqrt(sigma / (1 - sigma)) = a: the two forms take the same step there
    same = sde_step(X, V, 0.5, 0.25, 0.4, prev_sample=NEXT)
    torch.testing.assert_close(same.mean, step.mean, rtol=0, atol=1e-15)
    torch.testing.assert_close(same.log_prob, step.log_prob, rtol=0, atol=1e-15)


def test_constant_noise_is_finite_at_sigma_one():
    # at sigma = 1: std_t^2 / (2 sigma) = eta^2 / 2 and (1 - sigma) v = 0, so mean = x + (v + eta^2 / 2 x) dt;
    # eta = 0.2, dt = -0.1: element 1: 1 + (0.5 + 0.02) * -0.1 = 0.948; element 2: -2 + (1 - 0.04) * -0.1 = -2.096
    step = constant_noise_sde_step(X, V, 1.0, 0.9, 0.2)
    torch.testing.assert_close(step.mean, torch.tensor([[0.948, -2.096]], dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(step.std, torch.tensor([0.2 * math.sqrt(0.1)], dtype=F64), rtol=0, atol=1e-15)


def test_cps_step_by_hand():
    # sigma = 0.5, sigma_next = 0.25, eta = 1/3: std = 0.25 sin(pi / 6) = 0.125
    # x0_hat = x - 0.5 v = [0.75, -2.5];  x1_hat = x + 0.5 v = [1.25, -1.5]
    # sqrt(sigma_next^2 - std^2) = sqrt(1/16 - 1/64) = sqrt(3) / 8
    # mean = 0.75 x0_hat + sqrt(3) / 8 x1_hat = [0.5625 + 1.25 sqrt(3) / 8, -1.875 - 1.5 sqrt(3) / 8]
    root3 = math.sqrt(3)
    mean = torch.tensor([[0.5625 + 1.25 * root3 / 8, -1.875 - 1.5 * root3 / 8]], dtype=F64)
    step = cps_step(X, V, 0.5, 0.25, 1 / 3, prev_sample=NEXT)
    torch.testing.assert_close(step.mean, mean, rtol=0, atol=1e-15)
    torch.testing.assert_close(step.std, torch.tensor([0.125], dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(step.log_prob, Normal(mean, 0.125).log_prob(NEXT).mean(dim=1), rtol=0, atol=1e-14)
    # the noise coefficient is preserved: (sqrt(3) / 8)^2 + 0.125^2 = sigma_next^2
    assert (root3 / 8) ** 2 + 0.125**2 == pytest.approx(0.25**2, abs=1e-16)


def test_cps_refuses_the_last_step():
    with pytest.raises(ValueError, match="take an ODE step to 0"):
        cps_step(X, V, 0.25, 0.0, 0.5)


@pytest.mark.parametrize("form", sorted(SDE_FORMS))
def test_each_form_tends_to_the_euler_step_as_the_noise_vanishes(form):
    # CPS: with std -> 0, sqrt(sigma_next^2 - std^2) -> sigma_next and
    # mean -> (1 - sigma_next)(x - sigma v) + sigma_next (x + (1 - sigma) v) = x + (sigma_next - sigma) v;
    # Eq. 7 and DanceGRPO: the std_t^2 terms of the mean vanish, leaving x + v dt
    step = SDE_FORMS[form](X, V, 0.5, 0.25, 1e-9)
    torch.testing.assert_close(step.mean, ode_step(X, V, 0.5, 0.25), rtol=0, atol=1e-12)
    torch.testing.assert_close(step.mean, torch.tensor([[0.875, -2.25]], dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", sorted(SDE_FORMS))
def test_a_stored_transition_rescored_gives_its_log_prob_bitwise(form):
    policy = ToyPolicy()
    cond = policy.encode_prompts(["toy prompt 0", "toy prompt 1"])
    kinds = ("sde", "sde", "sde", "ode" if form == "cps" else "sde")
    result = rollout(policy, cond, 4, generator=torch.Generator().manual_seed(0), step_kinds=kinds, sde_form=form)
    for t in range(3):
        sigma, sigma_next = float(result.sigmas[t]), float(result.sigmas[t + 1])
        again = SDE_FORMS[form](
            result.latents[:, t], result.velocities[:, t], sigma, sigma_next, 0.7, prev_sample=result.latents[:, t + 1]
        )
        assert torch.equal(again.log_prob, result.log_probs[:, t])  # the ratio exp(0) is exactly 1


# -- the first PPO ratio through the trainer ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:sampling.noise_level=0.7 with DanceGRPO")  # the toy's noise, on purpose
@pytest.mark.parametrize("method", ["flow_grpo", "dance_grpo", "flow_grpo_cps", "grpo_guard", "tempflow_grpo"])
def test_the_first_ratio_is_exactly_one_for_every_sde_form(tmp_path, method):
    trainer = toy_trainer(tmp_path, method, optim={"micro_batch_size": 3})  # chunks unlike the rollout's batch
    with torch.no_grad():  # a policy some way into training, unlike the reference
        trainer.policy.model.means.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(1))
    samples = trainer.sample(1)
    assert samples.plan.sde_form == {"dance_grpo": "dance", "flow_grpo_cps": "cps"}.get(method, "flow_grpo")
    stats = trainer.update(samples, trainer.advantages(trainer.score(samples)), 1)
    assert stats["first_ratio_error"] == 0.0
    assert stats["rollout_log_prob_gap"] < 1e-4  # the rollout's own log-probs, other batch shapes


@pytest.mark.filterwarnings("ignore:sampling.noise_level=0.7 with DanceGRPO")  # the toy's noise, on purpose
@pytest.mark.parametrize("method", ["flow_grpo", "dance_grpo", "flow_grpo_cps", "grpo_guard", "tempflow_grpo"])
def test_one_optimizer_step_sees_only_ratios_of_one(tmp_path, method):
    # with a single optimizer step every term is on-policy: the (GRPO-Guard: normalised) ratio is 1 everywhere
    trainer = toy_trainer(tmp_path, method, optim={"micro_batch_size": 3, "steps_per_epoch": 1})
    samples = trainer.sample(1)
    stats = trainer.update(samples, trainer.advantages(trainer.score(samples)), 1)
    assert stats["ratio"] == 1.0 and stats["approx_kl"] == 0.0 and stats["clip_fraction"] == 0.0


# -- plans ----------------------------------------------------------------------------------------------------


def test_the_full_sde_plans():
    assert FullSDESampler().plan(4, 0, 1) == StepPlan(("sde",) * 4, (0, 1, 2, 3), "flow_grpo")
    # CPS's std is 0 at the last step (sigma_next = 0): an ODE step there, untrained
    assert FullSDESampler("cps").plan(4, 0, 1) == StepPlan(("sde", "sde", "sde", "ode"), (0, 1, 2), "cps")
    # DanceGRPO samples every step with its SDE, and leaves the last out of the trained ones
    dance = build_method(config_from_dict(toy_config("dance_grpo")).algorithm, 4).sampler
    assert dance.plan(4, 0, 1) == StepPlan(("sde",) * 4, (0, 1, 2), "dance")
    cps = build_method(config_from_dict(toy_config("flow_grpo_cps")).algorithm, 4).sampler
    assert cps.plan(4, 0, 1).kinds[-1] == "ode"
    assert ODESampler().plan(3, 0, 1) == StepPlan(("ode",) * 3, (), "flow_grpo")


def test_a_random_window_is_uniform_over_its_starts_and_drawn_from_seed_and_iteration():
    sampler = RandomWindowSampler(size=2, window_range=(1, 6))  # starts 1..4 of T = 8
    starts = []
    for iteration in range(1, 401):
        plan = sampler.plan(8, 3, iteration)
        start = plan.kinds.index("sde")
        assert plan.kinds == ("ode",) * start + ("sde", "sde") + ("ode",) * (6 - start)
        assert plan.trained == (start, start + 1)
        starts.append(start)
    counts = torch.bincount(torch.tensor(starts), minlength=8).tolist()
    # 400 draws over 4 starts: 100 each, binomial std sqrt(400 * 0.25 * 0.75) = 8.7; 60 and 140 are 4.6 std away
    assert counts[0] == 0 and counts[5:] == [0, 0, 0] and all(60 < c < 140 for c in counts[1:5]), counts
    # the same plan in two calls, whatever the global RNG did in between; another seed, other plans
    torch.manual_seed(123)
    first = [sampler.plan(8, 3, i) for i in range(1, 21)]
    torch.manual_seed(456)
    torch.rand(10)
    assert [sampler.plan(8, 3, i) for i in range(1, 21)] == first
    assert [p.trained for p in first] == [(s, s + 1) for s in starts[:20]]
    assert [sampler.plan(8, 4, i).trained for i in range(1, 21)] != [p.trained for p in first]


def test_the_sliding_window_by_hand():
    # size 2 in [0, 5): the starts that fit are 0, 1, 2, 3; the window moves every 2 iterations and wraps to 0
    sampler = SlidingWindowSampler(size=2, stride=1, every=2, window_range=(0, 5))
    assert [sampler.start(6, i) for i in range(1, 11)] == [0, 0, 1, 1, 2, 2, 3, 3, 0, 0]
    # stride 2 in [0, 6): starts 0, 2, 4 every iteration
    assert [SlidingWindowSampler(2, 2, 1, (0, 6)).start(6, i) for i in range(1, 5)] == [0, 2, 4, 0]
    assert sampler.plan(6, 0, 3) == StepPlan(
        ("ode", "sde", "sde", "ode", "ode", "ode"), (1, 2), "flow_grpo", subsample=False
    )
    assert sampler.plan(6, 0, 3) == sampler.plan(6, 99, 3)  # the window's position is the iteration's alone


def test_a_cps_window_that_reaches_the_last_step_ends_with_an_ode_step():
    plan = RandomWindowSampler(2, (4, 6), "cps").plan(6, 0, 1)
    assert plan == StepPlan(("ode", "ode", "ode", "ode", "sde", "ode"), (4,), "cps", subsample=False)


def test_the_methods_default_windows():
    def window(method: str, steps: int) -> set[tuple[int, ...]]:
        sampler = build_method(config_from_dict(toy_config(method)).algorithm, steps).sampler
        return {sampler.plan(steps, 0, i).trained for i in range(1, 60)}

    # Flow-GRPO-Fast: 2 steps in [0, T // 2) = [0, 5); TempFlow-GRPO: 1 step in [0, T - 1); MixGRPO: [0, T - 2)
    assert window("flow_grpo_fast", 10) == {(0, 1), (1, 2), (2, 3), (3, 4)}
    assert window("tempflow_grpo", 10) == {(t,) for t in range(9)}
    assert window("mixgrpo", 10) == {(t, t + 1) for t in range(7)}


def test_window_methods_train_every_step_of_their_window(tmp_path):
    # algorithm.train_step_fraction (0.99 by default) applies to the full-SDE methods: int(2 x 0.99) would train 1
    # of a window of 2, and int(1 x 0.99) = 0 would refuse TempFlow-GRPO's one branch step
    for method in ("flow_grpo_fast", "mixgrpo", "tempflow_grpo", "vgpo_fast", "vgpo_mix"):
        parts = build_method(config_from_dict(toy_config(method)).algorithm, 6)
        plan = parts.sampler.plan(6, 0, 1)
        slots = parts.objective.draw_slots(plan, 5, torch.Generator().manual_seed(0))
        assert slots.shape == (5, len(plan.trained)), method
        assert all(sorted(row) == list(plan.trained) for row in slots.tolist()), method


@pytest.mark.parametrize("method", ["flow_grpo_fast", "mixgrpo", "tempflow_grpo", "vgpo_fast", "vgpo_mix"])
def test_a_window_method_warns_that_it_ignores_a_set_train_step_fraction(method, recwarn):
    build_method(config_from_dict(toy_config(method)).algorithm, 6)  # the default: nothing to say
    assert not [w for w in recwarn if "train_step_fraction" in str(w.message)]
    with pytest.warns(UserWarning, match=f"train_step_fraction=0.5 is ignored by algorithm.method={method}"):
        build_method(config_from_dict(toy_config(method, algorithm={"train_step_fraction": 0.5})).algorithm, 6)


def test_dance_grpo_warns_at_a_noise_level_that_is_not_its_sources(recwarn):
    algorithm = config_from_dict(toy_config("dance_grpo")).algorithm
    build_method(algorithm, 6, noise_level=0.3)  # DanceGRPO's eta: nothing to say
    build_method(config_from_dict(toy_config("flow_grpo")).algorithm, 6, noise_level=0.7)  # Flow-GRPO's a
    assert not [w for w in recwarn if "noise_level" in str(w.message)]
    with pytest.warns(UserWarning, match=r"sampling.noise_level=0.7 with DanceGRPO's constant-noise SDE.*eta 0.3"):
        build_method(algorithm, 6, noise_level=0.7)


# -- trained steps --------------------------------------------------------------------------------------------


def test_trained_step_slots_are_the_baselines_draw():
    # every step trainable: each sample's slots are the baseline's randperm(T)[:int(T * fraction)], in turn
    plan = FullSDESampler().plan(10, 0, 1)
    slots = trained_step_slots(plan, 3, 0.99, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    expected = torch.stack([torch.randperm(10, generator=generator)[:9] for _ in range(3)])
    assert torch.equal(slots, expected)
    # on a plan's trained subset: distinct trained steps per sample, int(3 x 0.7) = 2 of them
    subset = StepPlan(("ode", "sde", "ode", "sde", "sde"), (1, 3, 4))
    slots = trained_step_slots(subset, 50, 0.7, torch.Generator().manual_seed(0))
    assert slots.shape == (50, 2)
    assert all(len(set(row)) == 2 and set(row) <= {1, 3, 4} for row in slots.tolist())
    assert {tuple(sorted(row)) for row in slots.tolist()} == {(1, 3), (1, 4), (3, 4)}


# -- credit ---------------------------------------------------------------------------------------------------


def test_step_gains_and_stepwise_credit_by_hand():
    steps = torch.tensor([[0.25, 0.5, 0.375], [0.5, 0.75, 1.0]], dtype=F64)  # exact in binary
    # g_t = R_t - R_{t-1}, g_0 = R_0: [0.25, 0.25, -0.125] and [0.5, 0.25, 0.25]; each row sums to its final reward
    gains = step_gains(steps)
    expected = torch.tensor([[0.25, 0.25, -0.125], [0.5, 0.25, 0.25]], dtype=F64)
    assert torch.equal(gains, expected)
    torch.testing.assert_close(gains.sum(dim=1), steps[:, -1], rtol=0, atol=1e-15)
    # GRPO per step on a group of two: the gains +-d / 2 from their mean over the std |d| / 2 (+ eps), so
    # -+ (|d| / 2) / (|d| / 2 + eps): step 0 (d = 0.25) and step 2 (d = 0.375); the equal step 1 gets exactly 0
    credit = StepwiseGains()(Rewards(steps[:, -1], steps), torch.tensor([0, 0]), torch.linspace(1, 0, 4))
    assert credit.advantages[:, 1].tolist() == [0.0, 0.0]
    first, last = 0.125 / (0.125 + DEFAULT_STD_EPS), 0.1875 / (0.1875 + DEFAULT_STD_EPS)
    expected = torch.tensor([[-first, -last], [first, last]], dtype=F64)
    torch.testing.assert_close(credit.advantages[:, [0, 2]], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(credit.advantages, grpo_advantages(gains, torch.tensor([0, 0])))
    assert StepwiseGains().needs_step_rewards


# -- GRPO-Guard's ratio and the objectives' weights -----------------------------------------------------------


def test_the_normalised_log_ratio_is_the_closed_form():
    # x' = mu_old + s eps: log p_theta(x') - log p_old(x') = eps d / s - d^2 / (2 s^2) per element (d = mu_theta -
    # mu_old); the normalisation s (log r + mean d^2 / (2 s^2)) leaves mean(eps d)
    generator = torch.Generator().manual_seed(0)
    old_mean = torch.randn(2, 3, generator=generator, dtype=F64)
    mean = old_mean + 0.1 * torch.randn(2, 3, generator=generator, dtype=F64)
    eps = torch.randn(2, 3, generator=generator, dtype=F64)
    std = torch.tensor([0.3, 0.7], dtype=F64)
    sample = old_mean + std[:, None] * eps
    log_prob = Normal(mean, std[:, None]).log_prob(sample).mean(dim=1)
    old_log_prob = Normal(old_mean, std[:, None]).log_prob(sample).mean(dim=1)
    result = normalised_log_ratio(log_prob, old_log_prob, mean, old_mean, std)
    torch.testing.assert_close(result, (eps * (mean - old_mean)).mean(dim=1), rtol=0, atol=1e-14)


def objective_batch(policy: ToyPolicy, shift: float, keep_means: bool) -> tuple[StepModel, UpdateBatch, torch.Tensor]:
    """Two samples' 4-step rollout; their stored log-probs at step 1 moved by -shift (the ratio there is e^shift)."""
    cond = policy.encode_prompts(["toy prompt 0", "toy prompt 1"])
    result = rollout(policy, cond, 4, generator=torch.Generator().manual_seed(0), keep_means=keep_means)
    log_probs = result.log_probs.clone()
    log_probs[:, 1] -= shift
    stored = Rollout(result.latents, result.velocities, log_probs, result.sigmas, result.step_kinds, means=result.means)
    advantages = torch.tensor([[0.0, 1.5, 0.0, 0.0], [0.0, -0.5, 0.0, 0.0]])
    batch = UpdateBatch(stored, cond, advantages, FullSDESampler().plan(4, 0, 1), result.sigmas, 0, 2)
    return StepModel(policy, 1.0, 0.7, "flow_grpo"), batch, torch.tensor([1, 1])


def method_objective(method: str, clip_range: float) -> ClippedPolicyObjective:
    """The objective the registry builds for ``method`` (so the weights tested are the method's own)."""
    algorithm = config_from_dict(toy_config(method, algorithm={"clip_range": clip_range})).algorithm
    objective = build_method(algorithm, 6).objective
    assert isinstance(objective, ClippedPolicyObjective)
    return objective


# step 1 of a 4-step linear schedule: sigma = 0.75, sigma_next = 0.5, dt = -0.25; Eq. 7's std = a sqrt(sigma /
# (1 - sigma)) sqrt(-dt) = 0.7 sqrt(3) 0.5
STEP1_STD = 0.35 * math.sqrt(3)


def test_noise_aware_weights_reach_the_loss():
    model, batch, slots = objective_batch(ToyPolicy(), 0.0, keep_means=False)
    objective = method_objective("tempflow_grpo", 0.2)
    # on-policy the ratio is 1: loss = mean(-A x 2.25 std) = -(1.5 - 0.5) / 2 x 2.25 x 0.35 sqrt(3)
    term = objective.term(model, batch, torch.tensor([0, 1]), slots, on_policy=True)
    assert float(term.loss.detach()) == pytest.approx(-0.5 * 2.25 * STEP1_STD, rel=1e-6)
    # off-policy with ratio e^0.1 = 1.105 and clip 0.05: A = 1.5 > 0 takes the clipped -1.5 x 1.05, A = -0.5 the
    # unclipped 0.5 x e^0.1; loss = (-1.575 + 0.5 e^0.1) / 2 x 2.25 x std
    model, batch, slots = objective_batch(ToyPolicy(), 0.1, keep_means=False)
    objective = method_objective("tempflow_grpo", 0.05)
    term = objective.term(model, batch, torch.tensor([0, 1]), slots, on_policy=False)
    assert float(term.loss.detach()) == pytest.approx((-1.575 + 0.5 * math.exp(0.1)) / 2 * 2.25 * STEP1_STD, rel=1e-5)


def test_grpo_guard_weights_and_normalised_ratio_reach_the_loss():
    model, batch, slots = objective_batch(ToyPolicy(), 0.0, keep_means=True)
    objective = method_objective("grpo_guard", 0.2)
    # on-policy: normalised log-ratio 0, weight 1 / dt = 4: loss = -(1.5 - 0.5) / 2 x 4 = -2
    term = objective.term(model, batch, torch.tensor([0, 1]), slots, on_policy=True)
    assert float(term.loss.detach()) == pytest.approx(-2.0, rel=1e-6)
    # off-policy, the policy's means equal to the stored ones (d = 0): log r_hat = s x 0.1, r_hat = e^(0.1 s)
    # (s = 0.606, r_hat = 1.0625) with clip 0.05: A = 1.5 clipped to -1.5 x 1.05, A = -0.5 unclipped 0.5 r_hat
    model, batch, slots = objective_batch(ToyPolicy(), 0.1, keep_means=True)
    objective = method_objective("grpo_guard", 0.05)
    term = objective.term(model, batch, torch.tensor([0, 1]), slots, on_policy=False)
    ratio = math.exp(0.1 * STEP1_STD)
    assert float(term.loss.detach()) == pytest.approx((-1.575 + 0.5 * ratio) / 2 * 4, rel=1e-5)
    assert float(term.stats["ratio"]) == pytest.approx(ratio, rel=1e-6)


# -- refused at start -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "settings", "message"),
    [
        ("flow_grpo_fast", {"algorithm": {"window_size": 3, "window_range": [0, 2]}}, "does not fit"),
        ("mixgrpo", {"algorithm": {"window_range": [2, 9]}}, r"must lie inside the 6 sampling steps"),
        ("grpo_guard", {"algorithm": {"sde_form": "cps"}}, "takes the SDE form"),
        ("dance_grpo", {"algorithm": {"sde_form": "flow_grpo"}}, r"dance_grpo takes the SDE form\(s\) dance"),
        ("tempflow_grpo", {"sampling": {"share_initial_noise": False}}, "needs sampling.share_initial_noise: true"),
        ("flow_grpo", {"algorithm": {"train_step_fraction": 0.1}}, "trains no step of 6"),
        # config's check passes (int(2 x 0.99) = 1), but CPS's last step is ODE: int(1 x 0.99) = 0 trained
        ("flow_grpo_cps", {"sampling": {"num_steps": 2}}, r"trains int\(1 x 0.99\) = 0"),
    ],
)
def test_combinations_that_cannot_work_are_refused_at_start(tmp_path, method, settings, message):
    with pytest.raises(ConfigError, match=message):
        toy_trainer(tmp_path, method, **settings)


def test_an_ode_only_plan_under_the_ppo_objective_is_refused():
    with pytest.raises(ConfigError, match="this sampler takes ODE steps only"):
        ClippedPolicyObjective().check(ODESampler().plan(4, 0, 1))


def test_variant_is_the_alias_of_method(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("algorithm:\n  method: vgpo\n")
    assert load_config(preset, ["algorithm.variant=flow_grpo"]).algorithm.method == "flow_grpo"
    assert load_config(preset, ["algorithm.method=mixgrpo"]).algorithm.method == "mixgrpo"
    child = tmp_path / "child.yaml"
    child.write_text("base: preset.yaml\nalgorithm:\n  variant: dance_grpo\n")
    assert load_config(child).algorithm.method == "dance_grpo"
    both = tmp_path / "both.yaml"
    both.write_text("algorithm:\n  method: vgpo\n  variant: flow_grpo\n")
    with pytest.raises(ConfigError, match=r"sets algorithm\.method='vgpo' and algorithm\.variant='flow_grpo'"):
        load_config(both)
    with pytest.raises(ConfigError, match=r"the overrides sets algorithm\.method"):
        load_config(preset, ["algorithm.variant=flow_grpo", "algorithm.method=vgpo"])
