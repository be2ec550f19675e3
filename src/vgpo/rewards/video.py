"""Videos scored by an image reward: the mean over frames of the frame scores (what Flow-GRPO does for Wan with
PickScore). :func:`vgpo.rewards.checked_call` applies it to any reward given videos [N, F, 3, H, W], so every image
reward is also a video reward."""

from __future__ import annotations

from typing import Any

import torch

from vgpo.rewards import RewardFn


class FrameAveraged:
    """``reward`` on every frame of N videos [N, F, 3, H, W] (one call on the N * F frames, each with its video's
    prompt and metadata), averaged over frames: scores [N]."""

    def __init__(self, reward: RewardFn) -> None:
        self.reward = reward
        self.name = f"{getattr(reward, 'name', type(reward).__name__)} (mean over frames)"

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        """``images`` are videos [N, F, 3, H, W] here."""
        count, frames = images.shape[:2]
        frame_prompts = [prompt for prompt in prompts for _ in range(frames)]
        frame_metadata = [meta for meta in metadata for _ in range(frames)]
        scores = self.reward(images.flatten(0, 1), frame_prompts, frame_metadata)  # [N * F], video-major
        return torch.as_tensor(scores).float().reshape(count, frames).mean(dim=1)
