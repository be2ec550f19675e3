"""Random-weight SD3 pipelines built locally, never downloaded: a tiny one for tests and an SD3.5-Medium-shaped
one for benchmarks (tests/fixtures_sd3.py and bench/sd3_gpu.py both build theirs here; a test and benchmark tool, it
lives beside the tests, not in the installed package).

The tiny one mirrors the dummy components of diffusers' own SD3 pipeline tests, with the two pieces they
download replaced by local builds: the CLIP tokenizers are byte-level BPE with no merges (every byte is a
token), and the T5 tokenizer is a hand-written Unigram vocabulary (transformers 5 builds both from Python
objects through the `tokenizers` library, so no sentencepiece model file is needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_RESOLUTION = 16
"""Image side in pixels; the tiny VAE does not downsample, so latents are 4 x 16 x 16 (64 tokens at patch 2)."""

TOKEN_LENGTH = 16
"""CLIP and T5 sequence length of the tiny text encoders (SD3.5 uses 77 and up to 256)."""


def byte_level_clip_tokenizer() -> Any:
    """A CLIP tokenizer whose tokens are single bytes (byte-level BPE, no merges), ``TOKEN_LENGTH`` long."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKEN_LENGTH)


def unigram_t5_tokenizer() -> Any:
    """A T5 tokenizer on a hand-written Unigram vocabulary of 48 pieces, ``TOKEN_LENGTH`` long."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += [("▁" + word, -1.0) for word in ("a", "photo", "of", "red", "blue", "cube", "cat", "the")]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=TOKEN_LENGTH)


def build_tiny_sd3_pipeline(folder: Path | None = None, shift: float = 3.0) -> Any:
    """Build a tiny SD3 pipeline with random weights (float32, on the CPU), save it to ``folder`` unless that is
    None, and return the pipeline.

    Sizes: CLIP hidden 16 each (concatenated 32 = joint_attention_dim = T5 d_model), CLIP projection 32 each
    (concatenated 64 = pooled_projection_dim); transformer 2 layers, 2 heads of 8.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_RESOLUTION,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        out_channels=4,
    )
    clip_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=600,
        max_position_embeddings=TOKEN_LENGTH,
        projection_dim=32,
        hidden_act="gelu",
    )
    text_encoder = CLIPTextModelWithProjection(clip_config)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config)
    t5_config = T5Config(
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
    text_encoder_3 = T5EncoderModel(t5_config)
    vae = AutoencoderKL(
        sample_size=TINY_RESOLUTION,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipeline: Any = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        text_encoder_3=text_encoder_3,
        tokenizer=byte_level_clip_tokenizer(),
        tokenizer_2=byte_level_clip_tokenizer(),
        tokenizer_3=unigram_t5_tokenizer(),
        transformer=transformer,
        vae=vae,
    )
    if folder is not None:
        pipeline.save_pretrained(folder)
    return pipeline


SD35_MEDIUM_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
"""The published SD3.5-Medium transformer config (2.24 B parameters)."""

SD35_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
"""The published SD3.5 VAE config (8x downsampling, 16 latent channels)."""


def build_sd3_medium_shaped_pipeline(
    device: str | torch.device, dtype: torch.dtype, num_layers: int = 24, text_layers: int = 1
) -> Any:
    """A random-weight pipeline with SD3.5-Medium's transformer and VAE and token counts, for benchmarks.

    The text encoders keep the real widths and sequence lengths (CLIP-L 768 + CLIP-G 1280 = 2048 pooled,
    T5 4096 wide, 77 + 256 tokens) but only ``text_layers`` layers: they run once per prompt batch, so they
    barely affect time; their memory is not representative (the real T5-XXL alone is ~9.5 GB in bf16).
    Built on ``device`` directly, never saved.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def clip(hidden: int) -> Any:
        config = CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_attention_heads=hidden // 64,
            num_hidden_layers=text_layers + 1,  # SD3 reads the penultimate hidden state
            vocab_size=600,
            max_position_embeddings=77,
            projection_dim=hidden,
            hidden_act="gelu",
        )
        return CLIPTextModelWithProjection(config)

    def clip_tokenizer() -> Any:
        tokenizer = byte_level_clip_tokenizer()
        tokenizer.model_max_length = 77
        return tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        transformer = SD3Transformer2DModel(**{**SD35_MEDIUM_TRANSFORMER, "num_layers": num_layers})
        vae = AutoencoderKL(**SD35_VAE)
        t5_config = T5Config(
            vocab_size=64, d_model=4096, d_kv=64, d_ff=10240, num_layers=text_layers, num_heads=64, pad_token_id=0
        )
        text_encoders = (clip(768), clip(1280), T5EncoderModel(t5_config))
    t5_tokenizer = unigram_t5_tokenizer()
    t5_tokenizer.model_max_length = 256
    pipeline: Any = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=text_encoders[0],
        text_encoder_2=text_encoders[1],
        text_encoder_3=text_encoders[2],
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        tokenizer_3=t5_tokenizer,
        transformer=transformer,
        vae=vae,
    )
    return pipeline.to(device, dtype)
