"""A tiny random-weight FLUX.1-dev-shaped pipeline (guidance embedding, dynamic shift), built from configs and
never downloaded; the tokenizers are the SD3 fixtures' local ones (`tests/sd3_random.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sd3_random import byte_level_clip_tokenizer, unigram_t5_tokenizer

FLUX_RESOLUTION = 16
"""Image side in pixels; the tiny VAE does not downsample: latents 4 x 16 x 16, packed to 64 tokens of 16."""

FLUX_TOKENS = 16
"""CLIP and T5 sequence length of the tiny text encoders."""


def build_tiny_flux_pipeline(folder: Path | None = None) -> Any:
    """A FluxPipeline with 1 double- and 1 single-stream block (2 heads of 16), CLIP and T5 of width 32, a one-level
    VAE with 4 latent channels, and FLUX.1-dev's scheduler config (dynamic shift); saved to ``folder`` if given."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    clip = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=600,
            max_position_embeddings=FLUX_TOKENS,
            projection_dim=32,
            hidden_act="gelu",
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=64,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    vae = AutoencoderKL(
        sample_size=FLUX_RESOLUTION,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipeline: Any = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=byte_level_clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=unigram_t5_tokenizer(),
        transformer=transformer,
    )
    if folder is not None:
        pipeline.save_pretrained(folder)
    return pipeline
