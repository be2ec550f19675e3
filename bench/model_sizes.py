"""Parameter counts of the published model configs, built on the meta device (no weights, no download), and the
memory estimates docs/models.md quotes: parameters x bytes. Estimates only, until measured on a GPU.

    python bench/model_sizes.py

The configs below are the ``config.json`` files of the released diffusers / transformers folders (as published on
the Hugging Face hub for each model id named); the counts are exact for those configs.
"""

from __future__ import annotations

import json

import torch

GIB = 2**30

TRANSFORMERS = {
    "FLUX.1-dev (black-forest-labs/FLUX.1-dev)": (
        "FluxTransformer2DModel",
        {
            "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
        },
    ),
    "Qwen-Image (Qwen/Qwen-Image)": (
        "QwenImageTransformer2DModel",
        {
            "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False,
            "axes_dims_rope": (16, 56, 56),
        },
    ),
    "SD3.5-Large (stabilityai/stable-diffusion-3.5-large)": (
        "SD3Transformer2DModel",
        {
            "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38, "attention_head_dim": 64,
            "num_attention_heads": 38, "joint_attention_dim": 4096, "caption_projection_dim": 2432,
            "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
        },
    ),
    "Wan2.1-T2V-1.3B (Wan-AI/Wan2.1-T2V-1.3B-Diffusers)": (
        "WanTransformer3DModel",
        {
            "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
        },
    ),
    "Wan2.1-T2V-14B (Wan-AI/Wan2.1-T2V-14B-Diffusers)": (
        "WanTransformer3DModel",
        {
            "patch_size": (1, 2, 2), "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 16,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
        },
    ),
}  # fmt: skip


def text_encoders() -> dict[str, torch.nn.Module]:
    """The frozen text encoders, on the meta device."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        T5Config,
        T5EncoderModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    t5_xxl = {
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "feed_forward_proj": "gated-gelu",
    }
    return {
        "CLIP-L": CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                               num_attention_heads=12, vocab_size=49408, max_position_embeddings=77)),
        "CLIP-G": CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                             num_hidden_layers=32, num_attention_heads=20,
                                                             vocab_size=49408, max_position_embeddings=77,
                                                             projection_dim=1280)),
        "T5-XXL encoder": T5EncoderModel(T5Config(vocab_size=32128, **t5_xxl)),
        "UMT5-XXL encoder": UMT5EncoderModel(UMT5Config(vocab_size=256384, **t5_xxl)),
        "Qwen2.5-VL-7B": Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config={"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064},
            vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                           "out_hidden_size": 3584},
            vocab_size=152064,
        )),
    }  # fmt: skip


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def main() -> None:
    import diffusers

    rows = {}
    with torch.device("meta"):
        for name, (cls, config) in TRANSFORMERS.items():
            rows[name] = count(getattr(diffusers, cls)(**config))
        for name, module in text_encoders().items():
            rows[name] = count(module)
    for name, parameters in rows.items():
        print(json.dumps({"model": name, "parameters_billion": round(parameters / 1e9, 3),
                          "bf16_weights_gib": round(parameters * 2 / GIB, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
