"""The training loop of VGPO, Flow-GRPO and the methods that followed: the paper's Algorithm 1, one loop for all.

Each iteration runs named, timed phases, each asking one part of the method (`vgpo.methods`) in one place:
    sample    -> B prompts x G rollouts, each step as the method's sampler plans it: SDE steps with their
                 log-probs, ODE steps (Alg. 1 lines 3-9)
    reward    -> the terminal reward, and every step's one-step projection's reward when the credit asks for
                 step rewards (TCRM, Eq. 9-10; line 10), scored while sampling goes on
    advantage -> the credit: values, weights and per-step advantages (Eq. 11, 12, 14 or Eq. 4; lines 12-14)
    update    -> the objective on micro-batches, driven by the shared update driver (Eq. 5-6; line 17)
    evaluate  -> ODE sampling of the test prompts: task accuracy, image quality, diversity
    checkpoint-> atomic checkpoint, so that `vgpo train --resume RUN_DIR` continues where it stopped

Randomness is derived from (seed, iteration) alone (`vgpo.randomness`), so a run killed after iteration k and
resumed from its checkpoint draws exactly what the uninterrupted run would have drawn.

One loop for one process and for N (``accelerate launch -m vgpo train``), through `vgpo.parallel.distributed`:
    - the global batch is B = sampling.prompts_per_iteration prompts x G; rank r holds the whole groups of prompt
      slots [r * B / N, (r + 1) * B / N), so group statistics are computed from complete groups;
    - prompt order comes from (seed, iteration) and each slot's initial and SDE noise from (seed, iteration, slot),
      so N processes draw the same global batch as one process, sample for sample;
    - rewards are gathered, advantages and metrics computed on the global batch (every rank, identically);
    - the update walks the same global sample and step order on every rank (`vgpo.methods.driver`);
    - evaluation, logs, reports and checkpoints belong to the main process.
Full fine-tuning launched with FSDP (``accelerate launch --use_fsdp``) shards the policy over the ranks
(`vgpo.parallel.sharding`): FSDP's reduce-scatter sums the gradients, every rank runs as many forwards as the busiest one
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from vgpo import checkpoint as ckpt
from vgpo.builders import build_evaluation, build_policy, build_task, build_task_reward, task_prompts
from vgpo.config import TrainConfig, save_config
from vgpo.errors import ConfigError, TrainingError
from vgpo.evaluation import EVAL_SEED_OFFSET as EVAL_SEED_OFFSET  # re-exported: its home is vgpo.evaluation
from vgpo.methods.credit import CreditResult, Rewards
from vgpo.methods.driver import UpdateSchedule, run_update
from vgpo.methods.objectives import StepModel, UpdateBatch
from vgpo.methods.registry import build_method
from vgpo.methods.samplers import StepPlan
from vgpo.parallel.distributed import ProcessGroup
from vgpo.parallel.sharding import ignored_launcher_settings
from vgpo.policy import Conditioning, FlowPolicy, select_rows
from vgpo.randomness import iteration_generator, slot_generator
from vgpo.rewards import RewardFn, checked_call
from vgpo.rewards.overlap import StepScorer
from vgpo.sampling import Rollout, rollout, step_projections
from vgpo.tasks import Task
from vgpo.tasks.prompts import PromptItem
from vgpo.train_state import EMA, TrainState

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


class CountedPolicy:
    """A policy whose velocity evaluations are counted: one per sample per call (a CFG pair counts once), the
    compute axis of `vgpo study` and `vgpo bench` ("model evaluations"). Everything else is the policy's own."""

    def __init__(self, policy: FlowPolicy) -> None:
        self._policy = policy
        self.evaluations = 0

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        self.evaluations += int(latents.shape[0])
        return self._policy.velocity(latents, sigma, cond, guidance_scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)


@dataclass(frozen=True)
class Samples:
    """What the sample phase makes: this process's share of the global batch.

    N = B * G samples in the global batch; this process holds rows [offset, offset + N_local) of it, whole groups.
    ``pending`` is the pool scoring the rollout's images while sampling went on (None: score after sampling).
    """

    rollout: Rollout
    cond: Conditioning  # N_local rows
    items: list[PromptItem]  # N_local
    group_ids: torch.Tensor  # [N_local], 0-based within this process
    plan: StepPlan
    offset: int
    total: int  # N, the number of samples in the global batch
    pending: StepScorer | None = None


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
        # cheap checks first: a bad method, task, reward or prompt file fails before a model is loaded
        s = config.sampling
        self.method = build_method(config.algorithm, s.num_steps, s.share_initial_noise, s.noise_level)
        """The method's parts: its sampler, credit and objective (`vgpo.methods.registry`)."""
        self.task = task if task is not None else build_task(config.task)
        self.reward = reward if reward is not None else build_task_reward(config.task, self.task)
        self.train_items = task_prompts(config.task, self.task, "train")
        self.evaluation = build_evaluation(config, self.task, self.reward, custom_reward=reward is not None)
        """The test prompts, evaluator and settings, as `vgpo eval` sets them up (`vgpo.builders`)."""
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
        # a method may sample with its own soft-updated copy of the weights (the "old" policy), saved with the rest
        sampling = EMA(parameters, 0.0) if self.method.sampling_policy is not None else None
        self.state = TrainState(policy=policy, optimizer=optimizer, ema=ema, sampling=sampling)
        self.counted = CountedPolicy(policy)
        """The policy with its velocity evaluations counted (sampling and update; evaluation is not counted)."""
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

    def sample(self, iteration: int) -> Samples:
        """Draw this process's share of the B prompts and G rollouts for each, as the sampler plans the steps
        (Alg. 1 lines 3-9)."""
        s = self.config.sampling
        seed = self.config.run.seed
        plan = self.method.sampler.plan(s.num_steps, seed, iteration)
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
                    torch.randn((1, *self.policy.latent_shape), generator=generator).expand(
                        s.group_size, *self.policy.latent_shape
                    )
                )
            else:
                initial.append(torch.randn((s.group_size, *self.policy.latent_shape), generator=generator))
            eps.append(torch.randn((s.group_size, s.num_steps, *self.policy.latent_shape), generator=generator))
        items = [picks[int(g)] for g in group_ids]
        scorer = self._step_scorer(items, s.num_steps)  # scores step t while the sampler computes step t+1
        weights = self.state.sampling.applied() if self.state.sampling is not None else contextlib.nullcontext()
        try:
            with weights:
                result = rollout(
                    self.counted,
                    cond,
                    s.num_steps,
                    noise_level=s.noise_level,
                    guidance_scale=s.guidance_scale,
                    initial_noise=torch.cat(initial),  # [N_local, C, H, W]
                    sde_noise=torch.cat(eps),  # [N_local, T, C, H, W]
                    on_projection=scorer.submit if scorer is not None else None,
                    step_kinds=plan.kinds,
                    sde_form=plan.sde_form,
                    keep_means=self.method.objective.needs_rollout_means,
                )
        except BaseException:
            if scorer is not None:
                scorer.close()
            raise
        return Samples(
            rollout=result,
            cond=cond,
            items=items,
            group_ids=group_ids,
            plan=plan,
            offset=self.group.rank * per_rank * s.group_size,
            total=s.prompts_per_iteration * s.group_size,
            pending=scorer,
        )

    def _scored_steps(self, num_steps: int) -> list[int]:
        """The steps whose images are scored: every step's projection when the credit needs step rewards (TCRM),
        else the final sample (the projection after the last step)."""
        return list(range(num_steps)) if self.method.credit.needs_step_rewards else [num_steps - 1]

    def _step_scorer(self, items: list[PromptItem], num_steps: int) -> StepScorer | None:
        """The pool scoring a rollout's images as they appear; None when ``task.reward_workers`` is 0
        (:meth:`score` then scores after sampling)."""
        workers = self.config.task.reward_workers
        if workers == 0:
            return None
        return StepScorer(
            self.reward,
            self.policy.decode,
            [item.prompt for item in items],
            [item.metadata for item in items],
            self._scored_steps(num_steps),
            batch_size=self.config.task.reward_batch_size,
            workers=workers,
        )

    def score(self, samples: Samples) -> Rewards:
        """This process's rewards: the terminal reward [N_local] and, when the credit asks, every step's [N_local, T].

        The images of an iteration are decoded and scored in batches of ``task.reward_batch_size``: while the
        sampler ran (``samples.pending``), or here, after it (reward_workers = 0).
        """
        result = samples.rollout
        n, steps = result.log_probs.shape
        wanted = self._scored_steps(steps)
        if samples.pending is not None:
            scores = samples.pending.result()  # [N, S], column j for step wanted[j]
        else:
            if len(wanted) == steps:
                states = step_projections(result).flatten(0, 1)  # [N*T, C, H, W], sample-major
                items = [item for item in samples.items for _ in range(steps)]
            else:
                states = result.final
                items = samples.items
            chunk = self.config.task.reward_batch_size
            parts = []
            for start in range(0, len(items), chunk):
                images = self.policy.decode(states[start : start + chunk])
                part = items[start : start + chunk]
                parts.append(checked_call(self.reward, images, [i.prompt for i in part], [i.metadata for i in part]))
            scores = torch.cat(parts).float().reshape(n, len(wanted))
        scores = scores.contiguous()
        return Rewards(terminal=scores[:, -1].contiguous(), steps=scores if len(wanted) == steps else None)

    def advantages(self, rewards: Rewards) -> CreditResult:
        """The credit of the global batch, from the gathered rewards (every process computes the same).

        Gathering [N, T] rewards costs nothing next to sampling, and makes batch-wide statistics (the global std
        option, the metrics) exact on every process."""
        gathered = Rewards(  # [N] / [N, T] in global sample order (rank-major)
            terminal=self.group.gather(rewards.terminal),
            steps=self.group.gather(rewards.steps) if rewards.steps is not None else None,
        )
        group_size = self.config.sampling.group_size
        group_ids = torch.arange(gathered.terminal.shape[0] // group_size).repeat_interleave(group_size)  # [N]
        return self.method.credit(gathered, group_ids, self.policy.sigma_schedule(self.config.sampling.num_steps))

    def step_model(self, sde_form: str | None = None) -> StepModel:
        """The policy as objectives call it, at the sampling settings (velocity evaluations counted)."""
        s = self.config.sampling
        form = sde_form if sde_form is not None else self.method.sampler.sde_form
        return StepModel(self.counted, s.guidance_scale, s.noise_level, form, self.state.sampling)

    def update(self, samples: Samples, credit: CreditResult, iteration: int) -> dict[str, float]:
        """The objective on this iteration's samples, through the shared update driver (Eq. 5-6 for PPO)."""
        o = self.config.optim
        local = len(samples.items)
        batch = UpdateBatch(
            rollout=samples.rollout,
            cond=samples.cond,
            advantages=credit.advantages[samples.offset : samples.offset + local],  # this process's rows
            plan=samples.plan,
            sigmas=samples.rollout.sigmas.to(self.policy.device),
            offset=samples.offset,
            total=samples.total,
        )
        model = self.step_model(samples.plan.sde_form)
        schedule = UpdateSchedule(o.inner_epochs, o.steps_per_epoch, o.micro_batch_size, o.max_grad_norm)
        generator = iteration_generator(self.config.run.seed, iteration, 3)
        stats = run_update(
            self.method.objective, model, batch, self.state, self.group, schedule, generator, self.sharded
        )
        soft_update = self.method.sampling_policy
        if self.state.sampling is not None and soft_update is not None:  # old <- d old + (1 - d) theta
            steps_so_far = iteration * o.inner_epochs * o.steps_per_epoch  # the source's global_step
            stats["sampling_policy_decay"] = soft_update.decay(steps_so_far)
            self.state.sampling.update(stats["sampling_policy_decay"])
        return stats

    def evaluate(self, iteration: int) -> dict[str, Any]:
        """ODE sampling of the test prompts (EMA weights when enabled): accuracy, quality, diversity.

        Runs on the main process (which alone writes the sample grid) while the others wait; every process gets
        the main process's metrics. Splitting the test prompts over processes would need the evaluator's
        per-image results gathered, which it does not expose yet. A sharded policy's forward is a collective, so
        there every process evaluates the same prompts, and the main process's metrics are kept."""
        metrics: dict[str, Any] | None = None
        if self.group.is_main or self.sharded:
            context = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
            grid = self.run_dir / "samples" / f"eval_{iteration:06d}.png" if self.group.is_main else None
            with context:
                metrics = self.evaluation.run(self.policy, grid)
        shared: dict[str, Any] = self.group.broadcast_object(metrics)
        return shared

    # -- the loop ----------------------------------------------------------------------------------------

    def train_iteration(self, iteration: int) -> dict[str, Any]:
        """One pass of Algorithm 1's outer loop; returns the metrics line of this iteration (global batch)."""
        timer = PhaseTimer(self.policy.device)
        evaluations_before = self.counted.evaluations
        with timer.phase("sample"):
            samples = self.sample(iteration)
        with timer.phase("reward"):
            rewards = self.score(samples)
        with timer.phase("advantage"):
            credit = self.advantages(rewards)
        with timer.phase("update"):
            update_stats = self.update(samples, credit, iteration)
            self._check_finite(iteration, update_stats)
        evaluations = self.group.all_reduce_sum(
            torch.tensor([self.counted.evaluations - evaluations_before], dtype=torch.float64)
        )
        terminal = self.group.gather(rewards.terminal)  # [N], the global batch
        group_size = self.config.sampling.group_size
        group_std = terminal.reshape(-1, group_size).std(dim=1, unbiased=False)  # [B]: groups are contiguous
        step_rewards = self.group.gather(rewards.steps) if rewards.steps is not None else None
        return {
            "kind": "train",
            "iteration": iteration,
            "reward_mean": float(terminal.mean()),
            "reward_std": float(terminal.std(unbiased=False)),
            "group_reward_std": float(group_std.mean()),
            "zero_spread_fraction": float((group_std == 0).float().mean()),
            # logged where each step's projection is scored; elsewhere there is no per-step measurement
            **(
                {"instant_reward_by_step": [round(float(x), 5) for x in step_rewards.mean(dim=0)]}
                if step_rewards is not None
                else {}
            ),
            **(
                {"calibration_slope_by_step": [round(float(b), 5) for b in credit.calibration_slopes]}
                if credit.calibration_slopes is not None
                else {}
            ),
            "value_mean": float(credit.values.mean()),
            "weight_min": float(credit.weights.min()),
            "weight_max": float(credit.weights.max()),
            "advantage_abs_mean": float(credit.advantages.abs().mean()),
            **update_stats,
            "sde_steps": [t for t, kind in enumerate(samples.plan.kinds) if kind == "sde"],
            "model_evaluations": int(evaluations[0]),
            "seconds": {key: round(value, 4) for key, value in timer.seconds.items()},
        }

    def _check_finite(self, iteration: int, update_stats: dict[str, float]) -> None:
        """Stop at the first update that leaves a non-finite trainable weight, naming it, instead of sampling NaN
        images whose rewards the next iteration would blame (the trainable weights only: LoRA's are small; a sharded
        policy's shards are checked by the checkpoint, which gathers them)."""
        if self.sharded:
            return
        for index, parameter in enumerate(self.parameters):
            if not bool(torch.isfinite(parameter.detach()).all()):
                raise TrainingError(
                    f"iteration {iteration}'s update left non-finite values in trainable parameter {index} of shape "
                    f"{tuple(parameter.shape)} (loss "
                    f"{update_stats.get('loss', float('nan')):.4g}, grad norm {update_stats.get('grad_norm', float('nan')):.4g}); "
                    f"likely optim.learning_rate={self.config.optim.learning_rate:g} is too high or the advantages "
                    "blew up; lower the learning rate and resume from the last checkpoint"
                )

    def should_evaluate(self, iteration: int) -> bool:
        return self.config.run.evaluates_after(iteration)

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
