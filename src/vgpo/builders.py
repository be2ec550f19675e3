"""Builders: the only place that reads a :class:`~vgpo.config.TrainConfig` and turns it into components."""

from __future__ import annotations

from pathlib import Path

from vgpo.config import ModelConfig, TaskConfig, TrainConfig
from vgpo.errors import ConfigError, require_file
from vgpo.evaluation import Evaluation, evaluation_seed
from vgpo.models import build_model
from vgpo.policy import FlowPolicy
from vgpo.rewards import RewardFn, build_reward
from vgpo.tasks import Evaluator, Task, build_evaluator, get_task
from vgpo.tasks.evaluators import evaluator_parameters
from vgpo.tasks.prompts import PromptItem, load_prompts


def build_policy(config: ModelConfig) -> FlowPolicy:
    """The flow model registered as ``config.kind`` (`vgpo.models`), with LoRA or full fine-tuning."""
    return build_model(config)


def build_task(config: TaskConfig) -> Task:
    """The task named by ``config.name`` (prompt source, reward name, evaluator name)."""
    return get_task(config.name)


def build_task_reward(config: TaskConfig, task: Task) -> RewardFn:
    """The configured reward (``config.reward``, else the task's own) with its ``reward_options``."""
    return build_reward(config.reward if config.reward is not None else task.reward_name, options=config.reward_options)


def build_task_evaluator(config: TaskConfig, task: Task) -> Evaluator:
    """The task's evaluator; it shares the model options of the reward of the same name (e.g. model folders)."""
    return build_evaluator(task.evaluator_name, (config.reward_options or {}).get(task.evaluator_name))


def reward_is_task_score(config: TaskConfig, task: Task) -> bool:
    """Whether the configured reward is exactly the task's own score, so that evaluation can reuse the evaluator's
    "score" instead of running the same reward model again: the task's reward, with no options but those the
    evaluator shares (model folders, device), none that change the score (e.g. compositional's ``strict``)."""
    if config.reward not in (None, task.reward_name):
        return False
    options = {name: value for name, value in (config.reward_options or {}).items() if value}
    if set(options) - {task.reward_name}:
        return False
    shared = evaluator_parameters(task.evaluator_name) if task.evaluator_name == task.reward_name else set()
    return set(options.get(task.reward_name, {})) <= shared


def task_prompts(config: TaskConfig, task: Task, split: str) -> list[PromptItem]:
    """The prompts of a split: the configured file if any, else the task's own set; checked by the task."""
    path = config.train_prompts if split == "train" else config.test_prompts
    if path is None:
        items = task.prompts(split)
        source = f"the {split} set of task {task.name!r}"
    else:
        file = Path(path)
        require_file(file, f"task.{split}_prompts file {path!r} not found; point it at a JSONL or TXT prompt file")
        items = load_prompts(file, task.prompt_format)
        source = str(file)
    if not items:
        raise ConfigError(f"the {split} prompt set of task {config.name!r} is empty")
    task.check_prompts(items, source)
    return items


def build_evaluation(
    config: TrainConfig, task: Task, reward: RewardFn | None = None, *, custom_reward: bool = False
) -> Evaluation:
    """The evaluation of a config, the same in the trainer and in `vgpo eval`: the test prompts (at most
    ``sampling.eval_max_prompts``), the task's evaluator, ODE sampling at the eval settings, seed
    ``run.seed + EVAL_SEED_OFFSET``. The reward is scored unless it is the task's own score, which the evaluator
    already reports (a ``custom_reward`` a caller passed in is always scored); ``reward`` None builds it when
    needed."""
    if custom_reward:
        eval_reward = reward
    elif reward_is_task_score(config.task, task):
        eval_reward = None
    else:
        eval_reward = reward if reward is not None else build_task_reward(config.task, task)
    items = task_prompts(config.task, task, "test")
    s = config.sampling
    if s.eval_max_prompts is not None:
        items = items[: s.eval_max_prompts]
    return Evaluation(
        evaluator=build_task_evaluator(config.task, task),
        reward=eval_reward,
        items=items,
        samples_per_prompt=s.eval_samples_per_prompt,
        num_steps=s.eval_num_steps,
        guidance_scale=s.guidance_scale,
        seed=evaluation_seed(config.run.seed),
    )
