"""Rewards scored while sampling goes on: the same scores as scoring after sampling, bitwise, in order, with
bounded pending work and failures named."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from fakes import BrightnessReward, FakePolicy, FakeTask
from test_trainer import small_config
from vgpo.errors import RewardError
from vgpo.rewards.overlap import StepScorer
from vgpo.sampling import rollout, step_projections
from vgpo.trainer import Trainer


def test_rollout_hook_hands_over_each_steps_projection_bitwise() -> None:
    policy = FakePolicy()
    cond = policy.encode_prompts(["a", "b", "c"])
    received: list[tuple[int, torch.Tensor]] = []
    result = rollout(
        policy, cond, 5, generator=torch.Generator().manual_seed(0), on_projection=lambda t, x: received.append((t, x))
    )
    assert [t for t, _ in received] == [0, 1, 2, 3, 4]
    expected = step_projections(result)  # [N, T, C, H, W]
    for t, projection in received:
        assert torch.equal(projection, expected[:, t]), t
    assert torch.equal(received[-1][1], result.final)


@pytest.mark.parametrize("variant", ["vgpo", "flow_grpo"])
def test_overlapped_scores_equal_sequential_scores_exactly(tmp_path, variant: str) -> None:
    """The tiny model and the real scene checker: two workers and a small chunk size (many chunks in flight)."""
    from vgpo.models.tiny import TinyConfig, TinyFlowModel, tiny_policy
    from vgpo.rewards import build_reward
    from vgpo.tasks import get_task

    rewards = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        model = TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8))
        config = small_config(algorithm={"variant": variant}, task={"reward_workers": workers, "reward_batch_size": 3})
        task = get_task("compositional")
        trainer = Trainer(
            config, tmp_path / str(workers), policy=tiny_policy(model), task=task, reward=build_reward("compositional")
        )
        batch = trainer.sample(1)
        assert (batch.pending is None) == (workers == 0)
        scored = trainer.score(batch)
        rewards[workers] = scored.steps if scored.steps is not None else scored.terminal[:, None]
    assert rewards[0].shape == ((8, 4) if variant == "vgpo" else (8, 1))
    assert torch.equal(rewards[0], rewards[2])
    assert len(set(rewards[0].flatten().tolist())) > (
        4 if variant == "vgpo" else 2
    )  # varied scores: a reordering would show


def test_whole_iterations_match_with_and_without_overlap(tmp_path) -> None:
    records = []
    for workers in (0, 1):
        trainer = Trainer(
            small_config(task={"reward_workers": workers}),
            tmp_path / str(workers),
            policy=FakePolicy(),
            task=FakeTask(),
            reward=BrightnessReward(),
        )
        records.append([trainer.train_iteration(i) for i in (1, 2)])
    for a, b in zip(*records, strict=True):
        assert a["instant_reward_by_step"] == b["instant_reward_by_step"]
        assert a["loss"] == b["loss"]


def test_scores_come_back_in_order_whatever_order_they_finish_in() -> None:
    def slow_first(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        time.sleep(0.05 if metadata[0]["index"] == 0 else 0.0)  # the first chunk finishes last
        return torch.tensor([float(m["index"]) for m in metadata]) + images.flatten(1)[:, 0]

    n, steps = 6, 3
    scorer = StepScorer(
        slow_first, lambda x: x, [""] * n, [{"index": i} for i in range(n)], range(steps), batch_size=2, workers=3
    )
    for t in range(steps):
        scorer.submit(t, torch.full((n, 3, 2, 2), 10.0 * t))
    expected = torch.arange(n, dtype=torch.float32)[:, None] + 10.0 * torch.arange(steps)[None, :]
    assert torch.equal(scorer.result(), expected)


def test_pending_work_is_bounded() -> None:
    """With max_pending = 2 the sampler blocks at the third chunk until one is scored: never more in flight."""
    active, peak, lock = [0], [0], threading.Lock()
    gate = threading.Event()

    def reward(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        gate.wait(timeout=5)
        with lock:
            active[0] -= 1
        return torch.zeros(images.shape[0])

    scorer = StepScorer(reward, lambda x: x, ["p"] * 4, [{}] * 4, range(4), batch_size=4, workers=4, max_pending=2)
    scorer.submit(0, torch.zeros(4, 3, 2, 2))
    scorer.submit(1, torch.zeros(4, 3, 2, 2))
    blocked = threading.Thread(target=scorer.submit, args=(2, torch.zeros(4, 3, 2, 2)))
    blocked.start()
    blocked.join(timeout=0.2)
    assert blocked.is_alive(), "a third chunk was accepted while two were pending"
    gate.set()
    blocked.join(timeout=5)
    scorer.submit(3, torch.zeros(4, 3, 2, 2))
    assert scorer.result().shape == (4, 4)
    assert peak[0] <= 2


def test_a_failing_reward_is_named_with_its_step(tmp_path) -> None:
    def broken(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        if float(images.mean()) < 2.0:  # only some steps' images trip it
            raise ValueError("model exploded")
        return torch.zeros(images.shape[0])

    scorer = StepScorer(broken, lambda x: x, ["p"] * 2, [{}] * 2, range(2), name="my_reward")
    scorer.submit(0, torch.full((2, 3, 2, 2), 5.0))
    scorer.submit(1, torch.zeros(2, 3, 2, 2))
    with pytest.raises(RewardError, match=r"reward 'my_reward' failed on the images of step 1 .*model exploded"):
        scorer.result()

    # through the trainer, a NaN is reported with the reward's check, as without overlap
    def nan_reward(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        return torch.full((images.shape[0],), float("nan"))

    trainer = Trainer(small_config(), tmp_path, policy=FakePolicy(), task=FakeTask(), reward=nan_reward)
    with pytest.raises(RewardError, match="non-finite"):
        trainer.train_iteration(1)
