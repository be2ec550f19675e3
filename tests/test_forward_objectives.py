"""The forward-process objectives (DiffusionNFT, AWM): hand-worked losses, weights and gradients on tiny float64
tensors, their slots and noise, the sampling policy's soft update and checkpoint, and refusals."""

import json

import pytest
import torch

from fakes import BrightnessReward, FakePolicy, FakeTask
from vgpo.config import config_from_dict
from vgpo.errors import ConfigError
from vgpo.methods.objectives import UpdateBatch, forward_process_slots, noised_again
from vgpo.methods.objectives.awm import awm_loss, weighted_matching
from vgpo.methods.objectives.nft import SoftUpdate, adaptive_x0_loss, nft_loss, optimality_probability
from vgpo.methods.registry import build_method, required_settings
from vgpo.methods.samplers import ODESampler, StepPlan
from vgpo.sampling import Rollout
from vgpo.trainer import Trainer

f64 = torch.float64


def test_optimality_probability_maps_clipped_advantages_to_zero_one():
    # r = clamp(clip(A, -5, 5) / 10 + 1/2, 0, 1): -7 -> -5 -> 0; 0 -> 1/2; 2.5 -> 0.75; 9 -> 5 -> 1
    advantages = torch.tensor([-7.0, -5.0, 0.0, 2.5, 5.0, 9.0], dtype=f64)
    expected = torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0], dtype=f64)
    torch.testing.assert_close(optimality_probability(advantages, 5.0), expected, rtol=0, atol=1e-15)


def test_nft_loss_by_hand():
    # beta = 0.5, c = 5.
    # sample 1: x0 = [1, 1], t = 0.5, x_t = [0.2, 0.2], v = [0.4, 0.4], v_old = [0.2, 0.2], A = 2.5 -> r = 0.75
    #   v+ = 0.5*0.4 + 0.5*0.2 = 0.3, x0+ = 0.2 - 0.5*0.3 = 0.05, err -0.95 -> L+ = 0.9025 / 0.95 = 0.95
    #   v- = 1.5*0.2 - 0.5*0.4 = 0.1, x0- = 0.2 - 0.05 = 0.15, err -0.85 -> L- = 0.85
    #   policy = 5 * (0.75*0.95 + 0.25*0.85) / 0.5 = 10 * 0.925 = 9.25
    # sample 2: x0 = [0, 0], t = 1, x_t = [1, 0], v = [0.5, 0], v_old = [0, -0.5], A = -10 -> r = 0
    #   v+ = [0.25, -0.25], x0+ = [0.75, 0.25]: mean sq 0.3125, mean abs 0.5 -> L+ = 0.625
    #   v- = 1.5*[0, -0.5] - 0.5*[0.5, 0] = [-0.25, -0.75], x0- = [1.25, 0.75]: mean sq 1.0625, abs 1 -> L- = 1.0625
    #   policy = 5 * 1.0625 / 0.5 = 10.625
    # mean = (9.25 + 10.625) / 2 = 9.9375
    x0 = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=f64)
    x_t = torch.tensor([[0.2, 0.2], [1.0, 0.0]], dtype=f64)
    velocity = torch.tensor([[0.4, 0.4], [0.5, 0.0]], dtype=f64)
    old = torch.tensor([[0.2, 0.2], [0.0, -0.5]], dtype=f64)
    t = torch.tensor([0.5, 1.0], dtype=f64)
    r = optimality_probability(torch.tensor([2.5, -10.0], dtype=f64), 5.0)
    loss, positive, negative = nft_loss(velocity, old, x_t, x0, t, r, beta=0.5, clip=5.0)
    torch.testing.assert_close(positive, torch.tensor([0.95, 0.625], dtype=f64), rtol=0, atol=1e-12)
    torch.testing.assert_close(negative, torch.tensor([0.85, 1.0625], dtype=f64), rtol=0, atol=1e-12)
    assert float(loss) == pytest.approx(9.9375, abs=1e-12)


def test_nft_adaptive_weight_carries_no_gradient_and_the_old_velocity_none():
    # one element, beta = 1, r = 1 (A = c): loss = c * L+ = 5 * err^2 / sg(|err|), x0+ = x_t - t v.
    # x0 = 1, x_t = 0.2, t = 0.5, v = 0.4: err = 0.2 - 0.2 - 1 = -1; dL/dv = 5 * 2 err (-t) / |err| = 5
    # (a weight with gradient would give 5 * sign(err) * (-t) = 2.5)
    velocity = torch.tensor([[0.4]], dtype=f64, requires_grad=True)
    old = torch.tensor([[0.3]], dtype=f64, requires_grad=True)
    loss, _, _ = nft_loss(
        velocity,
        old,
        torch.tensor([[0.2]], dtype=f64),
        torch.tensor([[1.0]], dtype=f64),
        torch.tensor([0.5], dtype=f64),
        torch.tensor([1.0], dtype=f64),
        beta=1.0,
        clip=5.0,
    )
    loss.backward()
    assert float(velocity.grad) == pytest.approx(5.0, abs=1e-12)
    assert old.grad is None


def test_adaptive_loss_floor():
    # a perfect prediction: error 0, weight clipped to 1e-5, loss 0 (not 0 / 0)
    x = torch.ones(2, 3, dtype=f64)
    torch.testing.assert_close(adaptive_x0_loss(x, x), torch.zeros(2, dtype=f64))


def test_awm_loss_and_gradient_by_hand():
    # sample 1: x0 = [1, 0], eps = [0, 1], v = [-1, 1] = eps - x0 -> l = 0; A = 3 -> 0.6
    # sample 2: x0 = [0, 0], eps = [1, 1], v = [0, 2], diff [-1, 1] -> l = 1; A = -10 -> -5 -> -1
    # uniform: loss = (0.6 * 0 + (-1) * 1) / 2 = -0.5; w = t = [0.5, 0.25]: -0.25 / 2 = -0.125
    # d loss / d v_2 = (1/2) (-1) 2 (v - target) / 2 = -(v - target) / 2 = [0.5, -0.5]
    x0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=f64)
    eps = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=f64)
    velocity = torch.tensor([[-1.0, 1.0], [0.0, 2.0]], dtype=f64, requires_grad=True)
    t = torch.tensor([0.5, 0.25], dtype=f64)
    advantages = torch.tensor([3.0, -10.0], dtype=f64)
    loss, matching = awm_loss(velocity, x0, eps, t, advantages, 5.0, "uniform")
    torch.testing.assert_close(matching, torch.tensor([0.0, 1.0], dtype=f64))
    assert float(loss.detach()) == pytest.approx(-0.5, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(velocity.grad, torch.tensor([[0.0, 0.0], [0.5, -0.5]], dtype=f64))
    weighted, _ = awm_loss(velocity, x0, eps, t, advantages, 5.0, "t")
    assert float(weighted.detach()) == pytest.approx(-0.125, abs=1e-12)


def test_awm_ghuber_by_hand():
    # AWM's configs' weighting: g = t ((l + 1e-10)^p - 1e-10^p) / p. The same two samples (l = [0, 1], A_hat =
    # [0.6, -1], t = [0.5, 0.25]) at p = 0.5: g = [0, 0.25 (sqrt(1 + 1e-10) - 1e-5) / 0.5] = [0, 0.499995];
    # loss = (0.6 * 0 - 0.499995) / 2. dg/dl = t (l + 1e-10)^(p - 1) = 0.25 at l = 1, dl/dv_2 = v - target = [-1, 1]:
    # d loss / d v_2 = (1/2)(-1)(0.25)[-1, 1] = [0.125, -0.125]; sample 1 fits exactly (v - target = 0): no gradient.
    x0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=f64)
    eps = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=f64)
    velocity = torch.tensor([[-1.0, 1.0], [0.0, 2.0]], dtype=f64, requires_grad=True)
    t = torch.tensor([0.5, 0.25], dtype=f64)
    advantages = torch.tensor([3.0, -10.0], dtype=f64)
    loss, _ = awm_loss(velocity, x0, eps, t, advantages, 5.0, "ghuber", ghuber_power=0.5)
    assert float(loss.detach()) == pytest.approx(-0.5 * 0.25 * ((1 + 1e-10) ** 0.5 - 1e-5) / 0.5, abs=1e-15)
    assert float(loss.detach()) == pytest.approx(-0.2499975, abs=1e-9)
    loss.backward()
    torch.testing.assert_close(velocity.grad, torch.tensor([[0.0, 0.0], [0.125, -0.125]], dtype=f64))
    # large errors weigh less than under "t" (a Huber-like loss), small ones more; p = 1 is "t"
    matching = torch.tensor([0.01, 1.0, 16.0], dtype=f64)
    levels = torch.full((3,), 0.5, dtype=f64)
    ghuber = weighted_matching(matching, levels, "ghuber", 0.25)
    assert float(ghuber[2]) == pytest.approx(0.5 * (2 - 1e-10**0.25) / 0.25, rel=1e-10)  # 16^0.25 ~ 2: 3.9937
    torch.testing.assert_close(weighted_matching(matching, levels, "ghuber", 1.0), 0.5 * matching)
    torch.testing.assert_close(weighted_matching(matching, levels, "t", 1.0), 0.5 * matching)


def test_soft_update_decay_schedule():
    # DiffusionNFT decay_type 1: min(0.001 * step, 0.5)
    rule = SoftUpdate()
    assert [rule.decay(s) for s in (0, 100, 499, 500, 4000)] == pytest.approx([0.0, 0.1, 0.499, 0.5, 0.5])


def test_forward_slots_are_per_sample_subsets_of_the_levels_with_their_own_noise():
    plan = ODESampler().plan(10, 0, 1)
    slots = forward_process_slots(plan, 6, 0.99, torch.Generator().manual_seed(0))
    assert slots.shape == (6, 9)  # int(10 * 0.99) = 9 levels per sample
    steps, seeds = slots % 10, slots // 10
    for row in steps:
        assert len(set(row.tolist())) == 9 and int(row.min()) >= 0 and int(row.max()) <= 9
    assert len(set(seeds.flatten().tolist())) == 54  # every (sample, level) its own noise
    again = forward_process_slots(plan, 6, 0.99, torch.Generator().manual_seed(0))
    assert torch.equal(slots, again)


def test_noised_again_is_the_forward_process_at_the_slot_level():
    steps = 4
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    final = torch.tensor([[[[2.0]]], [[[-1.0]]]])  # x0 of 2 samples [2, 1, 1, 1]
    latents = torch.zeros(2, steps + 1, 1, 1, 1)
    latents[:, -1] = final
    rollout = Rollout(latents, torch.zeros(2, steps, 1, 1, 1), torch.zeros(2, steps), sigmas)
    plan = StepPlan(("ode",) * steps, ())
    batch = UpdateBatch(rollout, {"x": torch.zeros(2, 1)}, torch.zeros(2, steps), plan, sigmas, 0, 2)
    slots = torch.tensor([2 + steps * 7, 1 + steps * 9])  # levels 0.5 and 0.75, noise seeds 7 and 9
    x0, eps, x_t, t, cond = noised_again(batch, torch.tensor([0, 1]), slots)
    assert torch.equal(cond["x"], torch.zeros(2, 1))
    torch.testing.assert_close(t, torch.tensor([0.5, 0.75]))
    expected_eps = torch.stack([torch.randn(1, 1, 1, generator=torch.Generator().manual_seed(s)) for s in (7, 9)])
    torch.testing.assert_close(eps, expected_eps)
    torch.testing.assert_close(x_t, (1 - t.reshape(-1, 1, 1, 1)) * final + t.reshape(-1, 1, 1, 1) * expected_eps)
    assert torch.equal(x0, final)


def small_config(method, **algorithm):
    data = {
        "sampling": {
            "num_steps": 4,
            "group_size": 4,
            "prompts_per_iteration": 2,
            "eval_num_steps": 3,
            "eval_samples_per_prompt": 2,
            "share_initial_noise": False,
        },
        "algorithm": {"method": method, **algorithm},
        "optim": {"micro_batch_size": 4, "learning_rate": 1e-2},
        "run": {"iterations": 2, "eval_every": 0, "checkpoint_every": 1, "progress": False, "tensorboard": False},
    }
    return config_from_dict(data)


def make_trainer(path, config):
    return Trainer(config, path, policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward())


@pytest.mark.parametrize("method", ["nft", "awm"])
def test_forward_methods_sample_by_ode_and_train_trainable_weights_only(tmp_path, method):
    trainer = make_trainer(tmp_path, small_config(method, kl_beta=0.1))
    before = {k: v.detach().clone() for k, v in trainer.policy.model.state_dict().items()}
    records = [trainer.train_iteration(i) for i in (1, 2)]
    assert all(r["sde_steps"] == [] for r in records)
    trainable = set(trainer.policy.trainable_state_dict())
    for name, value in trainer.policy.model.state_dict().items():
        assert torch.equal(value, before[name]) != (name in trainable), name
    # evaluations per sample: 4 sampling steps + per trained level (int(4 * 0.99) = 3) the policy and the
    # reference (KL) and, for NFT, the old policy
    per_level = 3 if method == "nft" else 2
    assert records[0]["model_evaluations"] == 8 * (4 + 3 * per_level)


def test_nft_samples_with_the_soft_updated_old_policy(tmp_path):
    trainer = make_trainer(tmp_path, small_config("nft"))
    assert trainer.state.sampling is not None
    record = trainer.train_iteration(1)
    # after iteration 1: 2 optimizer steps, d = 0.002: old = 0.002 * initial + 0.998 * theta
    assert record["sampling_policy_decay"] == pytest.approx(0.002)
    theta = [p.detach().clone() for p in trainer.parameters]
    old = trainer.state.sampling.shadow
    assert not torch.equal(old[0], theta[0])  # the old policy lags the trained one
    with trainer.state.sampling.applied():
        assert torch.equal(trainer.parameters[0].detach(), old[0])
    assert torch.equal(trainer.parameters[0].detach(), theta[0])  # restored


def _lines(path):
    records = [json.loads(x) for x in path.read_text().splitlines()]
    # the training lines (the interrupted run also evaluated where it stopped)
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records if r["kind"] == "train"]


def test_nft_resume_is_the_uninterrupted_run(tmp_path):
    config = small_config("nft")
    config.run.iterations = 3
    full = make_trainer(tmp_path / "full", config)
    full.run()
    short = small_config("nft")
    short.run.iterations = 2
    make_trainer(tmp_path / "split", short).run()
    resumed = make_trainer(tmp_path / "split", config)
    resumed.run(resume=True)
    for name, value in resumed.policy.trainable_state_dict().items():
        assert torch.equal(value, full.policy.trainable_state_dict()[name]), name
    for a, b in zip(resumed.state.sampling.shadow, full.state.sampling.shadow, strict=True):
        assert torch.equal(a, b)
    assert _lines(tmp_path / "split" / "metrics.jsonl") == _lines(tmp_path / "full" / "metrics.jsonl")


def test_refusals_name_the_setting():
    algorithm = small_config("nft", nft_beta=0.0).algorithm
    with pytest.raises(ConfigError, match="nft_beta"):
        build_method(algorithm, 4, share_initial_noise=False)
    with pytest.raises(ConfigError, match="advantage_clip"):
        build_method(small_config("awm", advantage_clip=None).algorithm, 4, share_initial_noise=False)
    with pytest.raises(ConfigError, match="forward_credit"):
        build_method(small_config("flow_grpo", forward_credit="vgpo").algorithm, 4)
    with pytest.raises(ConfigError, match="train_step_fraction"):
        build_method(small_config("awm", train_step_fraction=0.2).algorithm, 4, share_initial_noise=False)
    ghuber = small_config("awm", awm_weighting="ghuber", awm_ghuber_power=0.0).algorithm
    with pytest.raises(ConfigError, match="awm_ghuber_power must be > 0"):
        build_method(ghuber, 4, share_initial_noise=False)
    # an ODE rollout of a shared x_T is G copies of one image: no spread to learn from
    with pytest.raises(ConfigError, match="share_initial_noise: false"):
        build_method(small_config("nft").algorithm, 4, share_initial_noise=True)
    assert required_settings("awm") == {"sampling.share_initial_noise": False}
    assert required_settings("flow_grpo") == {}


def test_vgpo_credit_weights_each_level_by_its_step(tmp_path):
    # forward_credit: vgpo scores every step's projection (TCRM) and trains each level with its step's advantage
    trainer = make_trainer(tmp_path, small_config("awm", forward_credit="vgpo"))
    record = trainer.train_iteration(1)
    assert "instant_reward_by_step" in record
    assert trainer.method.credit.needs_step_rewards


@pytest.mark.parametrize(
    ("method", "setting"),
    [("nft", {}), ("awm", {}), ("awm", {"awm_weighting": "ghuber"})],
    ids=["nft", "awm", "ghuber"],
)
def test_forward_methods_learn_on_the_analytic_toy(tmp_path, method, setting):
    # the toy's means start at 0, 2.08 (mean norm) from the prompts' targets; 20 iterations of a seeded run
    # bring them within half of that and raise the batch reward (measured: nft 2.08 -> 0.65, awm -> 0.39,
    # awm with ghuber -> 0.31)
    from toy import TargetReward, ToyPolicy, ToyTask, toy_target

    config = config_from_dict(
        {
            "sampling": {"num_steps": 4, "group_size": 8, "prompts_per_iteration": 4, "share_initial_noise": False},
            "algorithm": {"method": method, **setting},
            "optim": {"micro_batch_size": 32, "learning_rate": 0.05, "ema_decay": None},
            "run": {"iterations": 20, "progress": False, "tensorboard": False},
        }
    )
    trainer = Trainer(config, tmp_path, policy=ToyPolicy(), task=ToyTask(), reward=TargetReward())
    targets = torch.stack([toy_target(i) for i in range(4)])  # the train prompts' targets

    def distance() -> float:
        return float((trainer.policy.model.means[:4].detach() - targets).flatten(1).norm(dim=1).mean())

    start = distance()
    rewards = [trainer.train_iteration(i)["reward_mean"] for i in range(1, 21)]
    assert distance() < 0.5 * start
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1
