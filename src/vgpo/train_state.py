"""The trainer's state: everything a checkpoint saves and ``--resume`` restores, as one object.

Checkpointing (`vgpo.checkpoint`) reads and writes a :class:`TrainState` and never sees the trainer, so imports
run one way: trainer -> checkpoint -> train_state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from vgpo.policy import FlowPolicy


class EMA:
    """Exponential moving average of the trainable weights, swapped in for evaluation. Element-wise, so on sharded
    weights each process averages its own shards."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.parameters = list(parameters)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self, decay: float | None = None) -> None:
        """shadow <- d shadow + (1 - d) parameter, d = ``decay`` or the fixed one."""
        d = self.decay if decay is None else decay
        for shadow, parameter in zip(self.shadow, self.parameters, strict=True):
            shadow.lerp_(parameter.detach(), 1.0 - d)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the model."""
        backup = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for parameter, shadow in zip(self.parameters, self.shadow, strict=True):
                parameter.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, saved in zip(self.parameters, backup, strict=True):
                    parameter.copy_(saved)

    def state_dict(self, policy: FlowPolicy) -> dict[str, torch.Tensor]:
        """The averaged weights under the policy's own trainable names (the keys of trainable.safetensors)."""
        with self.applied():
            return {name: tensor.detach().clone() for name, tensor in policy.trainable_state_dict().items()}

    @torch.no_grad()
    def load_state_dict(self, policy: FlowPolicy, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`: routed through the policy so that names, not order, decide."""
        backup = [p.detach().clone() for p in self.parameters]
        policy.load_trainable_state_dict(state)
        for shadow, parameter in zip(self.shadow, self.parameters, strict=True):
            shadow.copy_(parameter)
        for parameter, saved in zip(self.parameters, backup, strict=True):
            parameter.copy_(saved)


@dataclass
class TrainState:
    """What a run has learned so far. Every rank holds an identical copy (gradients are summed over ranks
    before each optimizer step), so the main process's copy is the one a checkpoint stores; or, when the weights
    are sharded (FSDP), its shard of every tensor, the whole ones gathered to the main process for a checkpoint.

    policy: its trainable weights (LoRA adapters or every weight) are the state; the frozen base is rebuilt
    from the config. optimizer: AdamW over exactly ``policy.trainable_parameters()``. ema: the averaged weights
    used for evaluation, or None. iteration: the last completed iteration (0 before training). sampling: the
    weights rollouts are drawn with when the method keeps its own sampling policy (DiffusionNFT's "old" policy, a
    soft-updated average of the trainable weights), or None: rollouts use the trainable weights.
    """

    policy: FlowPolicy
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    iteration: int = 0
    sampling: EMA | None = None

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters, in the optimizer's order."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]
