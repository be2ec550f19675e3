"""Deprecated: the names of vgpo 0.1's ``vgpo.tasks.base``, now in ``vgpo.tasks`` and ``vgpo.tasks.prompts``.

A task is now a :class:`vgpo.tasks.Task` (a prompt source, a reward name and an evaluator name; docs/extending.md);
this module re-exports the names that remain and goes in vgpo 0.3."""

from vgpo._moved import warn_moved

warn_moved("vgpo.tasks.base", "vgpo.tasks (Task, PromptItem) and vgpo.tasks.prompts (prompt_file, load_prompts)")

from vgpo.tasks import PromptSource, Task  # noqa: E402
from vgpo.tasks.prompts import SPLITS, PromptItem, load_prompts, prompt_file  # noqa: E402

__all__ = ["SPLITS", "PromptItem", "PromptSource", "Task", "load_prompts", "prompt_file"]
