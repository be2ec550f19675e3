"""The training loop of VGPO and Flow-GRPO: the paper's Algorithm 1, one loop for every variant.

Each iteration runs named, timed phases:
    sample    -> B prompts x G SDE rollouts with per-step log-probs (Alg. 1 lines 3-9)
    reward    -> instant rewards of every step's one-step projection (TCRM, Eq. 9-10; lines 10)
                 or the terminal reward only (Flow-GRPO)
    advantage -> values, weights and advantages (Eq. 11, 12, 14 or Eq. 4; lines 12-14)
    update    -> PPO-clipped objective with optional KL (Eq. 5-6; line 17)
    evaluate  -> ODE sampling of the test prompts: task accuracy, image quality, diversity
    checkpoint-> atomic checkpoint, so that `vgpo train --resume RUN_DIR` continues where it stopped

Variants differ only in how `compute_advantages` turns rewards into per-step advantages:
    flow_grpo  A_t = GRPO(r(x0))                        (terminal reward, the same for every step)
    tcrm_only  A_t = omega_t * GRPO_t(Q_t)              (TCRM values and weights, k = 0)
    adae_only  A_t = ADAE_t(r(x0))                      (ADAE on the terminal reward, no TCRM)
    vgpo       A_t = ADAE_t(Q_t) with omega_t           (TCRM + ADAE)

Randomness is derived from (seed, iteration) alone, so a run killed after iteration k and resumed from its
checkpoint draws exactly what the uninterrupted run would have drawn.

One loop for one process and for N (``accelerate launch -m vgpo train``), through `vgpo.distributed`:
    - the global batch is B = sampling.prompts_per_iteration prompts x G; rank r holds the whole groups of prompt
      slots [r * B / N, (r + 1) * B / N), so group statistics are computed from complete groups;
    - prompt order comes from (seed, iteration) and each slot's initial and SDE noise from (seed, iteration, slot),
      so N processes draw the same global batch as one process, sample for sample;
    - rewards are gathered, advantages and metrics computed on the global batch (every rank, identically);
    - the update walks the same global sample and step order on every rank; each rank's loss is scaled by its
      share of the global batch and gradients are summed over ranks, which is the one-process gradient;
    - evaluation, logs, reports and checkpoints belong to the main process.
Full fine-tuning launched with FSDP (``accelerate launch --use_fsdp``) shards the policy over the ranks
(`vgpo.sharding`): FSDP's reduce-scatter sums the gradients, every rank runs as many forwards as the busiest one
and evaluates too (each forward gathers the sharded weights, a collective), and checkpoints gather whole tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from vgpo import checkpoint as ckpt
from vgpo.builders import (
    build_policy,
    build_task,
    build_task_evaluator,
    build_task_reward,
    reward_is_task_score,
    task_prompts,
)
from vgpo.config import AlgorithmConfig, TrainConfig, save_config
from vgpo.distributed import ProcessGroup
from vgpo.errors import ConfigError
from vgpo.evaluation import evaluate_policy
from vgpo.math import (
    adae_advantages,
    calibrate_instant_rewards,
    clipped_policy_loss,
    discounted_values,
    gaussian_mean_kl,
    grpo_advantages,
    sde_step,
    value_weights,
)
from vgpo.policy import Conditioning, FlowPolicy, select_rows
from vgpo.rewards import RewardFn, checked_call
from vgpo.rewards.overlap import StepScorer
from vgpo.sampling import Rollout, rollout, step_projections
from vgpo.sharding import ignored_launcher_settings, whole
from vgpo.tasks import Task
from vgpo.tasks.prompts import PromptItem
from vgpo.train_state import EMA, TrainState

TCRM_VARIANTS = ("vgpo", "tcrm_only")


# ----------------------------------------------------------------------------------------------------------
# Advantages: the only place the variants differ.


@dataclass
class AdvantageResult:
    """advantages [N, T]; values Q [N, T] (the terminal reward broadcast when TCRM is off); weights [N, T];
    calibration_slopes [T] when TCRM's instant rewards were calibrated, else None."""

    advantages: torch.Tensor
    values: torch.Tensor
    weights: torch.Tensor
    calibration_slopes: torch.Tensor | None = None


def compute_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, algorithm: AlgorithmConfig) -> AdvantageResult:
    """Per-step advantages of every variant.

    rewards: instant rewards R [N, T] in generation order (TCRM variants) or terminal rewards [N, T] whose
    columns all equal r(x0) (the others; only the last column is read). group_ids [N].
    """
    variant = algorithm.variant
    steps = rewards.shape[1]
    slopes = None
    if variant in TCRM_VARIANTS:
        if algorithm.instant_reward == "calibrated":
            rewards, slopes = calibrate_instant_rewards(rewards, group_ids)
        values = discounted_values(rewards, algorithm.gamma)  # Eq. 11
        weights = value_weights(values)  # Eq. 12
    else:
        values = rewards[:, -1:].expand(-1, steps)  # A_t = A(x0) for every step (Eq. 8)
        weights = torch.ones_like(values)
    if variant == "flow_grpo":
        terminal = grpo_advantages(values[:, -1], group_ids, std_scope=algorithm.std_scope)  # Eq. 4
        advantages = terminal[:, None].expand(-1, steps)
    elif variant == "tcrm_only":
        advantages = weights * grpo_advantages(values, group_ids, std_scope=algorithm.std_scope)  # Eq. 13 x omega
    elif variant in ("vgpo", "adae_only"):
        advantages = adae_advantages(  # Eq. 14
            values,
            group_ids,
            k=algorithm.k,
            weights=weights if variant == "vgpo" else None,
            absolute_steps=algorithm.absolute_steps,
        )
    else:
        raise ConfigError(f"unknown algorithm.variant {variant!r}")
    return AdvantageResult(advantages.contiguous(), values.contiguous(), weights.contiguous(), slopes)


# ----------------------------------------------------------------------------------------------------------
# Small pieces of the loop.


class PhaseTimer:
    """Wall-clock seconds per named phase of one iteration.

    On a CUDA device the kernels a phase queued may still run after its Python code returns; ``device`` (CUDA)
    makes each phase wait for them, so their time is counted in the phase that queued them, not the next one.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.device = device if device is not None and device.type == "cuda" else None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None:
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def iteration_generator(seed: int, iteration: int, stream: int) -> torch.Generator:
    """A CPU generator that depends on (seed, iteration, stream) only: resumable randomness."""
    return torch.Generator().manual_seed((seed * 1_000_003 + iteration) * 16 + stream)


def slot_generator(seed: int, iteration: int, slot: int) -> torch.Generator:
    """The generator of one prompt slot's noise (its group's x_T and SDE eps): it depends on (seed, iteration,
    slot) only, not on which process holds the slot, so N processes draw what one process draws."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + iteration) * 16 + 1) * 1_000_003 + slot)


@dataclass
class IterationBatch:
    """What one iteration's update needs: this process's share of the global batch.

    N = B * G samples in the global batch; this process holds rows [offset, offset + N_local) of it, whole groups.
    """

    rollout: Rollout
    cond: Conditioning  # N_local rows
    group_ids: torch.Tensor  # [N_local], 0-based within this process
    items: list[PromptItem]  # N_local
    offset: int = 0  # global index of this process's first sample
    global_samples: int = 0  # N (0: this process holds the whole batch)
    rewards: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [N_local, T]
    pending_rewards: StepScorer | None = None  # the rewards being scored while sampling went on
    advantages: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [N_local, T]

    @property
    def total(self) -> int:
        """N, the number of samples in the global batch."""
        return self.global_samples or len(self.items)


# ----------------------------------------------------------------------------------------------------------
# The trainer.


class Trainer:
    """Algorithm 1 over a policy, a task's prompts and a reward, as configured, on one process or N."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        policy: FlowPolicy | None = None,
        task: Task | None = None,
        reward: RewardFn | None = None,
        group: ProcessGroup | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.group = group if group is not None else ProcessGroup(cpu=config.model.device == "cpu")
        world = self.group.world_size
        if config.run.num_threads is not None:  # again: accelerate sets its own thread count on CPU launches
            torch.set_num_threads(config.run.num_threads)
        if config.sampling.prompts_per_iteration % world != 0:
            raise ConfigError(
                f"sampling.prompts_per_iteration={config.sampling.prompts_per_iteration} is the global number of "
                f"prompts per iteration and must divide by the {world} processes (whole groups live on one "
                f"process); make it a multiple of {world}"
            )
        if config.run.deterministic:
            use_deterministic_algorithms()
        # Every random initialisation (LoRA's A matrices draw from the global RNG) comes from run.seed, on every
        # process: without it two runs of one config start from different adapters and never repeat, and the
        # ranks of one job would hold different weights.
        set_seed(config.run.seed)
        # cheap checks first: a bad task, reward or prompt file fails before a model is loaded
        self.task = task if task is not None else build_task(config.task)
        self.reward = reward if reward is not None else build_task_reward(config.task, self.task)
        self.evaluator = build_task_evaluator(config.task, self.task)
        # evaluation re-uses the task's own score instead of calling the same reward model again
        own_reward = reward is None and reward_is_task_score(config.task, self.task)
        self.eval_reward: RewardFn | None = None if own_reward else self.reward
        self.train_items = task_prompts(config.task, self.task, "train")
        test_items = task_prompts(config.task, self.task, "test")
        limit = config.sampling.eval_max_prompts
        self.test_items = test_items[:limit] if limit is not None else test_items
        if policy is None:
            model = config.model
            if world > 1 and model.device == "auto":  # one device per process: cuda:<local rank> (or CPU)
                model = dataclasses.replace(model, device=str(self.group.device))
            policy = build_policy(model)
        self.sharded = self._sharding_applies()
        """Whether the policy is sharded over the processes (FSDP2) rather than held whole by each."""
        if self.sharded:  # before the optimizer and the EMA, which then hold shards
            self.group.shard(policy.shard_units())
        parameters = list(policy.trainable_parameters())
        if not parameters:
            raise ConfigError("the policy has no trainable parameters; check model.lora_rank / the adapter")
        o = config.optim
        optimizer = torch.optim.AdamW(parameters, lr=o.learning_rate, weight_decay=o.weight_decay, betas=o.adam_betas)
        ema = EMA(parameters, o.ema_decay) if o.ema_decay is not None else None
        self.state = TrainState(policy=policy, optimizer=optimizer, ema=ema)
        self.loggers: list[Callable[[dict[str, Any]], None]] = []

    def _sharding_applies(self) -> bool:
        """Shard when the launch asks for FSDP, on several processes, for full fine-tuning. LoRA's trainable weights
        are small, so a LoRA run launched with FSDP runs replicated (DDP-style), with a warning saying so."""
        if not self.group.shard_requested or self.group.world_size == 1:
            return False
        if self.config.model.lora_rank is not None:
            if self.group.is_main:
                warnings.warn(
                    "this launch asks for FSDP, which vgpo uses for full fine-tuning only (model.lora_rank: null); "
                    f"with LoRA (rank {self.config.model.lora_rank}) every process holds the whole model and the "
                    "gradients of the adapters are summed over processes, as under configs/accelerate/1node_8gpu.yaml",
                    stacklevel=3,
                )
            return False
        ignored = ignored_launcher_settings(dict(os.environ))
        if ignored and self.group.is_main:
            warnings.warn(f"vgpo does not follow these FSDP settings of the launch: {'; '.join(ignored)}", stacklevel=3)
        return True

    # the state's parts under their familiar names
    @property
    def policy(self) -> FlowPolicy:
        return self.state.policy

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.optimizer

    @property
    def ema(self) -> EMA | None:
        return self.state.ema

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return self.state.parameters

    @property
    def iteration(self) -> int:
        return self.state.iteration

    # -- phases ------------------------------------------------------------------------------------------

    def sample(self, iteration: int) -> IterationBatch:
        """Draw this process's share of the B prompts and G SDE rollouts for each (Alg. 1 lines 3-9)."""
        s = self.config.sampling
        seed = self.config.run.seed
        prompt_order = torch.randperm(len(self.train_items), generator=iteration_generator(seed, iteration, 0))
        picks = [self.train_items[int(i)] for i in prompt_order[: s.prompts_per_iteration]]
        while len(picks) < s.prompts_per_iteration:  # fewer prompts than B: cycle
            picks.append(self.train_items[len(picks) % len(self.train_items)])
        per_rank = s.prompts_per_iteration // self.group.world_size
        slots = range(self.group.rank * per_rank, (self.group.rank + 1) * per_rank)  # this process's prompt slots
        picks = [picks[slot] for slot in slots]
        cond_prompts = self.policy.encode_prompts([item.prompt for item in picks])  # B_local rows
        group_ids = torch.arange(len(picks)).repeat_interleave(s.group_size)  # [N_local]
        cond = select_rows(cond_prompts, group_ids)  # N_local rows
        initial, eps = [], []
        for slot in slots:
            generator = slot_generator(seed, iteration, slot)
            if s.share_initial_noise:  # x_T drawn once per prompt and shared by its group (Alg. 1 line 6)
                initial.append(
                    torch.randn((1, *self.policy.latent_shape), generator=generator).expand(s.group_size, -1, -1, -1)
                )
            else:
                initial.append(torch.randn((s.group_size, *self.policy.latent_shape), generator=generator))
            eps.append(torch.randn((s.group_size, s.num_steps, *self.policy.latent_shape), generator=generator))
        items = [picks[int(g)] for g in group_ids]
        scorer = self._step_scorer(items, s.num_steps)  # scores step t while the sampler computes step t+1
        try:
            result = rollout(
                self.policy,
                cond,
                s.num_steps,
                noise_level=s.noise_level,
                guidance_scale=s.guidance_scale,
                initial_noise=torch.cat(initial),  # [N_local, C, H, W]
                sde=True,
                sde_noise=torch.cat(eps),  # [N_local, T, C, H, W]
                on_projection=scorer.submit if scorer is not None else None,
            )
        except BaseException:
            if scorer is not None:
                scorer.close()
            raise
        return IterationBatch(
            rollout=result,
            cond=cond,
            group_ids=group_ids,
            items=items,
            offset=self.group.rank * per_rank * s.group_size,
            global_samples=s.prompts_per_iteration * s.group_size,
            pending_rewards=scorer,
        )

    def _step_scorer(self, items: list[PromptItem], num_steps: int) -> StepScorer | None:
        """The pool scoring a rollout's images as they appear: every step's projection (TCRM) or the final
        sample; None when ``task.reward_workers`` is 0 (:meth:`score` then scores after sampling)."""
        workers = self.config.task.reward_workers
        if workers == 0:
            return None
        tcrm = self.config.algorithm.variant in TCRM_VARIANTS
        return StepScorer(
            self.reward,
            self.policy.decode,
            [item.prompt for item in items],
            [item.metadata for item in items],
            range(num_steps) if tcrm else [num_steps - 1],
            batch_size=self.config.task.reward_batch_size,
            workers=workers,
        )

    def score(self, batch: IterationBatch) -> None:
        """Rewards [N, T]: instant rewards of every step's projection (TCRM) or the terminal reward.

        The images of an iteration are decoded and scored in batches of ``task.reward_batch_size``: while the
        sampler ran (``batch.pending_rewards``, :meth:`_step_scorer`), or here, after it (reward_workers = 0).
        """
        result = batch.rollout
        n, steps = result.log_probs.shape
        if batch.pending_rewards is not None:
            scores = batch.pending_rewards.result()  # [N, T] (TCRM) or [N, 1] (terminal)
            batch.pending_rewards = None
            batch.rewards = scores.expand(n, steps).contiguous()
            return
        if self.config.algorithm.variant in TCRM_VARIANTS:
            states = step_projections(result).flatten(0, 1)  # [N*T, C, H, W], sample-major
            items = [item for item in batch.items for _ in range(steps)]
        else:
            states = result.final
            items = batch.items
        chunk = self.config.task.reward_batch_size
        parts = []
        for start in range(0, len(items), chunk):
            images = self.policy.decode(states[start : start + chunk])
            part = items[start : start + chunk]
            parts.append(checked_call(self.reward, images, [i.prompt for i in part], [i.metadata for i in part]))
        scores = torch.cat(parts).float()
        rewards = scores.reshape(n, steps) if scores.numel() == n * steps else scores[:, None].expand(n, steps)
        batch.rewards = rewards.contiguous()

    def advantages(self, batch: IterationBatch) -> AdvantageResult:
        """Advantages of the global batch from the gathered rewards; this process keeps its own rows.

        Gathering [N, T] rewards costs nothing next to sampling, and makes batch-wide statistics (the global std
        option, the metrics) exact on every process."""
        rewards = self.group.gather(batch.rewards)  # [N, T] in global sample order (rank-major)
        group_size = self.config.sampling.group_size
        group_ids = torch.arange(rewards.shape[0] // group_size).repeat_interleave(group_size)  # [N]
        result = compute_advantages(rewards, group_ids, self.config.algorithm)
        batch.advantages = result.advantages[batch.offset : batch.offset + len(batch.items)]
        return result

    def step_log_prob(
        self, latents: torch.Tensor, next_latents: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, cond
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-prob of stored transitions under the current policy, with the step's mean and std."""
        s = self.config.sampling
        velocity = self.policy.velocity(latents, sigma, cond, s.guidance_scale).float()
        step = sde_step(latents, velocity, sigma, sigma_next, s.noise_level, prev_sample=next_latents)
        return step.log_prob, step.mean, step.std

    def update(self, batch: IterationBatch, iteration: int) -> dict[str, float]:
        """PPO-clipped updates over a random subset of each trajectory's steps (Eq. 5-6).

        The sample order, the step subsets and the optimizer steps' shares are drawn over the global batch, the
        same on every process; each process trains the samples of each share that it holds, with each term
        weighted by its share of the global share, and the gradients are summed over processes before the
        step. The gradient is therefore the one-process gradient of the same global batch (up to the order of
        floating-point sums), and every process takes the same optimizer step.

        Old log-probs. Until the iteration's first optimizer step the policy IS the sampling policy, so the old
        log-prob of those terms is this very computation, detached: the ratio is exactly 1 in any precision. The
        rollout's own log-probs come from other batch shapes (all N samples at one step, under no_grad), whose
        kernels differ by ~1e-4 in bf16, more than the 1e-4 clip range. Recomputing them in the update's shapes
        would cost one more forward per trained transition; reusing the update's forward costs nothing. The later
        optimizer steps of an iteration still compare against the rollout's log-probs (a policy that has moved),
        and ``rollout_log_prob_gap`` logs the size of that kernel mismatch, measured on the first step's terms.
        """
        config, a, o = self.config, self.config.algorithm, self.config.optim
        result = batch.rollout
        local, steps = result.log_probs.shape
        total, offset = batch.total, batch.offset
        train_steps = a.train_steps(steps)
        sigmas = result.sigmas.to(self.policy.device)
        generator = iteration_generator(config.run.seed, iteration, 3)
        names = ("loss", "policy_loss", "kl", "clip_fraction", "approx_kl", "ratio")
        totals = torch.zeros(len(names) + 1, dtype=torch.float64)  # sample-weighted sums, then the weight
        first_step_gaps = torch.zeros(2, dtype=torch.float64)  # max |ratio - 1|, max |log-prob - rollout's|
        grad_norms = []
        first_step = True  # the policy has not moved since the rollout
        for _ in range(o.inner_epochs):
            # each sample trains on its own random subset of steps, as the baseline does ([N, train_steps])
            step_order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(total)])[
                :, :train_steps
            ]
            sample_order = torch.randperm(total, generator=generator)  # [N] global sample indices
            for share in sample_order.tensor_split(o.steps_per_epoch):
                self.optimizer.zero_grad(set_to_none=True)
                mine = share[(share >= offset) & (share < offset + local)]  # global indices held here, in order
                chunks = list(mine.split(o.micro_batch_size))
                trained_chunks = len(chunks)
                if self.sharded:
                    # Each forward and backward gathers / reduces the sharded weights, a collective, so every
                    # process runs as many as the busiest one: the extra chunks re-run this process's first
                    # sample with weight zero (they add nothing to the gradient or the statistics).
                    busiest = int(torch.bincount(share // local, minlength=self.group.world_size).max())
                    chunks += [torch.tensor([offset])] * (-(-busiest // o.micro_batch_size) - trained_chunks)
                for chunk_index, chunk_global in enumerate(chunks):
                    counted = chunk_index < trained_chunks
                    chunk = chunk_global - offset  # rows of this process's batch
                    for j in range(train_steps):
                        t = step_order[chunk_global, j]  # [m] step index of each sample in the chunk
                        rows = chunk.to(result.latents.device)
                        x = result.latents[rows, t]
                        x_next = result.latents[rows, t + 1]
                        sigma, sigma_next = sigmas[t], sigmas[t + 1]
                        cond = select_rows(batch.cond, chunk)
                        log_prob, mean, std = self.step_log_prob(x, x_next, sigma, sigma_next, cond)
                        rollout_log_prob = result.log_probs[rows, t].to(log_prob.device)
                        old_log_prob = log_prob.detach() if first_step else rollout_log_prob
                        advantages = batch.advantages[rows, t].to(log_prob.device)
                        policy_loss, stats = clipped_policy_loss(
                            log_prob, old_log_prob, advantages, a.clip_range, a.advantage_clip
                        )
                        loss = policy_loss
                        kl = torch.zeros(())
                        if a.kl_beta > 0:
                            with torch.no_grad(), self.policy.reference():
                                _, reference_mean, _ = self.step_log_prob(x, x_next, sigma, sigma_next, cond)
                            kl = gaussian_mean_kl(mean, reference_mean, std).mean()
                            loss = loss + a.kl_beta * kl
                        # each (chunk, step) term weighs by its share of the GLOBAL share's samples x trained steps
                        (loss * (len(chunk) / (len(share) * train_steps) if counted else 0.0)).backward()
                        if not counted:
                            continue
                        values = (loss, policy_loss, kl, stats.clip_fraction, stats.approx_kl, stats.ratio_mean)
                        for index, value in enumerate(values):
                            totals[index] += float(value.detach() if isinstance(value, torch.Tensor) else value) * len(
                                chunk
                            )
                        totals[-1] += len(chunk)
                        if first_step:
                            ratio_error = float((log_prob.detach() - old_log_prob).exp().sub(1).abs().max())
                            gap = float((log_prob.detach() - rollout_log_prob).abs().max())
                            first_step_gaps = torch.maximum(first_step_gaps, torch.tensor([ratio_error, gap]))
                if not self.sharded:  # (sharded: FSDP's reduce-scatter has summed them during backward)
                    self.group.sum_gradients(self.parameters)  # DDP's all-reduce: the one-process gradient
                if o.max_grad_norm is not None:
                    # the norm of the whole gradient, also over shards (each process then holds it as a DTensor)
                    norm = torch.nn.utils.clip_grad_norm_(self.parameters, o.max_grad_norm)
                    grad_norms.append(float(whole(norm)))
                self.optimizer.step()
                first_step = False
                if self.ema is not None:
                    self.ema.update()
        totals = self.group.all_reduce_sum(totals)  # the statistics of the global batch
        stats_out = {name: float(totals[index] / max(float(totals[-1]), 1.0)) for index, name in enumerate(names)}
        first_step_gaps = self.group.gather(first_step_gaps[None]).amax(dim=0)  # the max over processes
        stats_out["first_ratio_error"] = float(first_step_gaps[0])
        stats_out["rollout_log_prob_gap"] = float(first_step_gaps[1])
        if grad_norms:
            stats_out["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return stats_out

    def evaluate(self, iteration: int) -> dict[str, Any]:
        """ODE sampling of the test prompts (EMA weights when enabled): accuracy, quality, diversity.

        Runs on the main process (which alone writes the sample grid) while the others wait; every process gets
        the main process's metrics. Splitting the test prompts over processes would need the evaluator's
        per-image results gathered, which it does not expose yet. A sharded policy's forward is a collective, so
        there every process evaluates the same prompts, and the main process's metrics are kept."""
        metrics: dict[str, Any] | None = None
        if self.group.is_main or self.sharded:
            s = self.config.sampling
            context = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
            with context:
                metrics = evaluate_policy(
                    self.policy,
                    self.evaluator,
                    self.eval_reward,
                    self.test_items,
                    samples_per_prompt=s.eval_samples_per_prompt,
                    num_steps=s.eval_num_steps,
                    guidance_scale=s.guidance_scale,
                    seed=self.config.run.seed + 12345,
                    grid_path=self.run_dir / "samples" / f"eval_{iteration:06d}.png" if self.group.is_main else None,
                )
        shared: dict[str, Any] = self.group.broadcast_object(metrics)
        return shared

    # -- the loop ----------------------------------------------------------------------------------------

    def train_iteration(self, iteration: int) -> dict[str, Any]:
        """One pass of Algorithm 1's outer loop; returns the metrics line of this iteration (global batch)."""
        timer = PhaseTimer(self.policy.device)
        with timer.phase("sample"):
            batch = self.sample(iteration)
        with timer.phase("reward"):
            self.score(batch)
        with timer.phase("advantage"):
            advantage = self.advantages(batch)
        with timer.phase("update"):
            update_stats = self.update(batch, iteration)
        rewards = self.group.gather(batch.rewards)  # [N, T], the global batch
        group_size = self.config.sampling.group_size
        terminal = rewards[:, -1]
        group_std = terminal.reshape(-1, group_size).std(dim=1, unbiased=False)  # [B]: groups are contiguous
        return {
            "kind": "train",
            "iteration": iteration,
            "reward_mean": float(terminal.mean()),
            "reward_std": float(terminal.std(unbiased=False)),
            "group_reward_std": float(group_std.mean()),
            "zero_spread_fraction": float((group_std == 0).float().mean()),
            # TCRM variants only: elsewhere every step carries the terminal reward, a flat line that is no measurement
            **(
                {"instant_reward_by_step": [round(float(x), 5) for x in rewards.mean(dim=0)]}
                if self.config.algorithm.variant in TCRM_VARIANTS
                else {}
            ),
            **(
                {"calibration_slope_by_step": [round(float(b), 5) for b in advantage.calibration_slopes]}
                if advantage.calibration_slopes is not None
                else {}
            ),
            "value_mean": float(advantage.values.mean()),
            "weight_min": float(advantage.weights.min()),
            "weight_max": float(advantage.weights.max()),
            "advantage_abs_mean": float(advantage.advantages.abs().mean()),
            **update_stats,
            "seconds": {key: round(value, 4) for key, value in timer.seconds.items()},
        }

    def should_evaluate(self, iteration: int) -> bool:
        every = self.config.run.eval_every
        return iteration == self.config.run.iterations or (every > 0 and iteration % every == 0)

    def run(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train for ``run.iterations`` iterations, evaluating, logging and checkpointing; returns the records.

        Every process runs this loop; only the main one writes the run directory."""
        config, group = self.config, self.group
        metrics_path = self.run_dir / "metrics.jsonl"
        if resume:
            meta = ckpt.load_latest(self.state, self.run_dir)  # every process reads the same files
            written_by = int(meta.get("world_size", 1))
            if written_by != group.world_size and group.is_main:
                warnings.warn(
                    f"resuming a run checkpointed by {written_by} process(es) on {group.world_size}: the global "
                    "batch, its prompts and noise are the same, but floating-point sums run in another order, so "
                    "the run will not be bitwise the uninterrupted one",
                    stacklevel=2,
                )
            group.barrier()  # nobody reads the metrics while the main process truncates them
            if group.is_main:
                ckpt.truncate_metrics(metrics_path, self.iteration)
        else:
            taken = metrics_path.exists() and metrics_path.stat().st_size > 0
            group.barrier()  # every process has looked before the main one writes
            if taken:
                raise ConfigError(
                    f"run directory {self.run_dir} already holds a run; resume it with --resume or pick another --out"
                )
            if group.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_config(config, self.run_dir / "config.yaml")
        records: list[dict[str, Any]] = []

        def emit(record: dict[str, Any]) -> None:
            records.append(record)
            if not group.is_main:
                return
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            for logger in self.loggers:
                logger(record)

        if self.iteration == 0 and config.run.eval_at_start and not resume:
            emit({"kind": "eval", "iteration": 0, **self.evaluate(0)})
        progress = _progress(config.run.progress and group.is_main, self.iteration, config.run.iterations)
        for iteration in range(self.iteration + 1, config.run.iterations + 1):
            record = self.train_iteration(iteration)
            self.state.iteration = iteration
            emit(record)
            eval_record = None
            if self.should_evaluate(iteration):
                start = time.perf_counter()
                eval_record = {"kind": "eval", "iteration": iteration, **self.evaluate(iteration)}
                eval_record["seconds"] = {"evaluate": round(time.perf_counter() - start, 4)}
                emit(eval_record)
            checkpoint_due = iteration % config.run.checkpoint_every == 0 or iteration == config.run.iterations
            if checkpoint_due and (group.is_main or self.sharded):  # sharded weights: every process gathers them
                ckpt.save(
                    self.state,
                    self.run_dir,
                    config=config.to_dict(),
                    keep=config.run.keep_checkpoints,
                    world_size=group.world_size,
                    write=group.is_main,
                )
            progress(record, eval_record)
        group.barrier()  # the run directory is complete when any process returns
        return records


def use_deterministic_algorithms() -> None:
    """Ask torch for deterministic kernels (run.deterministic): an error instead of a silently
    non-deterministic op, cuDNN without autotuning, and the cuBLAS workspace setting that makes its GEMMs
    repeatable (must be set before the first cuBLAS call, hence here, before the model is built)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _progress(enabled: bool, start: int, total: int) -> Callable[[dict[str, Any], dict[str, Any] | None], None]:
    """A tqdm bar showing reward, accuracy and seconds per phase (or nothing)."""
    if not enabled:
        return lambda record, eval_record: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True)
    last_accuracy: list[float] = []

    def update(record: dict[str, Any], eval_record: dict[str, Any] | None) -> None:
        if eval_record is not None and "accuracy" in eval_record:
            last_accuracy[:] = [eval_record["accuracy"]]
        phases = " ".join(f"{k[:3]}={v:.1f}s" for k, v in record["seconds"].items())
        postfix = f"reward={record['reward_mean']:.3f}"
        if last_accuracy and not math.isnan(last_accuracy[0]):
            postfix += f" acc={last_accuracy[0]:.3f}"
        bar.set_postfix_str(f"{postfix} {phases}")
        bar.update(1)
        if record["iteration"] >= total:
            bar.close()

    return update
