"""Prompt sources: train/test prompt sets with metadata, read from the formats users already have.

Three file formats, one :class:`PromptItem` per non-empty line:

- ``jsonl``: ``{"prompt": "...", "metadata": {"category": "...", ...}}`` (the shipped embedded sets);
- ``geneval``: GenEval's ``evaluation_metadata.jsonl`` lines, ``{"tag": "counting", "include": [{"class": "cat",
  "count": 3, "color": "red", "position": ["left of", 0]}], "exclude": [...], "prompt": "..."}``; the record
  (less the prompt) becomes the metadata, with ``category`` = ``tag``;
- ``text`` (``.txt``): one prompt a line, metadata ``{"category": "all"}`` (Pick-a-Pic, the OCR sets).

A bad line is an error that names the file and line number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vgpo.errors import ConfigError, require_file

SPLITS = ("train", "test")
PROMPT_FORMATS = ("auto", "jsonl", "geneval", "text")
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class PromptItem:
    """One prompt and its structured spec; ``metadata`` is JSON-serialisable and has a ``"category"``."""

    prompt: str
    metadata: dict[str, Any]

    def to_json(self) -> str:
        """One JSONL line of the ``jsonl`` format (keys sorted, so regenerated files diff cleanly)."""
        return json.dumps({"prompt": self.prompt, "metadata": self.metadata}, sort_keys=True)


def prompt_file(task_name: str, split: str) -> Path:
    """Path of the shipped JSONL prompt set ``vgpo/data/prompts/<task>_<split>.jsonl``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown prompt split {split!r}; use one of {', '.join(SPLITS)}")
    return Path(str(resources.files("vgpo") / "data" / "prompts" / f"{task_name}_{split}.jsonl"))


def geneval_item(record: Any) -> PromptItem:
    """A GenEval metadata record -> PromptItem (raises ValueError saying what is wrong with the record)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in ("tag", "include", "prompt") if key not in record]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    tag = record["tag"]
    if tag not in GENEVAL_TAGS:
        raise ValueError(f"unknown tag {tag!r}; GenEval's tags: {', '.join(GENEVAL_TAGS)}")
    groups = {"include": record["include"], "exclude": record.get("exclude", [])}
    for group, objects in groups.items():
        if not isinstance(objects, list) or (group == "include" and not objects):
            raise ValueError(f"{group!r} must be a list of objects{' (at least one)' if group == 'include' else ''}")
        for index, spec in enumerate(objects):
            where = f"{group}[{index}]"
            if not isinstance(spec, dict) or not isinstance(spec.get("class"), str):
                raise ValueError(f"{where} needs a 'class' name (a COCO class, e.g. 'dog')")
            count = spec.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool) or count < (0 if group == "exclude" else 1):
                raise ValueError(f"{where}.count must be a positive integer, got {count!r}")
            if "color" in spec and not isinstance(spec["color"], str):
                raise ValueError(f"{where}.color must be a colour name, got {spec['color']!r}")
            position = spec.get("position")
            if position is not None:
                valid = isinstance(position, list) and len(position) == 2 and position[0] in GENEVAL_RELATIONS
                if not valid or not isinstance(position[1], int) or not 0 <= position[1] < len(objects):
                    raise ValueError(
                        f"{where}.position must be [relation, index of another include entry] with a relation "
                        f"among {', '.join(GENEVAL_RELATIONS)}, got {position!r}"
                    )
    metadata = {"category": tag, "tag": tag, "include": groups["include"], "exclude": groups["exclude"]}
    return PromptItem(prompt=str(record["prompt"]), metadata=metadata)


def _jsonl_item(record: Any) -> PromptItem:
    if not isinstance(record, dict) or "prompt" not in record or not isinstance(record.get("metadata"), dict):
        raise ValueError('expected {"prompt": "...", "metadata": {"category": "...", ...}}')
    return PromptItem(prompt=str(record["prompt"]), metadata=dict(record["metadata"]))


def _record_format(record: Any) -> str:
    """The format of one JSON record, for ``auto``: GenEval records have ``tag`` and ``include``."""
    return "geneval" if isinstance(record, dict) and "include" in record and "metadata" not in record else "jsonl"


def load_prompts(path: Path | str, prompt_format: str = "auto") -> list[PromptItem]:
    """Read a prompt file in ``prompt_format`` (see the module docstring); ``auto``: ``.txt`` files are plain
    text, other files JSONL whose records say which (GenEval's have ``include``)."""
    path = Path(path)
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"unknown prompt format {prompt_format!r}; use one of {', '.join(PROMPT_FORMATS)}")
    require_file(
        path,
        f"prompt file {path} is missing; point it at a JSONL or TXT prompt file (the shipped sets are "
        "regenerated with `python scripts/make_prompts.py`, GenEval-style sets with `vgpo prompts geneval`)",
    )
    text_format = prompt_format == "text" or (prompt_format == "auto" and path.suffix == ".txt")
    items = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if text_format:
                items.append(PromptItem(prompt=line.strip(), metadata={"category": "all"}))
                continue
            try:
                record = json.loads(line)
                kind = _record_format(record) if prompt_format == "auto" else prompt_format
                items.append(geneval_item(record) if kind == "geneval" else _jsonl_item(record))
            except (json.JSONDecodeError, ValueError, TypeError) as error:
                expected = (
                    'a GenEval record {"tag": ..., "include": [{"class": ..., "count": ...}], "prompt": ...}'
                    if prompt_format == "geneval" or (prompt_format == "auto" and "include" in line)
                    else '{"prompt": "...", "metadata": {"category": "...", ...}}'
                )
                raise ConfigError(
                    f"{path}:{line_number} is not a prompt record ({error}); each line must be {expected}"
                ) from error
    return items


def save_prompts(path: Path, items: Sequence[PromptItem]) -> None:
    """Write items as JSONL (one record a line, keys sorted, so regenerated files diff cleanly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(item.to_json() + "\n")


def save_geneval_prompts(path: Path, items: Sequence[PromptItem]) -> None:
    """Write GenEval items in GenEval's own metadata format (``tag``, ``include``, ``exclude``, ``prompt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            meta = item.metadata
            record = {"tag": meta["tag"], "include": meta["include"], "exclude": meta["exclude"], "prompt": item.prompt}
            handle.write(json.dumps(record) + "\n")
