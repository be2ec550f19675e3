"""A tiny random-weight Qwen-Image pipeline, built from configs and never downloaded: the sizes of diffusers' own
Qwen-Image pipeline tests, with a local byte-level Qwen2 tokenizer (every byte a token, the chat markers as special
tokens) in place of the downloaded one, and Qwen-Image's scheduler config (dynamic exponential shift, terminal
stretch to 0.02)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

QWEN_RESOLUTION = 32
"""Image side in pixels: latents 4 x 8 x 8 (the VAE compresses 4x), packed to 16 tokens."""
QWEN_TOKENS = 256
"""Text tokens kept per prompt: the byte-level tokenizer spends ~200 on the chat template (Qwen's spends 34)."""
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def byte_level_qwen_tokenizer() -> Any:
    """A Qwen2 tokenizer whose tokens are single bytes (byte-level BPE, no merges) plus the chat markers."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {char: index for index, char in enumerate(sorted(ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[:2])})
    return tokenizer


def build_tiny_qwen_image_pipeline(folder: Path | None = None) -> Any:
    """A QwenImagePipeline with a 2-layer Qwen2.5-VL text encoder of width 16, a 2-block transformer (3 heads of 16)
    and a 3-level VAE with 4 latent channels; saved to ``folder`` if given."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = byte_level_qwen_tokenizer()
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    z_dim = 4
    vae = AutoencoderKLQwenImage(
        base_dim=z_dim * 6,
        z_dim=z_dim,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": len(tokenizer),
            "bos_token_id": end_of_text,
            "eos_token_id": end_of_text,
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16,
        vocab_size=len(tokenizer),
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        vision_end_token_id=len(tokenizer) - 1,
        vision_start_token_id=len(tokenizer) - 1,
        vision_token_id=len(tokenizer) - 1,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )
    pipeline: Any = QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    if folder is not None:
        pipeline.save_pretrained(folder)
    return pipeline
