"""Small stand-ins for trainer tests: a linear flow policy, a prompt task and a brightness reward.

They implement the same interfaces as the real adapters (vgpo.policy.FlowPolicy, vgpo.tasks.Task,
vgpo.rewards.RewardFn) at a size where a whole training iteration takes milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from vgpo.models.common import named_state
from vgpo.parallel.sharding import shard_like
from vgpo.rewards import register_reward
from vgpo.tasks import Evaluator, Task, register_evaluator
from vgpo.tasks.prompts import PromptItem

PROMPTS = [f"prompt number {i}" for i in range(12)]


class LinearVelocity(nn.Module):
    def __init__(self, channels: int = 3, side: int = 8, text_dim: int = 8) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels, channels, 1)
        self.text = nn.Linear(text_dim, channels)
        self.time = nn.Linear(1, channels)
        self.frozen_bias = nn.Parameter(torch.zeros(channels), requires_grad=False)  # never trained

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        shift = self.text(text) + self.time(sigma[:, None]) + self.frozen_bias
        return self.mix(x) + shift[:, :, None, None]


class FakePolicy:
    """A FlowPolicy whose velocity is a 1x1 convolution plus prompt and time shifts; counts its calls."""

    def __init__(self, seed: int = 0, side: int = 8) -> None:
        torch.manual_seed(seed)
        self.model = LinearVelocity(side=side)
        self.reference_model = LinearVelocity(side=side)
        self.reference_model.load_state_dict(self.model.state_dict())
        self.reference_model.requires_grad_(False)
        self.side = side
        self.velocity_calls = 0
        self.decode_calls = 0
        self._active = self.model

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (3, self.side, self.side)

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        rows = []
        for prompt in prompts:
            digest = hashlib.sha256(prompt.encode()).digest()
            rows.append(torch.tensor([b / 255.0 - 0.5 for b in digest[:8]]))
        return {"text": torch.stack(rows)}

    def velocity(self, latents, sigma, cond, guidance_scale=1.0):
        self.velocity_calls += 1
        return self._active(latents, sigma, cond["text"])

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, num_steps + 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.decode_calls += 1
        return ((latents.float() + 1) / 2).clamp(0, 1)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return named_state({k: v for k, v in self.model.named_parameters() if v.requires_grad})

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {k for k, v in self.model.named_parameters() if v.requires_grad} - set(state)
        if missing:
            raise ValueError(f"missing keys {sorted(missing)}")
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                if name in state:
                    parameter.copy_(shard_like(parameter, state[name]))

    def shard_units(self) -> list[nn.Module]:
        """The text projection as the "block", then the model (with a frozen weight), and the reference copy."""
        return [self.model.text, self.model, self.reference_model.text, self.reference_model]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        self._active = self.reference_model
        try:
            yield
        finally:
            self._active = self.model

    def fingerprint(self) -> str:
        return f"fake:{self.side}"


class FakePrompts:
    """Prompts without structure: the first 8 train, the last 4 test."""

    def prompts(self, split: str) -> list[PromptItem]:
        chosen = PROMPTS[:8] if split == "train" else PROMPTS[8:]
        return [PromptItem(p, {"category": "all"}) for p in chosen]


@register_evaluator("brightness")
def make_brightness_evaluator(**_: object) -> Evaluator:
    """Accuracy = share of images brighter than 0.5; score = mean brightness (the brightness reward's mean)."""

    def evaluate(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, float]:
        bright = (images.mean(dim=(1, 2, 3)) > 0.5).float()
        return {"accuracy": float(bright.mean()), "accuracy/all": float(bright.mean()), "score": float(images.mean())}

    return evaluate


def FakeTask() -> Task:  # noqa: N802 - reads like the class it used to be
    """A task of fake prompts, the brightness reward and the brightness evaluator."""
    return Task("fake", FakePrompts(), "brightness", "brightness")


class BrightnessReward:
    """Mean pixel value of each image (times ``scale``); counts calls and images scored."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.calls = 0
        self.images = 0

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        self.calls += 1
        self.images += len(images)
        return self.scale * images.float().mean(dim=(1, 2, 3))


@register_reward("brightness")
def make_brightness_reward(scale: float = 1.0, **_: object) -> BrightnessReward:
    """FakeTask's own reward, registered so that configs can name it (and pass ``scale``)."""
    return BrightnessReward(scale)
