"""A tiny random-weight Wan2.1-T2V-shaped pipeline, built from configs and never downloaded (the sizes of
diffusers' own Wan pipeline tests, with a local UMT5 and the SD3 fixtures' local T5 tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sd3_random import unigram_t5_tokenizer

WAN_RESOLUTION = 16
"""Video side in pixels: latents 16 x 2 x 2 per latent frame (the VAE compresses 8x in space)."""
WAN_FRAMES = 5
"""Video frames: (5 - 1) / 4 + 1 = 2 latent frames (4x in time)."""
WAN_TOKENS = 16
"""UMT5 sequence length."""


def build_tiny_wan_pipeline(folder: Path | None = None) -> Any:
    """A WanPipeline with 2 transformer blocks (2 heads of 12), a 1-layer UMT5 of width 32, a 3-channel-base video VAE
    and an Euler scheduler at shift 3.0; saved to ``folder`` if given."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    text_encoder = UMT5EncoderModel(
        UMT5Config(
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
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    pipeline: Any = WanPipeline(
        tokenizer=unigram_t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    if folder is not None:
        pipeline.save_pretrained(folder)
    return pipeline
