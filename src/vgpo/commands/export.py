"""`vgpo export RUN_DIR_OR_CHECKPOINT OUT_FOLDER`: a trained LoRA in diffusers' format.

Rebuilds the model a checkpoint was trained with (its ``checkpoint.json`` "model" settings), loads the
checkpoint's weights (the EMA when the run kept one, as the baseline saves; ``--no-ema`` for the raw ones) and
writes ``OUT_FOLDER/pytorch_lora_weights.safetensors`` through the model adapter's diffusers format
(`vgpo.models.base.export_lora`), which its stock pipeline loads, e.g. for SD3
``StableDiffusion3Pipeline.from_pretrained(base).load_lora_weights(OUT_FOLDER)``. The tiny model has no stock
pipeline: its file is its transformer's LoRA in SD3's format, which diffusers' ``load_lora_adapter`` reads into
its ``SD3Transformer2DModel`` (docs/models.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vgpo.errors import CheckpointError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a trained LoRA in diffusers' format (for load_lora_weights)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("out", type=Path, help="folder to write pytorch_lora_weights.safetensors into")
    parser.add_argument(
        "--base", default=None, help="base model folder or hub id, when it moved since training (default: as trained)"
    )
    parser.add_argument("--device", default="cpu", help="device to load the base model on (default: cpu)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights, not their EMA")
    parser.set_defaults(func=run)


def find_checkpoint(source: Path) -> Path:
    """``source`` itself when it is a checkpoint, else the newest complete checkpoint of the run ``source``."""
    from vgpo import checkpoint

    if (source / checkpoint.META_FILE).is_file():
        return source
    if not source.is_dir():
        raise CheckpointError(f"{source} does not exist; pass a run folder or one of its checkpoint folders")
    found = checkpoint.list_checkpoints(source)
    if not found:
        raise CheckpointError(f"no checkpoint under {source / 'checkpoints'}; has the run saved one yet?")
    return found[-1]


def run(args: argparse.Namespace) -> int:

    from vgpo import checkpoint
    from vgpo.builders import build_policy
    from vgpo.config import ModelConfig
    from vgpo.models.base import AdapterPolicy, export_lora

    folder = find_checkpoint(args.source)
    meta = checkpoint.read_meta(folder)
    try:
        model = ModelConfig(**meta["model"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{folder / checkpoint.META_FILE} has no usable 'model' settings: {error}") from error
    if model.lora_rank is None:
        raise CheckpointError(
            f"{folder} holds a full fine-tune of a {model.kind} model; export writes LoRA only (a full fine-tune's "
            "weights are the checkpoint's model.safetensors)"
        )
    trained_path = model.path
    if args.base is not None:
        model.path = args.base
    model.device = args.device
    model.gradient_checkpointing = False
    policy = build_policy(model)
    assert isinstance(policy, AdapterPolicy)
    if args.base is not None and trained_path is not None and hasattr(policy.adapter, "base_model"):
        # the fingerprint names the trained base; its architecture hash and LoRA layout must still match
        policy.adapter.base_model = trained_path
    checkpoint.load_weights(policy, folder, use_ema=not args.no_ema)  # checks the fingerprint first
    out = export_lora(policy, args.out)
    print(f"wrote {out / 'pytorch_lora_weights.safetensors'} from {folder}")
    return 0
