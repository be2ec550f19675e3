"""The training configuration: typed dataclasses, a one-line doc for every field, validated where loaded.

A config is a YAML file whose sections mirror :class:`TrainConfig`; command-line overrides use dotted keys
(``algorithm.gamma=0.8``). Flow-GRPO, VGPO and the ablations are values of ``algorithm.variant``, not separate
code paths. Only builders (`vgpo.builders`) read a config; components take plain arguments.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vgpo.errors import ConfigError, require_file

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
"""A finite decimal number in any spelling Python reads, e.g. "1e-4", which YAML 1.1 (PyYAML) leaves a string."""

Method = Literal[
    "flow_grpo",
    "vgpo",
    "tcrm_only",
    "adae_only",
    "flow_grpo_fast",
    "mixgrpo",
    "dance_grpo",
    "flow_grpo_cps",
    "grpo_guard",
    "tempflow_grpo",
    "stepwise_grpo",
    "vgpo_fast",
    "vgpo_mix",
    "nft",
    "awm",
]
METHODS: tuple[str, ...] = typing.get_args(Method)
"""The methods by name (`vgpo.methods.registry` maps each to its sampler, credit and objective)."""
VARIANTS = METHODS  # the name of the list before methods came apart (algorithm.variant); kept for old imports
SDEForm = Literal["flow_grpo", "dance", "cps"]
MAX_SEED = 2**20
"""run.seed is below this: the per-slot generators multiply it by ~1.6e13 (`vgpo.randomness.slot_generator`) and
torch seeds hold 64 bits."""


@dataclass
class ModelConfig:
    """Which flow model to fine-tune and how. The fields are the ones every model shares (`vgpo.models.base`);
    a model's own settings are ``options`` (docs/models.md lists them per model)."""

    kind: str = "tiny"
    """Registered model name (`vgpo.models`): tiny (the embedded model), sd3 (SD3 / SD3.5 through diffusers), ..."""
    path: str | None = None
    """Weights folder or hub id; None means the tiny model shipped with vgpo."""
    options: dict[str, Any] | None = None
    """The model's own settings, checked against its options dataclass, e.g. sd3: ``{resolution: 512,
    negative_prompt: "", max_sequence_length: 256}``."""
    lora_rank: int | None = None
    """LoRA rank on the attention projections; None means full fine-tuning."""
    lora_alpha: float | None = None
    """LoRA alpha (scale = alpha / rank); None means the model's default (tiny: alpha = rank; sd3: 2 x rank)."""
    lora_targets: list[str] | None = None
    """Module names that get LoRA adapters; None: the model's default (the baseline's 8 attention projections)."""
    lora_init: str | None = None
    """How LoRA's A starts (B starts at 0, so the adapters are a no-op): gaussian | kaiming; None: the model's
    default (tiny: kaiming, sd3: gaussian)."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights' dtype (the SDE math always runs in float32)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    decode_batch_size: int | None = None
    """Latents per decode call (bounds the decoder's memory); None: the model's default (tiny 256, sd3 8)."""
    prompt_cache: int = 0
    """Keep the encoded prompts of up to this many prompts (saves the text encoders' time when prompts repeat);
    0: encode every time."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ..."""
    resolution: int | None = None
    """Legacy spelling of ``options.resolution`` (sd3), kept so that existing configs and checkpoints load."""
    negative_prompt: str | None = None
    """Legacy spelling of ``options.negative_prompt`` (sd3)."""
    max_sequence_length: int | None = None
    """Legacy spelling of ``options.max_sequence_length`` (sd3)."""


@dataclass
class TaskConfig:
    """What the policy is rewarded for."""

    name: str = "compositional"
    """Task: compositional | text (embedded, shipped prompts) or geneval | ocr | pickscore (any model, with
    prompt files); see `vgpo.tasks`."""
    reward: str | dict[str, float] | None = None
    """Registered reward name, or {name: weight}; None means the task's own reward."""
    train_prompts: str | None = None
    """Prompt file (JSONL with metadata, GenEval metadata JSONL, or TXT) of training prompts; None means the
    task's shipped train split."""
    test_prompts: str | None = None
    """JSONL/TXT file of evaluation prompts; None means the task's shipped test split."""
    reward_options: dict[str, dict[str, Any]] | None = None
    """Keyword arguments per reward name for its factory, e.g. ``{pickscore: {model: /models/PickScore_v1,
    dtype: bf16}}`` or ``{ocr: {drop_score: 0.3}}``; an option the factory does not take is an error. An
    override ``task.reward_options=null`` clears the options a run's saved config holds."""
    reward_batch_size: int = 256
    """Images decoded and scored per reward call (bounds the memory of TCRM's N x T step images)."""
    reward_workers: int = 1
    """Threads that decode and score each step's images while the sampler computes the next step (a remote
    reward: that many requests in flight); 0 scores everything after sampling, in the trainer's thread."""


@dataclass
class SamplingConfig:
    """Rollouts (training) and evaluation sampling."""

    num_steps: int = 10
    """T: SDE steps of a training rollout (paper: 10)."""
    noise_level: float = 0.7
    """a in Eq. 7: the SDE's noise scale (baseline: 0.7)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance during rollouts and in the training log-prob (SD3.5 baseline: 4.5)."""
    group_size: int = 8
    """G: samples per prompt (baseline: 24)."""
    prompts_per_iteration: int = 8
    """B: prompts per iteration in the whole job (global, over every process); N = B * G samples. Under
    ``accelerate launch`` with P processes each holds B / P whole groups, so B must divide by P."""
    share_initial_noise: bool = True
    """Draw x_T once per prompt, shared by its group (Algorithm 1, line 6)."""
    eval_num_steps: int = 40
    """ODE steps for evaluation (paper: 40)."""
    eval_samples_per_prompt: int = 4
    """Samples per test prompt at evaluation (for accuracy and diversity)."""
    eval_max_prompts: int | None = None
    """Evaluate on the first this many test prompts only (None: all)."""


@dataclass
class AlgorithmConfig:
    """The method: Flow-GRPO, VGPO, the ablations and the methods that followed Flow-GRPO (docs/algorithms.md)."""

    method: Method = "vgpo"
    """flow_grpo | vgpo (TCRM + ADAE) | tcrm_only | adae_only | flow_grpo_fast | mixgrpo | dance_grpo | flow_grpo_cps
    | grpo_guard | tempflow_grpo | stepwise_grpo | vgpo_fast | vgpo_mix | nft (DiffusionNFT) | awm (Advantage
    Weighted Matching) (docs/algorithms.md). ``variant``, its
    older name, is read as ``method`` in presets and overrides."""
    gamma: float = 0.9
    """TCRM discount factor in [0, 1) (Eq. 11)."""
    instant_reward: Literal["projection", "calibrated"] = "projection"
    """TCRM's instant reward R_t (vgpo, tcrm_only; the other variants score the final image only): the reward of
    step t's one-step projection (paper, Eq. 9-10), or that score calibrated to predict the final reward
    (`vgpo.math.values.calibrated_instant_rewards`; for rewards lenient with blurry early projections)."""
    k: float = 0.5
    """ADAE absolute-term scale (Eq. 14, alpha = k * std); 0 turns it off."""
    absolute_steps: int | None = 5
    """Keep ADAE's absolute term on the first this many steps (paper A.2: 5); None: every step."""
    std_scope: Literal["group", "global"] = "group"
    """Std of the GRPO normalisation: per prompt group, or the whole batch (baseline option)."""
    clip_range: float = 1e-4
    """PPO clip range epsilon (baseline: 1e-4)."""
    advantage_clip: float | None = 5.0
    """Clip advantages to [-c, c] (baseline: 5); None: no clipping."""
    kl_beta: float = 0.0
    """beta of the KL to the reference policy (0: w/o KL; baseline 0.04 / 0.01)."""
    train_step_fraction: float = 0.99
    """Train on int(S * fraction) randomly chosen of the S trainable steps of each trajectory (baseline: 0.99 -> 9 of
    10; DanceGRPO's scripts: 0.6). Window methods train every step of their window (as their sources do)."""
    sde_form: SDEForm | None = None
    """The stochastic step: flow_grpo (Eq. 7) | dance (DanceGRPO's constant noise) | cps (coefficients-preserving);
    null: the method's own. A method fixed to one form refuses another."""
    window_size: int | None = None
    """SDE steps in the window of flow_grpo_fast, mixgrpo, tempflow_grpo (its branch step: 1), vgpo_fast, vgpo_mix;
    null: the method's own (2; tempflow_grpo 1)."""
    window_range: tuple[int, int] | None = None
    """[low, high) step range the window lies in; null: the method's own (fast: [0, T // 2); mix: [0, T - 2),
    MixGRPO's; tempflow: [0, T - 1))."""
    window_stride: int = 1
    """mixgrpo, vgpo_mix: steps the window moves by (MixGRPO's prog_overlap_step)."""
    window_every: int = 5
    """mixgrpo, vgpo_mix: iterations between two moves of the window (MixGRPO's iters_per_group)."""
    nft_beta: float = 1.0
    """nft: beta, the mixing of DiffusionNFT's implicit positive / negative policies around the sampling one (> 0)."""
    awm_weighting: Literal["uniform", "t", "ghuber"] = "uniform"
    """awm: how each sample's flow-matching loss l enters AWM's loss: uniform (l, the source's function default),
    t (t l), ghuber (t ((l + 1e-10)^p - 1e-10^p) / p, the setting of every config AWM ships)."""
    awm_ghuber_power: float = 0.25
    """awm with awm_weighting ghuber: the power p (> 0; AWM's configs: 0.25; 1 is the same as t)."""
    forward_credit: Literal["grpo", "vgpo"] = "grpo"
    """nft, awm: the advantage each noise level is trained with: GRPO's terminal one (the sources'), or VGPO's
    credit (TCRM values + ADAE) at the rollout step of that noise level (docs/algorithms.md)."""

    @property
    def variant(self) -> str:
        """The method's older name (``algorithm.variant``)."""
        return self.method

    def train_steps(self, num_steps: int) -> int:
        """Number of trained steps per trajectory: int(T * train_step_fraction), as the baseline computes it."""
        return int(num_steps * self.train_step_fraction)


@dataclass
class OptimConfig:
    """The policy update."""

    learning_rate: float = 3e-4
    """AdamW learning rate (baseline: 3e-4 for LoRA)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm (None: off)."""
    inner_epochs: int = 1
    """Passes over each iteration's samples."""
    micro_batch_size: int = 32
    """Samples per forward/backward (a memory knob; gradients accumulate up to an optimizer step)."""
    steps_per_epoch: int = 2
    """Optimizer steps per pass over an iteration's samples, each on an equal share of them (baseline: 2)."""
    ema_decay: float | None = 0.9
    """EMA of the trainable weights used for evaluation (None: evaluate the raw weights)."""


@dataclass
class RunConfig:
    """Bookkeeping of a run."""

    iterations: int = 30
    """Training iterations (Algorithm 1's S)."""
    seed: int = 0
    """Seed of everything: weight initialisation (LoRA), prompt order, initial noise, SDE noise."""
    eval_every: int = 10
    """Evaluate every this many iterations (and at the end); 0: only at the start and end."""
    eval_at_start: bool = True
    """Evaluate the model before training (the baseline row of the results)."""
    eval_at_end: bool = True
    """Evaluate after the last iteration even when it is not a multiple of eval_every. With eval_at_start=false
    and eval_every=0 a run evaluates nothing (the gym's tuning runs, scored on their training rewards)."""
    checkpoint_every: int = 5
    """Write a checkpoint every this many iterations (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    tensorboard: bool = True
    """Write TensorBoard event files (when the tensorboard package is installed)."""
    wandb_project: str | None = None
    """Log to this Weights & Biases project (when wandb is installed)."""
    progress: bool = True
    """Show a progress bar."""
    num_threads: int | None = None
    """torch intra-op CPU threads (None: torch's default). 1 is faster on a CPU shared with other jobs."""
    deterministic: bool = False
    """Deterministic kernels: torch.use_deterministic_algorithms, cuDNN without autotuning, a fixed cuBLAS
    workspace; slower on GPU, and an op with no deterministic kernel raises (docs/distributed.md)."""

    def evaluates_after(self, iteration: int) -> bool:
        """Whether training iteration ``iteration`` (1-based) is followed by an evaluation."""
        last = iteration == self.iterations and self.eval_at_end
        return last or (self.eval_every > 0 and iteration % self.eval_every == 0)


@dataclass
class TrainConfig:
    """Everything a training run needs; see each section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> TrainConfig:
        """Check every value's range; raise ConfigError naming the field, the value and what is allowed."""
        s, a, o, r = self.sampling, self.algorithm, self.optim, self.run
        for where, value in self._numbers():
            if not math.isfinite(value):  # e.g. `.inf` in YAML: it would train into NaN weights
                raise ConfigError(f"{where} must be a finite number, got {value}")
        checks: list[tuple[bool, str]] = [
            (s.group_size >= 2, f"sampling.group_size must be >= 2 (group statistics need 2), got {s.group_size}"),
            (
                s.prompts_per_iteration >= 1,
                f"sampling.prompts_per_iteration must be >= 1, got {s.prompts_per_iteration}",
            ),
            (s.num_steps >= 1, f"sampling.num_steps must be >= 1, got {s.num_steps}"),
            (s.eval_num_steps >= 1, f"sampling.eval_num_steps must be >= 1, got {s.eval_num_steps}"),
            (s.noise_level > 0, f"sampling.noise_level must be > 0, got {s.noise_level}"),
            (s.guidance_scale >= 1.0, f"sampling.guidance_scale must be >= 1 (1 = no CFG), got {s.guidance_scale}"),
            (s.eval_samples_per_prompt >= 1, "sampling.eval_samples_per_prompt must be >= 1"),
            (
                s.eval_max_prompts is None or s.eval_max_prompts >= 1,
                f"sampling.eval_max_prompts must be >= 1 or null (all test prompts), got {s.eval_max_prompts}",
            ),
            (a.method in METHODS, f"algorithm.method must be one of {', '.join(METHODS)}, got {a.method!r}"),
            (0.0 <= a.gamma < 1.0, f"algorithm.gamma must be in [0, 1), got {a.gamma}"),
            (a.k >= 0, f"algorithm.k must be >= 0, got {a.k}"),
            (a.absolute_steps is None or a.absolute_steps >= 0, "algorithm.absolute_steps must be >= 0 or null"),
            (
                a.instant_reward in ("projection", "calibrated"),
                f"algorithm.instant_reward must be projection or calibrated, got {a.instant_reward!r}",
            ),
            (a.std_scope in ("group", "global"), f"algorithm.std_scope must be group or global, got {a.std_scope!r}"),
            (a.clip_range > 0, f"algorithm.clip_range must be > 0, got {a.clip_range}"),
            (a.advantage_clip is None or a.advantage_clip > 0, "algorithm.advantage_clip must be > 0 or null"),
            (a.kl_beta >= 0, f"algorithm.kl_beta must be >= 0, got {a.kl_beta}"),
            (
                0 < a.train_step_fraction <= 1,
                f"algorithm.train_step_fraction must be in (0, 1], got {a.train_step_fraction}",
            ),
            (o.learning_rate > 0, f"optim.learning_rate must be > 0, got {o.learning_rate}"),
            (o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (0: off), got {o.weight_decay}"),
            (
                all(0 <= beta < 1 for beta in o.adam_betas),
                f"optim.adam_betas must be two numbers in [0, 1) (e.g. [0.9, 0.999]), got {list(o.adam_betas)}",
            ),
            (o.inner_epochs >= 1, f"optim.inner_epochs must be >= 1, got {o.inner_epochs}"),
            (o.micro_batch_size >= 1, f"optim.micro_batch_size must be >= 1, got {o.micro_batch_size}"),
            (
                1 <= o.steps_per_epoch <= s.prompts_per_iteration * s.group_size,
                f"optim.steps_per_epoch must be in [1, N = B * G], got {o.steps_per_epoch}",
            ),
            (o.ema_decay is None or 0 <= o.ema_decay < 1, "optim.ema_decay must be in [0, 1) or null"),
            (o.max_grad_norm is None or o.max_grad_norm > 0, "optim.max_grad_norm must be > 0 or null"),
            (r.iterations >= 0, f"run.iterations must be >= 0, got {r.iterations}"),
            (0 <= r.seed < MAX_SEED, f"run.seed must be in [0, {MAX_SEED}), got {r.seed}"),
            (
                r.eval_every >= 0 and r.checkpoint_every >= 1,
                "run.eval_every must be >= 0 and run.checkpoint_every >= 1",
            ),
            (r.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
            (r.num_threads is None or r.num_threads >= 1, "run.num_threads must be >= 1 or null"),
            (self.task.reward_batch_size >= 1, "task.reward_batch_size must be >= 1"),
            (self.task.reward_workers >= 0, "task.reward_workers must be >= 0 (0: score after sampling)"),
            (self.model.lora_rank is None or self.model.lora_rank >= 1, "model.lora_rank must be >= 1 or null"),
            (
                self.model.lora_alpha is None or self.model.lora_alpha > 0,
                f"model.lora_alpha must be > 0 or null (alpha = rank), got {self.model.lora_alpha}",
            ),
            (
                self.model.lora_targets is None or self.model.lora_rank is not None,
                "model.lora_targets needs model.lora_rank (full fine-tuning has no adapters)",
            ),
            (
                self.model.lora_init is None or self.model.lora_rank is not None,
                "model.lora_init needs model.lora_rank (full fine-tuning has no adapters)",
            ),
            (
                self.model.decode_batch_size is None or self.model.decode_batch_size >= 1,
                "model.decode_batch_size must be >= 1 or null",
            ),
            (self.model.prompt_cache >= 0, f"model.prompt_cache must be >= 0, got {self.model.prompt_cache}"),
            (
                self.model.lora_targets is None or len(self.model.lora_targets) > 0,
                "model.lora_targets must name at least one module, or be null for the baseline's targets",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from vgpo.models import model_options  # the registry; imports the named model's module
        from vgpo.models.lora import LORA_INITS

        if self.model.lora_init is not None and self.model.lora_init not in LORA_INITS:
            raise ConfigError(f"model.lora_init must be one of {sorted(LORA_INITS)}, got {self.model.lora_init!r}")

        model_options(self.model)  # unknown kind, unknown or mistyped options: a named error now, not at build
        if a.train_steps(s.num_steps) < 1:
            raise ConfigError(
                f"algorithm.train_step_fraction={a.train_step_fraction} trains no step of {s.num_steps}; raise it"
            )
        return self

    def _numbers(self) -> list[tuple[str, float]]:
        """(dotted name, value) of every float setting, tuples' members included (``optim.adam_betas[1]``)."""
        found: list[tuple[str, float]] = []
        for section in dataclasses.fields(self):
            for item in dataclasses.fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), item.name)
                values = value if isinstance(value, tuple) else (value,)
                for index, member in enumerate(values):
                    if isinstance(member, float):
                        suffix = f"[{index}]" if isinstance(value, tuple) else ""
                        found.append((f"{section.name}.{item.name}{suffix}", member))
        return found

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML / command-line value to the field's type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{where}: {value!r} fits none of the allowed types ({'; '.join(errors)})")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(key): _coerce(item, args[1], f"{where}.{key}") for key, item in value.items()}
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(item, args[0], f"{where}[{index}]") for index, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(item, kind, where) for item, kind in zip(value, args, strict=True))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            # PyYAML follows YAML 1.1, where "1e-4" (no dot) is a string, not a number; users mean the number.
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")


def _from_mapping(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + key for key in unknown)}; "
            f"known keys{' in ' + where if where else ''}: {', '.join(fields)}"
        )
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(annotation):
            values[name] = _from_mapping(annotation, value, key)  # type: ignore[arg-type]
        else:
            values[name] = _coerce(value, annotation, key)
    return cls(**values)


def dataclass_from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """A config dataclass ``cls`` from nested plain data, typed and checked like `vgpo train`'s (unknown keys are
    errors naming the known ones); for other commands' configs such as `vgpo pretrain`'s."""
    return _from_mapping(cls, data, where)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["algorithm.gamma=0.8", "run.iterations=5"]`` -> nested dict; values parsed as YAML scalars."""
    data: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. algorithm.gamma=0.8)")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return data


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def method_alias(data: dict[str, Any], where: str = "the config") -> dict[str, Any]:
    """``algorithm.variant`` (the name before methods came apart) read as ``algorithm.method``; naming both with
    different values in one place is an error. Applied to each source before merging, so a later override of
    either name wins over a preset's."""
    algorithm = data.get("algorithm")
    if not isinstance(algorithm, dict) or "variant" not in algorithm:
        return data
    algorithm = dict(algorithm)
    variant = algorithm.pop("variant")
    if "method" in algorithm and algorithm["method"] != variant:
        raise ConfigError(
            f"{where} sets algorithm.method={algorithm['method']!r} and algorithm.variant={variant!r}; variant is "
            "method's older name: keep one"
        )
    algorithm["method"] = variant
    return {**data, "algorithm": algorithm}


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from nested plain data (unknown keys are errors)."""
    config: TrainConfig = _from_mapping(TrainConfig, method_alias(data), "")
    return config.validate()


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's sections; a top-level ``base: OTHER.yaml`` (relative to the preset's folder) is read first
    and the preset's own sections are merged over it, so a variant states only what it changes."""
    where = f" (the base of {str(seen[-1])!r})" if seen else ""
    require_file(
        path, f"config file {str(path)!r}{where} not found; pass a YAML preset such as configs/embedded/*.yaml"
    )
    if path.resolve() in seen:
        raise ConfigError(f"config file {str(path)!r} is its own base (through {' -> '.join(map(str, seen))})")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    loaded = method_alias(loaded, f"config file {str(path)!r}")
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"config file {str(path)!r}: base must be a file name, got {base!r}")
    return merge_dicts(_read_preset(path.parent / base, (*seen, path.resolve())), loaded)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML preset (None: defaults; ``base:`` presets resolved), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        from vgpo.presets import resolve_config  # a file, else a shipped preset name

        data = _read_preset(resolve_config(path))
    if overrides:
        data = merge_dicts(data, method_alias(parse_overrides(overrides), "the overrides"))
    return config_from_dict(data)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (tuples as lists)."""
    Path(path).write_text(yaml.safe_dump(json_ready(config.to_dict()), sort_keys=False))


def json_ready(value: Any) -> Any:
    """Tuples to lists, recursively (for YAML / JSON)."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value
