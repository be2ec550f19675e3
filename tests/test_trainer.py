"""The trainer (Algorithm 1) on a fake linear policy: variants, update equivalence, call counts, resume, errors."""

import json

import pytest
import torch

from fakes import BrightnessReward, FakePolicy, FakeTask
from vgpo.config import config_from_dict
from vgpo.errors import CheckpointError, ConfigError, RewardError
from vgpo.math import calibration_slopes, grpo_advantages, sde_step
from vgpo.methods.credit import Rewards
from vgpo.methods.registry import build_method
from vgpo.trainer import Trainer


def small_config(**sections):
    data = {
        "sampling": {
            "num_steps": 4,
            "group_size": 4,
            "prompts_per_iteration": 2,
            "eval_num_steps": 3,
            "eval_samples_per_prompt": 2,
        },
        "algorithm": {"variant": "vgpo", "clip_range": 0.2},
        "optim": {"micro_batch_size": 4, "learning_rate": 1e-2},
        "run": {"iterations": 2, "eval_every": 0, "checkpoint_every": 1, "progress": False, "tensorboard": False},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def make_trainer(tmp_path, config=None, reward=None, policy=None):
    return Trainer(
        config or small_config(),
        tmp_path,
        policy=policy or FakePolicy(),
        task=FakeTask(),
        reward=reward or BrightnessReward(),
    )


@pytest.mark.parametrize("variant", ["flow_grpo", "vgpo", "tcrm_only", "adae_only"])
def test_two_iterations_change_the_trainable_parameters_and_nothing_else(tmp_path, variant):
    trainer = make_trainer(tmp_path, small_config(algorithm={"variant": variant, "kl_beta": 0.1}))
    before = {k: v.detach().clone() for k, v in trainer.policy.model.state_dict().items()}
    reference_before = {k: v.clone() for k, v in trainer.policy.reference_model.state_dict().items()}
    for iteration in (1, 2):
        record = trainer.train_iteration(iteration)
        # per-step rewards are a measurement only where TCRM scores every step's projection
        assert ("instant_reward_by_step" in record) == (variant in ("vgpo", "tcrm_only"))
    after = trainer.policy.model.state_dict()
    trainable = set(trainer.policy.trainable_state_dict())
    for name, value in after.items():
        if name in trainable:
            assert not torch.equal(value, before[name]), f"{name} did not change"
        else:
            assert torch.equal(value, before[name]), f"frozen {name} changed"
    for name, value in trainer.policy.reference_model.state_dict().items():
        assert torch.equal(value, reference_before[name])


def credit_of(method, rewards, groups, **settings):
    algorithm = small_config(algorithm={"variant": method, **settings}).algorithm
    credit = build_method(algorithm, rewards.shape[1]).credit
    given = Rewards(rewards[:, -1], rewards if credit.needs_step_rewards else None)
    return credit(given, groups, torch.linspace(1, 0, rewards.shape[1] + 1))


def test_the_credit_of_each_variant():
    rewards = torch.tensor([[0.1, 0.2, 0.6], [0.3, 0.3, 0.2], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    groups = torch.tensor([0, 0, 1, 1])
    # flow_grpo reads only the terminal reward and repeats its GRPO advantage on every step
    grpo = credit_of("flow_grpo", rewards, groups).advantages
    expected = grpo_advantages(rewards[:, -1], groups)
    torch.testing.assert_close(grpo, expected[:, None].expand(-1, 3))
    # vgpo on an all-equal group keeps the absolute term omega * k * Q on the first absolute_steps steps
    result = credit_of("vgpo", rewards, groups, k=0.5, absolute_steps=2, gamma=0.0)
    torch.testing.assert_close(result.advantages[2], torch.tensor([0.25, 0.25, 0.0]))
    # tcrm_only has no absolute term: the equal group gets exactly zero
    assert torch.equal(credit_of("tcrm_only", rewards, groups, gamma=0.0).advantages[2:], torch.zeros(2, 3))


def test_calibrated_instant_reward_trains_and_logs_its_slopes(tmp_path):
    config = small_config(algorithm={"variant": "vgpo", "instant_reward": "calibrated"})
    probe = make_trainer(tmp_path / "probe", config)
    rewards = probe.score(probe.sample(1))
    expected = calibration_slopes(rewards.steps, torch.arange(8) // 4)  # 2 prompts x G = 4, groups contiguous
    assert expected[-1] == 1.0 and float(expected[:-1].max()) > 0  # the fake reward varies within groups
    record = make_trainer(tmp_path / "run", config).train_iteration(1)  # the same seed draws the same batch
    assert record["calibration_slope_by_step"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert "calibration_slope_by_step" not in make_trainer(tmp_path / "plain").train_iteration(1)


def test_per_step_terminal_advantage_gives_the_plain_flow_grpo_update(tmp_path):
    config = small_config(
        algorithm={"variant": "flow_grpo", "train_step_fraction": 1.0, "clip_range": 0.2},
        optim={"micro_batch_size": 3, "ema_decay": None, "max_grad_norm": None, "steps_per_epoch": 1},
    )
    trainer = make_trainer(tmp_path, config)
    batch = trainer.sample(1)
    rewards = trainer.score(batch)
    credit = trainer.advantages(rewards)
    # the credit's advantages [N, T] repeat the terminal advantage; the plain formula uses the [N] vector
    group_ids = torch.arange(2).repeat_interleave(4)
    terminal = grpo_advantages(rewards.terminal, group_ids)
    torch.testing.assert_close(credit.advantages, terminal[:, None].expand_as(credit.advantages))

    # plain Flow-GRPO: loss = mean_i mean_t max(-A_i r_it, -A_i clip(r_it)), one AdamW step on its gradient
    plain = FakePolicy()
    plain.model.load_state_dict(trainer.policy.model.state_dict())
    params = list(plain.trainable_parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-4)
    result = batch.rollout
    n, steps = result.log_probs.shape
    losses = []
    for t in range(steps):
        sigma, sigma_next = float(result.sigmas[t]), float(result.sigmas[t + 1])
        v = plain.velocity(result.latents[:, t], torch.full((n,), sigma), batch.cond)
        log_prob = sde_step(
            result.latents[:, t], v, sigma, sigma_next, 0.7, prev_sample=result.latents[:, t + 1]
        ).log_prob
        ratio = torch.exp(log_prob - result.log_probs[:, t])
        losses.append(torch.maximum(-terminal * ratio, -terminal * ratio.clamp(0.8, 1.2)))
    torch.stack(losses).mean().backward()
    optimizer.step()

    trainer.update(batch, credit, 1)
    for mine, theirs in zip(trainer.parameters, params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)


def test_vgpo_makes_as_many_model_calls_as_flow_grpo(tmp_path):
    counts = {}
    for variant in ("flow_grpo", "vgpo"):
        policy = FakePolicy()
        reward = BrightnessReward()
        trainer = make_trainer(tmp_path / variant, small_config(algorithm={"variant": variant}), reward, policy)
        trainer.train_iteration(1)
        counts[variant] = (policy.velocity_calls, policy.decode_calls, reward.calls, reward.images)
    # same velocity calls (T in the rollout + trained steps x micro-batches in the update)
    # (2 optimizer steps x micro-batches of 4 over the 8 samples = 2 chunks of 4 per pass); flow_grpo decodes
    # and scores its final samples in one call, vgpo each step's projections in one call per step (scored
    # while the sampler computes the next step, task.reward_workers); vgpo scores T images per sample
    assert counts["vgpo"][0] == counts["flow_grpo"][0] == 4 + 3 * 2
    assert counts["flow_grpo"][1:3] == (1, 1) and counts["vgpo"][1:3] == (4, 4)
    assert counts["vgpo"][3] == 4 * counts["flow_grpo"][3] == 4 * 8


def _strip_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_kill_and_resume_gives_exactly_the_uninterrupted_run(tmp_path):
    # eval_every=2 makes the interrupted run (which ends, and so evaluates, at 2) evaluate like the full one
    full = make_trainer(tmp_path / "full", small_config(run={"iterations": 4, "eval_every": 2}))
    full.run()
    weights_full = full.policy.trainable_state_dict()

    first = make_trainer(tmp_path / "split", small_config(run={"iterations": 2, "eval_every": 2}))
    first.run()
    # simulate a kill after iteration 3's metrics were written but before its checkpoint
    with (tmp_path / "split" / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"kind": "train", "iteration": 3, "reward_mean": -1}) + "\n")
    resumed = make_trainer(tmp_path / "split", small_config(run={"iterations": 4, "eval_every": 2}))
    resumed.run(resume=True)
    for name, value in resumed.policy.trainable_state_dict().items():
        assert torch.equal(value, weights_full[name]), name
    lines = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert _strip_seconds(lines("split")) == _strip_seconds(lines("full"))


def test_checkpoint_from_another_model_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, small_config(run={"iterations": 1}))
    trainer.run()
    other = make_trainer(tmp_path, small_config(run={"iterations": 2}), policy=FakePolicy(side=16))
    with pytest.raises(CheckpointError, match="was written for model 'fake:8' but the policy is 'fake:16'"):
        other.run(resume=True)


def test_existing_run_directory_is_not_overwritten(tmp_path):
    make_trainer(tmp_path, small_config(run={"iterations": 1})).run()
    with pytest.raises(ConfigError, match="already holds a run; resume it with --resume"):
        make_trainer(tmp_path, small_config(run={"iterations": 1})).run()


def test_nan_reward_is_reported_with_its_cause(tmp_path):
    def nan_reward(images, prompts, metadata):
        scores = images.mean(dim=(1, 2, 3))
        scores[1] = float("nan")
        return scores

    trainer = make_trainer(tmp_path, reward=nan_reward)
    with pytest.raises(RewardError, match="NaN"):
        trainer.train_iteration(1)


def test_reward_with_the_wrong_number_of_scores_is_reported(tmp_path):
    trainer = make_trainer(tmp_path, reward=lambda images, prompts, metadata: torch.zeros(3))
    with pytest.raises(RewardError, match="3"):
        trainer.train_iteration(1)


def test_ema_checkpoint_loads_by_name_into_a_fresh_policy(tmp_path):
    from vgpo.checkpoint import list_checkpoints, load_weights

    trainer = make_trainer(tmp_path, small_config(run={"iterations": 2}, optim={"ema_decay": 0.5}))
    trainer.run()
    expected = trainer.ema.state_dict(trainer.policy)
    raw = trainer.policy.trainable_state_dict()
    assert any(not torch.equal(expected[k], raw[k]) for k in raw)  # the EMA differs from the raw weights
    fresh = FakePolicy()
    load_weights(fresh, list_checkpoints(tmp_path)[-1], use_ema=True)
    for name, value in fresh.trainable_state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("lora_rank", [4, None], ids=["lora", "full"])
def test_two_iterations_on_the_tiny_model_change_trainable_weights_only(tmp_path, lora_rank):
    from vgpo.models.tiny import TinyConfig, TinyFlowModel, tiny_policy
    from vgpo.rewards import build_reward
    from vgpo.tasks import get_task

    torch.manual_seed(0)
    model = TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8))
    policy = tiny_policy(model, lora_rank=lora_rank)
    config = small_config(algorithm={"variant": "vgpo", "kl_beta": 0.04}, optim={"learning_rate": 1e-2})
    task = get_task("compositional")
    trainer = Trainer(config, tmp_path, policy=policy, task=task, reward=build_reward(task.reward_name))
    before = {k: v.clone() for k, v in policy.adapter.model.state_dict().items()}
    trainable = set(policy.trainable_state_dict())
    trainer.train_iteration(1)
    trainer.train_iteration(2)
    after = policy.adapter.model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed, "nothing was trained"
    assert changed <= trainable  # LoRA only, or transformer weights only: never the glyph / text parts


def test_evaluation_scores_with_the_task_once_unless_another_reward_is_configured():
    from vgpo.evaluation import evaluate_policy
    from vgpo.tasks import build_evaluator

    task, reward, evaluator = FakeTask(), BrightnessReward(), build_evaluator("brightness")
    kwargs = {"samples_per_prompt": 2, "num_steps": 2, "guidance_scale": 1.0, "seed": 0}
    own = evaluate_policy(FakePolicy(), evaluator, None, task.prompts("test"), **kwargs)
    assert own["reward"] == own["score"]  # the task's own score, no second reward call
    other = evaluate_policy(FakePolicy(), evaluator, reward, task.prompts("test"), **kwargs)
    assert reward.calls == 1 and other["reward"] == pytest.approx(own["score"], abs=1e-6)


def test_reward_with_options_is_not_mistaken_for_the_tasks_own_score():
    from vgpo.builders import reward_is_task_score
    from vgpo.config import TaskConfig

    task = FakeTask()
    assert reward_is_task_score(TaskConfig(reward=None), task)
    assert reward_is_task_score(TaskConfig(reward=task.reward_name), task)
    assert not reward_is_task_score(TaskConfig(reward="ocr"), task)
    # e.g. compositional with strict=true: same name, another reward, so evaluation must score it itself
    options = {task.reward_name: {"strict": True}}
    assert not reward_is_task_score(TaskConfig(reward=None, reward_options=options), task)


def test_trainer_builds_the_reward_with_its_options_and_evaluates_with_it(tmp_path):
    plain = Trainer(small_config(), tmp_path / "a", policy=FakePolicy(), task=FakeTask())
    assert plain.evaluation.reward is None  # the task's own score is reused at evaluation
    config = small_config(task={"reward_options": {"brightness": {"scale": 2.0}}})
    trainer = Trainer(config, tmp_path / "b", policy=FakePolicy(), task=FakeTask())
    assert trainer.evaluation.reward is trainer.reward and trainer.reward.scale == 2.0


def test_an_update_that_leaves_non_finite_weights_stops_the_run_naming_the_cause(tmp_path):
    from vgpo.errors import TrainingError

    trainer = make_trainer(tmp_path, small_config(optim={"learning_rate": 1e-2}))
    with torch.no_grad():  # what an exploding update leaves behind
        trainer.parameters[0].fill_(float("inf"))
    with pytest.raises(TrainingError, match=r"non-finite values in trainable parameter 0 .*learning_rate=0.01"):
        trainer._check_finite(1, {"loss": float("nan")})
    with torch.no_grad():
        trainer.parameters[0].zero_()
    trainer._check_finite(1, {})  # finite weights pass
