"""The process group behind one small interface: rank, world size, gathers, reductions and a barrier.

The trainer talks only to a :class:`ProcessGroup`. One process (``vgpo train`` or ``python -m vgpo train``) is
the N = 1 case of the same code: every method is then the identity or a no-op, so there is no second path.
``accelerate launch -m vgpo train ...`` starts N processes on one or several nodes; `accelerate`'s
``PartialState`` reads the launcher's environment and opens the torch.distributed group (NCCL on GPUs, gloo
on CPUs) under this interface. Full fine-tuning launched with FSDP (``accelerate launch --use_fsdp``) shards the
policy over the processes (`vgpo.parallel.sharding`, applied by the trainer through :meth:`ProcessGroup.shard`).

Small Python objects (metric dicts) travel as JSON bytes in a uint8 tensor, never pickled: ranks of a
multi-node job talk over the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import torch

from vgpo.errors import ConfigError

COLLECTIVE_TIMEOUT = timedelta(hours=2)
"""How long a rank waits at a collective before torch.distributed gives up. Evaluation runs on the main process
while the others wait at a barrier (see Trainer.evaluate), which on SD3.5 can last far beyond torch's default
10 minutes."""


class ProcessGroup:
    """The ranks of one training job (world_size 1 when not launched by a distributed launcher).

    ``cpu=True`` forces CPU devices and the gloo backend (``accelerate launch --cpu`` sets ACCELERATE_USE_CPU).
    ``shard`` asks for sharded full fine-tuning (FSDP2, `vgpo.parallel.sharding`); None reads it from the launcher
    (``accelerate launch --use_fsdp`` or a config file with ``distributed_type: FSDP`` set ACCELERATE_USE_FSDP).
    DeepSpeed is refused: FSDP is the sharded engine vgpo implements.
    """

    def __init__(self, cpu: bool = False, shard: bool | None = None) -> None:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
            raise ConfigError(
                "this launch asks for DeepSpeed, which vgpo does not implement: for sharded full fine-tuning "
                "launch with FSDP (configs/accelerate/1node_8gpu_fsdp.yaml or accelerate launch --use_fsdp), for "
                "LoRA with a DDP config such as configs/accelerate/1node_8gpu.yaml (see docs/distributed.md)"
            )
        self.shard_requested = parse_flag_from_env("ACCELERATE_USE_FSDP") if shard is None else shard
        """Whether the launch asked for sharded full fine-tuning (the trainer decides whether it applies)."""

        use_cpu = cpu or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self._state = PartialState(cpu=use_cpu, **({"timeout": COLLECTIVE_TIMEOUT} if distributed else {}))
        self._cpu = use_cpu

    @property
    def rank(self) -> int:
        """This process's index among all processes of all nodes, 0 .. world_size - 1."""
        return int(self._state.process_index)

    @property
    def world_size(self) -> int:
        """Number of processes in the job (1 for a plain run)."""
        return int(self._state.num_processes)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only process that writes files and prints progress."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this rank computes on: cuda:<local rank> under a GPU launch, else CPU or the default."""
        return torch.device("cpu") if self._cpu else torch.device(self._state.device)

    @property
    def communication_device(self) -> torch.device:
        """Where tensors must be for a collective: CUDA for NCCL, CPU for gloo."""
        return self.device if self.world_size > 1 and self.device.type == "cuda" else torch.device("cpu")

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's ``tensor`` [M, ...] along dim 0 in rank order -> [world_size * M, ...] on every
        rank (every rank must pass the same shape). The tensor itself when world_size is 1."""
        if self.world_size == 1:
            return tensor
        local = tensor.detach().to(self.communication_device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        return torch.cat(parts, dim=0).to(tensor.device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over ranks, on every rank (the tensor itself for one process)."""
        if self.world_size == 1:
            return tensor
        total = tensor.detach().to(self.communication_device).clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total.to(tensor.device)

    def shard(self, modules: Sequence[torch.nn.Module]) -> None:
        """Shard ``modules`` (in wrapping order: blocks before the models that hold them) over all processes with
        FSDP2, gradients summed over processes like :meth:`sum_gradients` (see `vgpo.parallel.sharding`)."""
        from vgpo.parallel.sharding import shard_modules

        shard_modules(modules, self.device, self.world_size)

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over ranks (a missing gradient counts as zeros).

        This is DDP's gradient all-reduce done once per optimizer step, on one flat buffer: the trainer scales
        each rank's loss by its share of the *global* batch, so the sum is the one-process gradient. It leaves
        the model unwrapped, so the adapters, the reference context and the EMA see plain modules.
        """
        if self.world_size == 1:
            return
        parameters = list(parameters)
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        flat = torch.cat([p.grad.reshape(-1).float() for p in parameters if p.grad is not None])
        flat = self.all_reduce_sum(flat)
        offset = 0
        for parameter in parameters:
            grad = parameter.grad
            assert grad is not None
            size = grad.numel()
            grad.copy_(flat[offset : offset + size].view_as(grad).to(grad.device, grad.dtype))
            offset += size

    def gather_objects(self, value: Any) -> list[Any]:
        """Each rank's JSON-serialisable ``value``, in rank order, on every rank (``[value]`` for one process)."""
        if self.world_size == 1:
            return [value]
        payload = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)
        sizes = self.gather(torch.tensor([payload.numel()], dtype=torch.int64))
        padded = torch.zeros(int(sizes.max()), dtype=torch.uint8)
        padded[: payload.numel()] = payload
        gathered = self.gather(padded[None]).cpu()  # [world_size, longest]
        return [
            json.loads(bytes(row[: int(size)].tolist()).decode()) for row, size in zip(gathered, sizes, strict=True)
        ]

    def broadcast_object(self, value: Any) -> Any:
        """The main process's JSON-serialisable ``value`` on every rank (others pass anything, e.g. None)."""
        return self.gather_objects(value if self.is_main else None)[0]

    def barrier(self) -> None:
        """Wait until every rank arrives (a no-op for one process)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Destroy the torch.distributed group at the end of a job (a no-op for one process), so that no rank
        exits with gloo's or NCCL's threads still running (gloo then aborts a rank: SIGABRT, "terminate called
        without an active exception"). No collective may follow."""
        if self.world_size > 1:
            self._state.destroy_process_group()
