"""The first PPO ratio of every update is exactly 1 (nothing has changed since the rollout), in fp32 and in bf16,
on the tiny random SD3 pipeline: the old log-prob of the first optimizer step comes from the update's own
computation. The rollout's log-probs come from other batch shapes; ``rollout_log_prob_gap`` shows by how much.
Seen on this CPU (torch 2.13): 2.4e-7 in fp32 and 0.0 in bf16 (bf16 rounding hides the difference on these tiny
CPU kernels; the ~1.5e-4 reported for bf16 in issue 11 was not reproduced here, no GPU was at hand)."""

import os
from pathlib import Path

import pytest
import torch

from fixtures_sd3 import TINY_RESOLUTION, TOKEN_LENGTH, build_tiny_sd3_pipeline
from vgpo.config import config_from_dict
from vgpo.models.sd3 import load_sd3_policy
from vgpo.tasks import get_task
from vgpo.trainer import Trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd3")
    build_tiny_sd3_pipeline(folder)
    return folder


def redness(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
    """A toy reward with spread inside every group, [N]."""
    return (images[:, 0] - images[:, 2]).mean(dim=(1, 2))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_first_ratio_is_exactly_one(tiny_sd3: Path, tmp_path: Path, dtype: str) -> None:
    torch.manual_seed(0)
    policy = load_sd3_policy(
        tiny_sd3, dtype=dtype, device="cpu", resolution=TINY_RESOLUTION, max_sequence_length=TOKEN_LENGTH,
        lora_rank=4, lora_alpha=8, gradient_checkpointing=False,
    )  # fmt: skip
    config = config_from_dict(
        {
            "model": {"kind": "sd3", "lora_rank": 4, "lora_alpha": 8, "resolution": TINY_RESOLUTION, "dtype": dtype},
            # micro-batches of 3 over 8 samples at mixed steps: shapes unlike the rollout's [8] (x 2 for CFG)
            "sampling": {"num_steps": 3, "guidance_scale": 4.5, "group_size": 4, "prompts_per_iteration": 2},
            "algorithm": {"variant": "vgpo", "clip_range": 1e-4},
            "optim": {"micro_batch_size": 3, "steps_per_epoch": 2},
            "run": {"iterations": 1, "progress": False, "tensorboard": False},
        }
    )
    trainer = Trainer(config, tmp_path, policy=policy, task=get_task("compositional"), reward=redness)
    with torch.no_grad():  # a policy some way into training: the adapters no longer a no-op
        for name, parameter in policy.denoiser.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    batch = trainer.sample(1)
    credit = trainer.advantages(trainer.score(batch))
    stats = trainer.update(batch, credit, 1)
    print(dtype, "rollout_log_prob_gap", stats["rollout_log_prob_gap"])
    assert stats["first_ratio_error"] == 0.0
    if dtype == "fp32":  # the rollout's kernels are not the update's: with its log-probs the ratio would not be 1
        assert stats["rollout_log_prob_gap"] > 0.0
