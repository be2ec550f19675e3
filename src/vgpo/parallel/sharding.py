"""Sharded full fine-tuning with torch FSDP2 (``torch.distributed.fsdp.fully_shard``), and the full tensors that
checkpoints hold whatever the sharding.

Under sharding each of the P processes keeps 1/P of every trainable weight, of its gradient, of AdamW's moments and
of the EMA, and 1/P of the frozen reference copy; a transformer block's weights are all-gathered just before its
forward (and backward) and freed right after. The wrapping units come from the policy
(:meth:`vgpo.policy.FlowPolicy.shard_units`): every block, then the models that hold them.

Gradients are **summed** over processes by FSDP's reduce-scatter, not averaged (FSDP's default): the trainer
scales each process's loss by its share of the global batch, so the sum is the one-process gradient, exactly as
:meth:`vgpo.parallel.distributed.ProcessGroup.sum_gradients` makes it on the replicated path.

Checkpoints hold full tensors under the policy's own names (the same files as one process writes), so a sharded
run resumes on any number of processes, or on one. :func:`full_tensors` gathers them (a collective: every process
calls it) and keeps them on rank 0 only, as ``torch.distributed.checkpoint.state_dict``'s ``full_state_dict=True,
cpu_offload=True`` does; :func:`shard_like` cuts a process's shard out of a full tensor read from a file.
One process never holds a DTensor: every function here is then the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


def shard_modules(units: Sequence[nn.Module], device: torch.device, world_size: int) -> None:
    """Wrap each of ``units`` with FSDP2 over all ``world_size`` processes, in the order given (every block before
    the model that holds it); the process group must be open. Afterwards their parameters are DTensors sharded
    along dim 0.

    Every unit frees its gathered weights after each forward, the root too (FSDP keeps the root's gathered for the
    backward that usually follows): evaluation swaps EMA weights into the shards between forwards without grad,
    and a gathered root would keep computing with stale weights.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for unit in units:
        module = fully_shard(unit, mesh=mesh, reshard_after_forward=True)
        assert isinstance(module, FSDPModule)
        # Sum, do not average, over processes (see the module docstring); with sum-only collectives, which gloo
        # needs (it has no PREMUL_SUM) and NCCL runs without a scaling kernel when the factor is 1.
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)


IGNORED_LAUNCHER_SETTINGS = {
    "FSDP_VERSION": ("1", "fsdp_version 1 (vgpo shards with FSDP2 whatever the version asked)"),
    "FSDP_OFFLOAD_PARAMS": ("true", "fsdp_offload_params (weights stay on the GPU)"),
    "FSDP_ACTIVATION_CHECKPOINTING": (
        "true",
        "fsdp_activation_checkpointing (use model.gradient_checkpointing, which SD3 turns on by default)",
    ),
    "FSDP_RESHARD_AFTER_FORWARD": ("false", "fsdp_reshard_after_forward false (every unit reshards after forward)"),
}
"""accelerate's FSDP settings (environment variables its launcher sets from the config file) that vgpo does not
follow, with the value that would mean something else than what vgpo does: vgpo wraps the policy itself
(:func:`shard_modules`) instead of through ``Accelerator.prepare``."""


def ignored_launcher_settings(environ: dict[str, str]) -> list[str]:
    """The accelerate FSDP settings in ``environ`` that ask for something vgpo's sharding does not do."""
    return [what for name, (value, what) in IGNORED_LAUNCHER_SETTINGS.items() if environ.get(name, "").lower() == value]


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is one process's shard of a larger tensor (a DTensor)."""
    return isinstance(tensor, DTensor)


def full_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of ``state``'s tensors, sharded ones gathered whole.

    Every process must call it when any tensor is sharded (each gather is a collective, in the dict's order);
    the gathered tensors are kept on rank 0 only and left out on the others, so that P processes do not each
    hold a full copy of the model in host memory. Unsharded tensors are copied on every process.
    """
    keep = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    result: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if isinstance(tensor, DTensor):
            full = tensor.full_tensor().detach()
            if keep:
                result[name] = full.to("cpu").contiguous()
        else:
            result[name] = tensor.detach().to("cpu").clone().contiguous()
    return result


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` whole: a sharded one gathered (a collective: every process calls it), any other as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(reference: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """This process's shard of ``full`` laid out as ``reference`` (a DTensor), or ``full`` itself when
    ``reference`` is not sharded. Every process holds ``full`` (each reads the checkpoint), so nothing is sent."""
    if not isinstance(reference, DTensor):
        return full
    local = full.to(reference.device, reference.dtype)
    return distribute_tensor(local, reference.device_mesh, reference.placements, src_data_rank=None)
