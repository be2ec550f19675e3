"""An analytic toy for method tests and the toy gym (`vgpo.experiments.toy_gym`): a flow whose exact velocity is known, a reward peaked at a target per prompt.

Per prompt c the data are x0 ~ N(mu_c, s^2 I) and the noise x1 ~ N(0, I) (independent); the straight path
x_sigma = (1 - sigma) x0 + sigma x1 (paper Eq. 1) has the exact marginal velocity E[x1 - x0 | x_sigma], which
:func:`exact_velocity` writes in closed form. The policy's only trainable weights are the means mu_c (one
``nn.Parameter`` row per prompt, starting at 0); the reference policy keeps the initial means. The reward of a
sample x0 is exp(-||x0 - target_c||^2 / width), largest at the prompt's target, so that any method that learns
moves mu_c towards target_c and raises the mean reward.

Latents are (3, 2, 2) so that ``decode`` can be an invertible elementwise map to [0, 1] images (a sigmoid) and the
reward reads x0 back exactly (a logit).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from vgpo.models.common import named_state
from vgpo.parallel.sharding import shard_like
from vgpo.rewards import register_reward
from vgpo.tasks import Evaluator, Task, register_evaluator
from vgpo.tasks.prompts import PromptItem

TOY_SHAPE = (3, 2, 2)
TOY_PROMPTS = [f"toy prompt {i}" for i in range(6)]
"""The first 4 train, the last 2 test."""
DATA_STD = 0.5
"""s: the standard deviation of the data around each prompt's mean."""
REWARD_WIDTH = 12.0
"""w in exp(-||x0 - target||^2 / w): one per latent element (3 * 2 * 2), so the reward is ~exp(-1) at s = 1 off."""


def toy_target(index: int) -> torch.Tensor:
    """The target x0 of prompt ``index`` [3, 2, 2]: +-0.6 in a pattern that differs between prompts."""
    signs = torch.tensor([1.0 if (index + element) % 3 else -1.0 for element in range(12)])
    return 0.6 * signs.reshape(TOY_SHAPE)


def exact_velocity(latents: torch.Tensor, sigma: torch.Tensor, mean: torch.Tensor, data_std: float) -> torch.Tensor:
    """E[x1 - x0 | x_sigma] for x0 ~ N(mean, s^2 I), x1 ~ N(0, I), x_sigma = (1 - sigma) x0 + sigma x1.

    Working (per element, all elements independent): (v, x_sigma) is jointly Gaussian with
        E[v] = -mean,                E[x_sigma] = (1 - sigma) mean,
        Var[x_sigma] = (1 - sigma)^2 s^2 + sigma^2 =: V,
        Cov[v, x_sigma] = Cov[x1 - x0, (1 - sigma) x0 + sigma x1] = sigma - (1 - sigma) s^2 =: K,
    so Gaussian conditioning gives E[v | x_sigma] = -mean + (K / V) (x_sigma - (1 - sigma) mean).
    Checks: sigma = 1 gives x - mean (V = K = 1); sigma = 0 gives -x (the noise has mean 0). V > 0 for s > 0.

    latents [N, C, H, W]; sigma [N]; mean [N, C, H, W] (each sample's prompt mean). Returns [N, C, H, W].
    """
    sigma = sigma.to(latents.dtype).reshape(-1, *([1] * (latents.ndim - 1)))
    variance = (1 - sigma) ** 2 * data_std**2 + sigma**2
    covariance = sigma - (1 - sigma) * data_std**2
    return -mean + covariance / variance * (latents - (1 - sigma) * mean)


class ToyMeans(nn.Module):
    """The trainable part of the toy: one mean per prompt [P, 3, 2, 2], initially 0."""

    def __init__(self, num_prompts: int) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.zeros(num_prompts, *TOY_SHAPE))


class ToyPolicy:
    """A FlowPolicy with the exact velocity of N(0, I) -> N(mu_c, s^2 I); mu_c are the trainable weights.

    ``encode_prompts`` maps a prompt of :data:`TOY_PROMPTS` to its row index; ``decode`` is a sigmoid.
    Counts its velocity calls like the fake policy.
    """

    def __init__(self, data_std: float = DATA_STD, prompts: Sequence[str] = TOY_PROMPTS) -> None:
        self.prompts = list(prompts)
        self.data_std = data_std
        self.model = ToyMeans(len(self.prompts))
        self.reference_model = ToyMeans(len(self.prompts))
        self.reference_model.requires_grad_(False)
        self.velocity_calls = 0
        self._active = self.model

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return TOY_SHAPE

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor([self.prompts.index(p) for p in prompts], dtype=torch.long)}

    def means_of(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The active policy's mean of each row's prompt [N, 3, 2, 2]."""
        return self._active.means.index_select(0, cond["index"])

    def velocity(self, latents, sigma, cond, guidance_scale=1.0):
        self.velocity_calls += 1
        mean = self.means_of(cond).to(latents.dtype)
        return exact_velocity(latents, sigma, mean, self.data_std)

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, num_steps + 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(latents.float())

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return iter([self.model.means])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return named_state(dict(self.model.named_parameters()))

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"means"}:
            raise ValueError(f"expected the key 'means', got {sorted(state)}")
        with torch.no_grad():
            self.model.means.copy_(shard_like(self.model.means, state["means"]))

    def shard_units(self) -> list[nn.Module]:
        return [self.model, self.reference_model]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        self._active = self.reference_model
        try:
            yield
        finally:
            self._active = self.model

    def fingerprint(self) -> str:
        return f"toy:{len(self.prompts)}"


def latents_of(images: torch.Tensor) -> torch.Tensor:
    """The inverse of :meth:`ToyPolicy.decode` (a logit), exact for |x| < ~15 in float32."""
    images = images.double().clamp(1e-12, 1 - 1e-12)
    return torch.log(images) - torch.log1p(-images)


class TargetReward:
    """exp(-||x0 - target_c||^2 / width) per image, x0 read back from the image; counts calls."""

    def __init__(self, width: float = REWARD_WIDTH) -> None:
        self.width = width
        self.calls = 0

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        self.calls += 1
        targets = torch.stack([toy_target(TOY_PROMPTS.index(p)) for p in prompts]).double()
        distance = (latents_of(images) - targets).pow(2).sum(dim=(1, 2, 3))
        return torch.exp(-distance / self.width).float()


@register_reward("toy_target")
def make_toy_target_reward(width: float = REWARD_WIDTH, **_: object) -> TargetReward:
    """The toy task's reward, registered so that configs can name it."""
    return TargetReward(width)


@register_evaluator("toy_target")
def make_toy_target_evaluator(**_: object) -> Evaluator:
    """score = mean reward; accuracy = share of samples with reward > exp(-1)."""
    reward = TargetReward()

    def evaluate(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, float]:
        scores = reward(images, prompts, metadata)
        hits = (scores > math.exp(-1)).float()
        return {"accuracy": float(hits.mean()), "accuracy/all": float(hits.mean()), "score": float(scores.mean())}

    return evaluate


class ToyPrompts:
    """The toy's prompts: the first 4 train, the last 2 test."""

    def prompts(self, split: str) -> list[PromptItem]:
        chosen = TOY_PROMPTS[:4] if split == "train" else TOY_PROMPTS[4:]
        return [PromptItem(p, {"category": "all"}) for p in chosen]


def ToyTask() -> Task:  # noqa: N802 - reads like a class
    """A task of the toy prompts, the target reward and its evaluator."""
    return Task("toy", ToyPrompts(), "toy_target", "toy_target")


def expected_reward(policy: ToyPolicy, prompts: Sequence[int] = range(4)) -> float:
    """E[exp(-||x0 - target||^2 / w)] for x0 ~ N(mu_c, s^2 I), averaged over ``prompts`` (default: the train
    prompts), in closed form: per element, E[exp(-(x - t)^2 / w)] for x ~ N(mu, s^2) is
    (1 + 2 s^2 / w)^(-1/2) exp(-(mu - t)^2 / (w + 2 s^2)) (the Gaussian integral of two Gaussians), and the
    elements are independent, so the product over them. This is the policy's expected reward in the limit of
    many ODE steps, with no sampling error: the toy gym's score."""
    mean = policy.model.means.detach()[list(prompts)].double()
    target = torch.stack([toy_target(i) for i in prompts]).double()
    per_element = (1 + 2 * policy.data_std**2 / REWARD_WIDTH) ** -0.5 * torch.exp(
        -((mean - target) ** 2) / (REWARD_WIDTH + 2 * policy.data_std**2)
    )
    return float(per_element.flatten(1).prod(dim=1).mean())
