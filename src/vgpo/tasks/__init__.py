"""The embedded world's tasks: prompt sets, ground-truth renderers and evaluators (see `vgpo.tasks.base`)."""

from __future__ import annotations

from collections.abc import Callable

from vgpo.errors import ConfigError
from vgpo.tasks.base import PromptItem, Task
from vgpo.tasks.compositional import CompositionalTask
from vgpo.tasks.text import TextTask

_TASKS: dict[str, Callable[[], Task]] = {"compositional": CompositionalTask, "text": TextTask}
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name`` (one of :data:`TASK_NAMES`)."""
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}. Fix the task name")
    return _TASKS[name]()


__all__ = ["TASK_NAMES", "PromptItem", "Task", "get_task"]
