"""The update driver shared by every objective: which samples and slots each optimizer step trains, gradient
accumulation over micro-batches, the gradient all-reduce over processes, FSDP's padding, the optimizer step, the
EMA, and the reduction of the objective's statistics over the global batch.

The sample order, the slots and the optimizer steps' shares are drawn over the global batch, the same on every
process; each process trains the samples of each share that it holds, each term weighted by its share of the
global share, and the gradients are summed over processes before the step. The gradient is therefore the
one-process gradient of the same global batch (up to the order of floating-point sums), and every process takes
the same optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vgpo.methods.objectives import Objective, StepModel, UpdateBatch
from vgpo.parallel.distributed import ProcessGroup
from vgpo.parallel.sharding import whole
from vgpo.train_state import TrainState


@dataclass(frozen=True)
class UpdateSchedule:
    """How an iteration's samples are cut into optimizer steps and micro-batches."""

    inner_epochs: int
    steps_per_epoch: int
    micro_batch_size: int
    max_grad_norm: float | None


def run_update(
    objective: Objective,
    model: StepModel,
    batch: UpdateBatch,
    state: TrainState,
    group: ProcessGroup,
    schedule: UpdateSchedule,
    generator: torch.Generator,
    sharded: bool = False,
) -> dict[str, float]:
    """Train the policy on this iteration's batch; returns the objective's statistics over the global batch,
    the first optimizer step's maxima, and the mean gradient norm."""
    local = batch.rollout.latents.shape[0]
    total, offset = batch.total, batch.offset
    # every process reduces the same named statistics, also one that trained no sample of its own
    sums = dict.fromkeys(objective.stat_names, 0.0)  # sample-weighted sums (float64, in the terms' order)
    weight = 0.0
    first_step_maxima = dict.fromkeys(objective.first_step_names, 0.0)
    grad_norms = []
    on_policy = True  # the policy has not moved since the rollout
    for _ in range(schedule.inner_epochs):
        slots = objective.draw_slots(batch.plan, total, generator)  # [N, K]
        per_sample = slots.shape[1]
        sample_order = torch.randperm(total, generator=generator)  # [N] global sample indices
        for share in sample_order.tensor_split(schedule.steps_per_epoch):
            state.optimizer.zero_grad(set_to_none=True)
            mine = share[(share >= offset) & (share < offset + local)]  # global indices held here, in order
            chunks = list(mine.split(schedule.micro_batch_size))
            trained_chunks = len(chunks)
            if sharded:
                # Each forward and backward gathers / reduces the sharded weights, a collective, so every process
                # runs as many as the busiest one: the extra chunks re-run this process's first sample with weight
                # zero (they add nothing to the gradient or the statistics).
                busiest = int(torch.bincount(share // local, minlength=group.world_size).max())
                chunks += [torch.tensor([offset])] * (-(-busiest // schedule.micro_batch_size) - trained_chunks)
            for chunk_index, chunk_global in enumerate(chunks):
                counted = chunk_index < trained_chunks
                rows = chunk_global - offset  # rows of this process's batch
                for j in range(per_sample):
                    term = objective.term(model, batch, rows, slots[chunk_global, j], on_policy)
                    # each (chunk, slot) term weighs by its share of the GLOBAL share's samples x slots
                    (term.loss * (len(rows) / (len(share) * per_sample) if counted else 0.0)).backward()
                    if not counted:
                        continue
                    for name, value in term.stats.items():
                        number = float(value.detach() if isinstance(value, torch.Tensor) else value)
                        sums[name] += number * len(rows)
                    weight += len(rows)
                    for name, value in term.first_step.items():
                        first_step_maxima[name] = max(first_step_maxima[name], value)
            if not sharded:  # (sharded: FSDP's reduce-scatter has summed them during backward)
                group.sum_gradients(state.parameters)  # DDP's all-reduce: the one-process gradient
            if schedule.max_grad_norm is not None:
                # the norm of the whole gradient, also over shards (each process then holds it as a DTensor)
                norm = torch.nn.utils.clip_grad_norm_(state.parameters, schedule.max_grad_norm)
                grad_norms.append(float(whole(norm)))
            state.optimizer.step()
            on_policy = False
            if state.ema is not None:
                state.ema.update()
    names = list(sums)
    totals = torch.tensor([*(sums[name] for name in names), weight], dtype=torch.float64)
    totals = group.all_reduce_sum(totals)  # the statistics of the global batch
    out = {name: float(totals[index] / max(float(totals[-1]), 1.0)) for index, name in enumerate(names)}
    if first_step_maxima:
        maxima = torch.tensor([list(first_step_maxima.values())], dtype=torch.float64)
        maxima = group.gather(maxima).amax(dim=0)  # the max over processes
        out.update({name: float(maxima[index]) for index, name in enumerate(first_step_maxima)})
    if grad_norms:
        out["grad_norm"] = sum(grad_norms) / len(grad_norms)
    return out
